"""nsa-metadata: sparse-attention (NSA/DSA) decode metadata in one CUDA launch. See SPEC.md."""

from . import reference
from ._api import Metadata, decode, draft_extend, target_verify

__all__ = ["Metadata", "decode", "target_verify", "draft_extend", "reference"]
__version__ = "0.1.0"
