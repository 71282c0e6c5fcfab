"""The typed usage file that CI checks with mypy --strict also runs (on the host)."""

import pathlib
import runpy


def test_typed_usage_runs():
    runpy.run_path(str(pathlib.Path(__file__).parent / "typed" / "usage.py"), run_name="__main__")
