"""Every script in examples/ runs as a user would run it and prints OK on a GPU (each is skipped
without a GPU, or when its array library is missing or sees no GPU)."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
NEEDS = {"torch_eager.py": "torch", "torch_cuda_graph.py": "torch", "cupy_eager.py": "cupy"}


def sees_a_gpu(lib):
    try:
        if lib == "torch":
            import torch
            return torch.cuda.is_available()
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def test_every_example_is_run_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(NEEDS)


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_example_prints_ok(name):
    if not sees_a_gpu(NEEDS[name]):
        pytest.skip(f"{NEEDS[name]} is not installed or sees no CUDA GPU")
    r = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "OK"
