import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Cases per property test: "fast" (CI and the README's test command) or "thorough", selected with
# SPARSEKIT_HYPOTHESIS_PROFILE=thorough (pack/unpack and exact cover per planner, each op x backend
# x dtype against fp64 dense: 2,000 cases each).
for _name, _examples in (("fast", 200), ("thorough", 2000)):
    settings.register_profile(
        _name,
        max_examples=_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
settings.load_profile(os.environ.get("SPARSEKIT_HYPOTHESIS_PROFILE", "fast"))

# Without a GPU the Triton kernels run in Triton's interpreter (read when sparsekit imports them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


_terminal = []  # the terminal reporter, where failures are named as they happen


def pytest_configure(config):
    # A check sparsekit could not make (a degenerate reference, a dropped candidate) fails the
    # test that did not expect it. Added here, not in pyproject.toml: naming the warning class
    # there imports sparsekit before the lines above have set TRITON_INTERPRET.
    config.addinivalue_line("filterwarnings", "error::sparsekit.errors.SparsekitWarning")
    _terminal[:] = [config.pluginmanager.get_plugin("terminalreporter")]


def pytest_runtest_logreport(report):
    """A failing test is named when it fails, not only in the summary at the end of the run
    (under xdist this runs in the controller as the workers report)."""
    if report.failed and _terminal[0] is not None:
        _terminal[0].write_line(f"\nFAILED {report.nodeid} ({report.when})", red=True)


# Under pytest-xdist every worker is one process: one torch thread each keeps the cores from
# being oversubscribed (spinning OpenMP threads of two processes on two cores starve each other).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class ScriptedSpeedups:
    """Stands in for ``sparsekit.timing.paired_ms``, which plans and benchmarks branch on: each
    side still runs once (so what would be timed is exercised), and the figures returned give the
    next scripted speedup of "compiled" over "dense" (the last one repeats). Speed is a property
    of a machine and its load; tests check the logic that acts on a measurement, and speed
    figures live in bench/results."""

    def __init__(self):
        self.script = [1.0]
        self.calls = 0

    def __call__(self, sides: dict, *args, **kwargs) -> dict:
        for fn in sides.values():
            fn()
        self.calls += 1
        speedup = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return {key: 1.0 if key == "dense" else 1.0 / speedup for key in sides}


@pytest.fixture
def scripted_speedups(monkeypatch):
    import sparsekit.timing

    scripted = ScriptedSpeedups()
    monkeypatch.setattr(sparsekit.timing, "paired_ms", scripted)
    return scripted


def flop_seconds(fn) -> float:
    """A deterministic stand-in for a measured time: a sparse layer takes its FLOP ratio in ms, a
    dense Conv2d / Linear 1 ms, a model the sum of its layers; anything else 1 ms."""
    from torch import nn

    from sparsekit.nn import SparseConv2d, SparseLinear

    def layer_ms(m):
        if isinstance(m, (SparseConv2d, SparseLinear)):
            return m.summary()["flops_ratio"]
        return 1.0 if isinstance(m, (nn.Conv2d, nn.Linear)) else 0.0

    if isinstance(fn, nn.Module):
        return 1e-3 * (sum(layer_ms(m) for m in fn.modules()) or 1.0)
    return 1e-3


@pytest.fixture
def flop_timing(monkeypatch):
    """Every timing that plan choice, timing tables and verify branch on made deterministic by
    ``flop_seconds``: a plan is faster exactly when it runs fewer multiply-adds."""
    from .helpers import timed_by  # here, not above: sparsekit is imported after the settings

    timed_by(monkeypatch, flop_seconds)
