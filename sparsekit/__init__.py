"""sparsekit: run pruned PyTorch models as structured-sparse packed layers, exactly."""

from . import ops, planners, transforms, zoo
from .api import compile
from .errors import SparsekitError
from .formats import PackedWeight, pack, unpack
from .nn import SparseConv2d, SparseLinear
from .saving import load, save
from .verify import Report, verify

__all__ = [
    "PackedWeight", "Report", "SparseConv2d", "SparseLinear", "SparsekitError", "compile", "load",
    "ops", "pack", "planners", "save", "transforms", "unpack", "verify", "zoo",
]
__version__ = "0.1.0"
