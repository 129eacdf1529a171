"""sparsekit: run pruned PyTorch models as structured-sparse packed layers, exactly."""

from . import ops, structure
from .errors import SparsekitError
from .formats import PackedWeight, pack, unpack

__all__ = ["PackedWeight", "SparsekitError", "ops", "pack", "structure", "unpack"]
__version__ = "0.1.0"
