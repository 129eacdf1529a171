"""sparsekit: run pruned PyTorch models as structured-sparse packed layers, exactly.

Data flows one way through the package: ``masks`` (collect and check masks) -> ``planners``
(mask -> dense blocks, pack time) -> ``formats`` (the one packed format) -> ``backends`` (the
registry of ways to run the packed ops, their schemas and kernels) -> ``ops`` (checks and
dispatch) -> ``nn`` (SparseConv2d / SparseLinear) -> ``masked_model``, ``recording``,
``plan_choice`` (what ``compile`` builds from) -> ``verify`` -> ``api`` (``compile``).
``transforms`` holds the training-time mask transforms, ``spdy`` the latency-aware planner on
top of ``compile`` (``plan``: per-layer sparsity under a measured speedup target, SPDY's timing
tables, dynamic program and search); ``tolerance`` and ``timing`` the one
tolerance table and the one timing helper; ``saving``, ``zoo`` and ``cli`` sit on top.
"""

__version__ = "0.1.0"  # first: modules below key caches on it

from . import backends, ops, planners, spdy, tolerance, transforms, zoo
from .api import compile
from .errors import SparsekitError, SparsekitWarning
from .formats import PackedWeight, pack, unpack
from .nn import SparseConv2d, SparseLinear
from .saving import load, save
from .spdy import plan
from .verify import Report, verify

__all__ = [
    "PackedWeight", "Report", "SparseConv2d", "SparseLinear", "SparsekitError", "SparsekitWarning",
    "backends", "compile", "load", "ops", "pack", "plan", "planners", "save", "spdy", "tolerance", "transforms",
    "unpack", "verify", "zoo",
]
