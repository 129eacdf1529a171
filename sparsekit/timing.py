"""The one timing helper: warm-up, repeats, median, without autograd, synchronised on GPU.

On CPU ``torch.utils.benchmark`` times on all of torch's threads; on CUDA
``triton.testing.do_bench`` (CUDA events) gives the median when triton is installed. compile(),
verify() and the bench suites time through it; ``paired_ms`` times several sides of one ratio in
alternation, so that a burst of load on the machine cannot skew one side; ``one_call_seconds`` is
the cheap first look that spares a hopeless candidate the full timing; ``in_faster_format``
runs a side in whichever of NCHW and channels_last is faster for its shapes (a ratio is read
against dense at its best); ``device_name`` names the machine a time was measured on.
"""

import platform
import time

import torch
from torch.utils.benchmark import Timer


def _device_of(args) -> str:
    return "cuda" if any(isinstance(a, torch.Tensor) and a.is_cuda for a in args) else "cpu"


def median_seconds(fn, *args, min_run_time: float = 0.05, device: str | None = None) -> float:
    """Median wall time of ``fn(*args)`` after a warm-up, under no_grad (inference_mode would
    refuse ops such as torch's sparse BSR matmul). ``device``: where it runs, ``"cpu"`` or
    ``"cuda"`` (default: CUDA when a tensor argument is on a GPU)."""
    with torch.no_grad():
        fn(*args)
        if (device or _device_of(args)) == "cuda":
            try:
                from triton.testing import do_bench
            except ImportError:  # torch's Timer synchronises CUDA itself
                pass
            else:
                rep_ms = max(1.0, 1e3 * min_run_time)
                return (
                    do_bench(lambda: fn(*args), warmup=25, rep=rep_ms, return_mode="median") / 1e3
                )
        timer = Timer(
            "fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads()
        )
        return timer.blocked_autorange(min_run_time=min_run_time).median


def one_call_seconds(fn, *args, device: str | None = None) -> float:
    """Wall time of one call of ``fn(*args)``, under no_grad: a cheap first look, to take after
    a first call (a backend may build its layout on the first call)."""
    cuda = (device or _device_of(args)) == "cuda"
    with torch.no_grad():
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(*args)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start


def paired_ms(sides: dict, min_run_time: float, rounds: int = 3, device: str = "cpu") -> dict:
    """Each side's median in ms (``sides``: name -> function of no argument), the best of
    ``rounds`` medians measured in alternation with the other sides."""
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(rounds):
        for key, fn in sides.items():
            best[key] = min(
                best[key], 1e3 * median_seconds(fn, min_run_time=min_run_time, device=device)
            )
    return best


MEMORY_FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def in_memory_format(fn, args, memory_format: torch.memory_format):
    """``(fn, args)`` with every 4-d tensor argument in ``memory_format``; a module ``fn`` is
    converted in place."""
    if isinstance(fn, torch.nn.Module):
        fn = fn.to(memory_format=memory_format)
    return fn, tuple(
        a.contiguous(memory_format=memory_format)
        if isinstance(a, torch.Tensor) and a.dim() == 4
        else a
        for a in args
    )


def in_faster_format(fn, *args, min_run_time: float = 0.05):
    """``(run, name, seconds)``: ``fn(*args)`` as a function of no argument in the faster of
    NCHW and channels_last for these shapes (``name``), picked by timing both, and its median."""
    times = {}
    for name, memory_format in MEMORY_FORMATS.items():  # one at a time: a module converts in place
        converted, converted_args = in_memory_format(fn, args, memory_format)
        times[name] = median_seconds(converted, *converted_args, min_run_time=min_run_time)
    faster = min(times, key=times.get)
    fn, args = in_memory_format(fn, args, MEMORY_FORMATS[faster])
    return (lambda: fn(*args)), faster, times[faster]


def device_name(device: torch.device | str = "cpu") -> str:
    """The GPU's name, or the CPU's model name (/proc/cpuinfo, else what platform knows)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
