"""The one timing helper: warm-up, repeats, median, without autograd, synchronised on GPU.

On CPU ``torch.utils.benchmark`` times on all of torch's threads; on CUDA
``triton.testing.do_bench`` (CUDA events) gives the median when triton is installed. compile(),
verify() and the bench suites time through it; ``paired_ms`` times several sides of one ratio in
alternation, so that a burst of load on the machine cannot skew one side; ``one_call_seconds`` is
the cheap first look that spares a hopeless candidate the full timing; ``compare`` decides
whether one side is faster than another with confidence, in paired rounds; ``in_faster_format``
runs a side in whichever of NCHW and channels_last is faster for its shapes (a ratio is read
against dense at its best); ``captured`` records calls into a CUDA graph, to time or check
replays; ``device_name`` names the machine a time was measured on.
"""

import math
import platform
import time
from dataclasses import dataclass

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


# of the interval around a comparison's median ratio, at each look: a comparison looks after every
# round from its 8th and stops at the first settled verdict, and each look is a chance to err, so
# each is held to 99% for the verdict to hold at 95% over up to 25 looks (simulated, equal sides
# with 10% noise: 1.4% called faster, against 6% at 95% a look)
CONFIDENCE = 0.99
MIN_ROUNDS = 8  # the fewest whose extremes bound the median at CONFIDENCE (2 / 2**8 < 1%)
BLOCK_SECONDS = 2e-3  # a round times each side for at least this long


@dataclass(frozen=True)
class Comparison:
    """``candidate`` time / ``baseline`` time over paired rounds: the median of the rounds'
    ratios and a distribution-free ``CONFIDENCE`` interval of it (by the sign test: order
    statistics of the ratios, so a burst of load that skews a few rounds cannot move it)."""

    ratio: float
    low: float
    high: float
    rounds: int
    candidate_seconds: float  # median per call
    baseline_seconds: float

    def faster(self, margin: float = 1.0) -> bool:
        """Whether the candidate is faster with confidence (the whole interval below 1) and its
        median ratio below ``margin``."""
        return self.high < 1.0 and self.ratio < margin

    def resolved(self, margin: float = 1.0) -> bool:
        """Whether more rounds cannot change the verdict of ``faster(margin)``."""
        return self.faster(margin) or self.low >= margin


def compare(
    candidate,
    baseline,
    *args,
    margin: float = 1.0,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = 31,
    device: str | None = None,
) -> Comparison:
    """``candidate(*args)`` against ``baseline(*args)`` in rounds, each timing one side then the
    other for ``BLOCK_SECONDS`` or more (which side goes first alternates, so that a drift of
    the machine's speed favours neither), until the verdict of ``faster(margin)`` is resolved
    or ``max_rounds`` have run (an unresolved comparison is not faster)."""
    if min_rounds < MIN_ROUNDS:
        raise ValueError(f"compare: min_rounds must be >= {MIN_ROUNDS}, not {min_rounds}")
    cuda = (device or _device_of(args)) == "cuda"
    with torch.no_grad():
        candidate(*args), baseline(*args)  # warm-up
        calls = max(1, math.ceil(BLOCK_SECONDS / max(1e-7, _block(baseline, args, 1, cuda))))
        pairs = []
        while True:
            sides = (candidate, baseline) if len(pairs) % 2 == 0 else (baseline, candidate)
            first, second = (_block(fn, args, calls, cuda) for fn in sides)
            pairs.append((first, second) if len(pairs) % 2 == 0 else (second, first))
            if len(pairs) >= min_rounds:
                result = _comparison(pairs)
                if result.resolved(margin) or len(pairs) >= max_rounds:
                    return result


def _block(fn, args, calls: int, cuda: bool) -> float:
    """Seconds per call of ``fn(*args)`` over ``calls`` calls."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def _comparison(pairs) -> Comparison:
    ratios = sorted(c / b for c, b in pairs)
    n = len(ratios)
    # the widest k with P(Binomial(n, 1/2) < k) <= (1 - CONFIDENCE) / 2: ratios[k-1] and
    # ratios[n-k] bound the median with CONFIDENCE
    k, tail = 0, 0.0
    while k < n // 2:
        tail += math.comb(n, k) / 2**n
        if tail > (1 - CONFIDENCE) / 2:
            break
        k += 1
    k = max(k, 1)
    return Comparison(
        ratio=_median(ratios),
        low=ratios[k - 1],
        high=ratios[n - k],
        rounds=n,
        candidate_seconds=_median([c for c, _ in pairs]),
        baseline_seconds=_median([b for _, b in pairs]),
    )


def _median(values) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


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


def captured(fn, *args, calls: int = 1):
    """(a ``torch.cuda.CUDAGraph`` of ``calls`` calls of ``fn(*args)``, the last call's output),
    recorded after warm-up calls on a side stream (as torch's CUDA graph docs ask; a first call
    may also tune or build what a capture could not hold). Replays read ``args``' memory: copy
    new inputs into it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            out = fn(*args)
    return graph, out


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
