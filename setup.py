"""Build of sparsekit and its extension sparsekit._C.

The CPU ops are always built. CUDA sources join when torch has CUDA and a CUDA toolkit is
found (SPARSEKIT_BUILD_CUDA=auto, the default), always (=1, failing if that is impossible) or
never (=0). TORCH_CUDA_ARCH_LIST picks the GPU architectures, as for every torch extension.
Sources are found by glob: a new file under csrc/ is built without editing this file, and
packages by find_packages: a new package under sparsekit/ is installed without editing it.
"""

import glob
import importlib.util
import os
import re

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

# Every package under sparsekit/, and the Triton kernels, installed as sparsekit.triton_kernels (a
# top-level ``triton_kernels`` import name is taken by other packages).
PACKAGES = find_packages(include=["sparsekit", "sparsekit.*"]) + ["sparsekit.triton_kernels"]
PACKAGE_DIR = {"sparsekit.triton_kernels": "triton_kernels"}


def version() -> str:
    """sparsekit.__version__, read from its source (importing it needs the extension built)."""
    with open(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "sparsekit", "__init__.py")
    ) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


def build_cuda() -> bool:
    flag = os.environ.get("SPARSEKIT_BUILD_CUDA", "auto")
    if flag not in ("auto", "0", "1"):
        raise SystemExit(f"SPARSEKIT_BUILD_CUDA must be auto, 0 or 1, not {flag!r}")
    possible = torch.version.cuda is not None and CUDA_HOME is not None
    if flag == "1" and not possible:
        raise SystemExit("SPARSEKIT_BUILD_CUDA=1 needs a CUDA build of torch and a CUDA toolkit")
    return possible and flag != "0"


def cutlass_include() -> str:
    """CuTe/CUTLASS headers, from the nvidia-cutlass wheel (its Python is never imported)."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None:
        raise SystemExit(
            "the CUDA kernels need CUTLASS's headers: pip install --no-deps nvidia-cutlass==4.2.0.0"
        )
    return os.path.join(spec.submodule_search_locations[0], "source", "include")


def extension():
    cpu_sources = sorted(
        glob.glob("csrc/*.cpp")
        + glob.glob("csrc/common/*.cpp")
        + glob.glob("csrc/cpu/**/*.cpp", recursive=True)
    )
    # -fopenmp: at::parallel_for is an OpenMP pragma in torch's headers; without the flag it
    # runs on one thread. The extension then shares torch's own libgomp.so.1.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if not build_cuda():
        return CppExtension(
            "sparsekit._C",
            cpu_sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    # The CUDA kernels (nvcc, on CuTe) and their torch glue and host layout code (the host
    # compiler): csrc/cuda/block_ops.cpp, csrc/cuda/kernels/tile_layout.cpp.
    cuda_sources = sorted(
        glob.glob("csrc/cuda/**/*.cu", recursive=True)
        + glob.glob("csrc/cuda/**/*.cpp", recursive=True)
    )
    # the CUDA sources first: with no build log to go by (a fresh machine) ninja starts ready jobs
    # in the order listed, and the CuTe kernels take the longest, so they must not start last
    return CUDAExtension(
        "sparsekit._C",
        cuda_sources + cpu_sources,
        include_dirs=[cutlass_include()],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
        extra_link_args=link_flags,
    )


if __name__ == "__main__":  # tests/test_packaging.py reads PACKAGES without building
    setup(
        name="sparsekit",
        version=version(),
        description="Compiled structured-sparse inference kernels for pruned PyTorch models",
        python_requires=">=3.10",
        packages=PACKAGES,
        package_dir=PACKAGE_DIR,
        install_requires=["torch>=2.4", "numpy", "pymetis", "safetensors", "tqdm"],
        extras_require={
            "triton": ["triton"],  # the Triton backend (GPU; on CPU only under TRITON_INTERPRET=1)
            "plots": ["matplotlib"],  # PlanReport.plot, the bench suites' figures
            "examples": ["scikit-learn"],
        },
        ext_modules=[extension()],
        cmdclass={"build_ext": BuildExtension},
    )
