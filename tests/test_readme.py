"""The README as a newcomer follows it: two commands for a fresh machine, the second being the
one CI runs, and a Python snippet that runs as written."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_two_fresh_machine_commands_and_ci_runs_the_second():
    head = README[:README.index("**Rebuilding.**")]
    commands = re.findall(r"^    (\S.*)$", head, re.M)
    assert commands == ["pip install . && nsa-metadata demo",
                        "pip install '.[test]' && python -m pytest -q"]
    assert commands[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_snippet_runs_as_written(tmp_path):
    # the snippet uses torch (CPU tensors run the reference); CI installs no torch, so this runs
    # where torch is (the device's test run), and skips in CI
    pytest.importorskip("torch")
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    script = tmp_path / "snippet.py"
    script.write_text(code)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
