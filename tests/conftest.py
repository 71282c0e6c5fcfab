"""GPU markers that skip cleanly (`gpu` needs one CUDA device, `two_gpus` needs two), and the
fixtures every test file shares: plan caches emptied around each test, the fake device, the
array library a GPU test runs with."""

import pytest


def _cuda_devices():
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        pass
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


def pytest_collection_modifyitems(config, items):
    n = _cuda_devices()
    for item in items:
        if "gpu" in item.keywords and n < 1:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "two_gpus" in item.keywords and n < 2:
            item.add_marker(pytest.mark.skip(reason="needs two CUDA GPUs"))


@pytest.fixture(autouse=True)
def fresh_plans():
    """The one-shot calls and nsa_metadata.sglang cache the plans of their buffers: no test may
    see another's (a freed buffer's address may come back in the next test)."""
    from nsa_metadata import _plans, sglang

    _plans.PLANS.clear()
    sglang._BOUND.clear()
    yield
    _plans.PLANS.clear()
    sglang._BOUND.clear()


@pytest.fixture
def rec(monkeypatch):
    """The fake CUDA device of tests/fakes.py, recording what reaches the extension."""
    import fakes

    return fakes.install(monkeypatch)


@pytest.fixture(params=["torch", "cupy"])
def lib(request):
    """The GPU tests' array library: torch, then CuPy (each skipped when not installed)."""
    from helpers import Lib

    pytest.importorskip(request.param)
    return Lib(request.param)
