"""nsa-metadata: sparse-attention (NSA/DSA) decode metadata in one CUDA launch. See SPEC.md."""

from . import reference
from ._api import Metadata, Prepared, Schedule, decode, draft_extend, prepare, target_verify

__all__ = ["Metadata", "Prepared", "Schedule", "decode", "target_verify", "draft_extend", "prepare", "reference"]
__version__ = "0.1.0"
