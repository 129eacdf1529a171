import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Every property test draws at least this many cases; SPARSEKIT_EXAMPLES raises it locally.
settings.register_profile(
    "sparsekit",
    max_examples=int(os.environ.get("SPARSEKIT_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("sparsekit")

# Without a GPU the Triton kernels run in Triton's interpreter (read when sparsekit imports them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist every worker is one process: one torch thread each keeps the cores from
# being oversubscribed (spinning OpenMP threads of two processes on two cores starve each other).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
