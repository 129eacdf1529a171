"""Latency measurement: warm-up, repeats, median, on all of torch's threads (synchronised on GPU)."""

import torch
from torch.utils.benchmark import Timer


def median_seconds(fn, *args, min_run_time: float = 0.05) -> float:
    """Median wall time of ``fn(*args)`` after one warm-up call, without autograd (no_grad:
    inference_mode would refuse ops such as torch's sparse BSR matmul)."""
    with torch.no_grad():
        fn(*args)
        timer = Timer(
            "fn(*args)", globals={"fn": fn, "args": args}, num_threads=torch.get_num_threads()
        )
        return timer.blocked_autorange(min_run_time=min_run_time).median
