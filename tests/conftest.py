"""GPU markers that skip cleanly: `gpu` needs one CUDA device, `two_gpus` needs two."""

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
