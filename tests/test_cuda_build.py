"""The CUDA ops as CMake builds and links them (``scripts/test.sh`` builds ``build/cmake`` before
pytest): loaded into this process's torch (a CPU one in CI), they register a CUDA kernel for
every op, which the dispatcher checks against the op's schema as it registers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[1] / "build" / "cmake" / "libsparsekit_cuda_ops.so"

# Which ops have a CUDA kernel, before and after loading the library, in a fresh process (the
# registrations would otherwise stay in the test session).
PROBE = """
import sys, torch
from sparsekit.backends import extension
def registered():
    return [op for op in extension.OPS
            if torch._C._dispatch_has_kernel_for_dispatch_key(f"sparsekit::{op}", "CUDA")]
before = registered()
torch.ops.load_library(sys.argv[1])
print(",".join(before), ",".join(registered()), sep="|")
"""


def test_cuda_ops_register_a_kernel_for_every_op():
    if not LIBRARY.exists():
        if os.environ.get("SPARSEKIT_REQUIRE_CUDA_CHECK") == "1":
            pytest.fail(f"{LIBRARY} was not built: scripts/test.sh builds it with CMake and nvcc")
        pytest.skip("the CUDA ops are not built (no nvcc, or CMake not run)")
    import torch

    from sparsekit.backends import extension

    if torch.version.cuda is not None:
        pytest.skip("a CUDA torch: the extension itself registers the CUDA kernels")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(LIBRARY)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    before, after = result.stdout.strip().split("|")
    assert before == ""  # a CPU torch: the kernels come from the library
    assert after.split(",") == list(extension.OPS)
