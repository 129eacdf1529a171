"""The machine's fp32 peak, measured: independent FMA chains on the widest vectors the compiler
targets for this CPU (``-march=native``), on as many threads as torch uses. The benches quote
their kernels' rates as fractions of it."""

import ctypes
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

# Ten independent accumulators cover the FMA latency times the FMA ports of current x86 cores.
SOURCE = r"""
#ifdef __AVX512F__
typedef float vec __attribute__((vector_size(64)));
#else
typedef float vec __attribute__((vector_size(32)));
#endif
#define CHAINS 10
int lanes(void) { return sizeof(vec) / sizeof(float); }
float fma_chains(long iterations) {
  vec acc[CHAINS], a, b;
  for (int i = 0; i < lanes(); ++i) a[i] = 1.0f - 1e-7f * i, b[i] = 1e-7f * i;
  for (int c = 0; c < CHAINS; ++c) acc[c] = a * (float)c;
  for (long it = 0; it < iterations; ++it)
    for (int c = 0; c < CHAINS; ++c) acc[c] = acc[c] * a + b;
  float sum = 0;
  for (int c = 0; c < CHAINS; ++c)
    for (int i = 0; i < lanes(); ++i) sum += acc[c][i];
  return sum;  /* used, so the loop stays */
}
"""
CHAINS = 10


def _library() -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("measuring the peak needs a C compiler (cc or gcc)")
    with tempfile.TemporaryDirectory(prefix="sparsekit-peak-") as name:  # loaded, the file may go
        folder = Path(name)
        (folder / "peak.c").write_text(SOURCE)
        subprocess.run(
            [
                compiler,
                "-O3",
                "-march=native",
                "-shared",
                "-fPIC",
                "-o",
                str(folder / "peak.so"),
                str(folder / "peak.c"),
            ],
            check=True,
        )
        library = ctypes.CDLL(str(folder / "peak.so"))
    library.fma_chains.argtypes, library.fma_chains.restype = [ctypes.c_long], ctypes.c_float
    return library


def fp32_peak_macs(threads: int | None = None, seconds: float = 0.5) -> float:
    """Multiply-adds per second of ``threads`` (default: torch's) threads running FMA chains at
    once (ctypes releases the GIL), the best of three runs."""
    library = _library()
    threads = threads or torch.get_num_threads()
    iterations = 1000
    while True:  # calibrated on a tenth of `seconds`, then scaled to `seconds` per run
        start = time.perf_counter()
        library.fma_chains(iterations)
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 10:
            break
        iterations *= 4
    iterations = int(iterations * seconds / elapsed)
    best = 0.0
    for _ in range(3):
        workers = [
            threading.Thread(target=library.fma_chains, args=(iterations,)) for _ in range(threads)
        ]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(
            best, threads * iterations * CHAINS * library.lanes() / (time.perf_counter() - start)
        )
    return best


if __name__ == "__main__":
    print(f"fp32 peak: {fp32_peak_macs() / 1e9:.1f} GMAC/s on {torch.get_num_threads()} threads")
