"""sparsekit: run pruned PyTorch models as structured-sparse packed layers, exactly.

Data flows one way through the package: ``masks`` (collect and check masks) -> ``planners``
(mask -> dense blocks, pack time) -> ``formats`` (the one packed format) -> ``backends`` (the
registry of ways to run the packed ops: layouts, schemas, kernels, cost models) -> ``ops``
(the functional entry: checks and dispatch) -> ``nn`` (SparseConv2d / SparseLinear, holding
their layouts; ``attention``: nn.MultiheadAttention with sparse projections) -> ``compiler``
(``compile``: its stages in order, from the reference to verification). ``transforms`` holds
the training-time mask transforms, ``graph`` what the fx graph tells (which BatchNorm follows
which conv), ``spdy`` the latency-aware planner on top of ``compile`` (``plan``: per-layer
sparsity under a measured speedup target, SPDY's timing tables, dynamic program and search);
``tolerance`` and ``timing`` the one tolerance table and the one timing helper; ``saving``,
``zoo`` and ``cli`` sit on top.
"""

__version__ = "0.1.0"  # first: modules below key caches on it

from . import backends, compiler, ops, planners, spdy, tolerance, transforms, zoo
from .attention import SparseMultiheadAttention
from .compiler import Report, compile, verify
from .errors import SparsekitError, SparsekitWarning
from .formats import PackedWeight, pack, unpack
from .nn import SparseConv2d, SparseLinear
from .saving import load, save
from .spdy import plan

__all__ = [
    "PackedWeight",
    "Report",
    "SparseConv2d",
    "SparseLinear",
    "SparseMultiheadAttention",
    "SparsekitError",
    "SparsekitWarning",
    "backends",
    "compile",
    "compiler",
    "load",
    "ops",
    "pack",
    "plan",
    "planners",
    "save",
    "spdy",
    "tolerance",
    "transforms",
    "unpack",
    "verify",
    "zoo",
]
