"""The GPU session: build, GPU tests, sanitizer and the headline benchmarks in ONE command of at
most ``SESSION_SECONDS`` on a fresh GPU machine (H100/H200: Python 3.12, torch with CUDA, Triton, no
network; the wheels it lacks travel in ``.whl/``).

    bash scripts/gpu_session.sh prepare     # here: puts the wheels the GPU machine lacks in .whl/
    bash scripts/gpu_session.sh --dry-run   # here: the phases, their budgets, the command to run
    bash scripts/gpu_session.sh [OUT]       # there: every phase; results in OUT (else $OUT, else
                                            # build/gpu-session)

Each phase runs as its own process with a time budget: a phase still running at its budget (plus
what earlier phases left unused) is stopped and recorded as timed out; a phase that needs one that
did not pass, or that the time left cannot hold, is recorded as skipped with the reason. The
session's record (``session-<device>-<date>.json`` / ``.md``: every phase's status, time, reason
and the tail of its log, the tests' counts and failures) is written after every phase, and each
benchmark writes its results after every case, so whatever stops the session, what was measured
is in OUT: at most ``MAX_FILES`` files, named by device and date, ready for ``bench/results/``.

Only the standard library is imported here: the session starts before sparsekit is built.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SESSION_SECONDS = 480  # what the phases' budgets may sum to: the session fits a 10-minute call
MAX_FILES = 8
WHEELS = ("pymetis", "nvidia_cutlass")  # what .whl/ must hold (scripts/gpu_session.sh prepare)
LOG_TAIL = 60  # lines of each phase's log kept in the session's record
# phases under this many seconds of their budget are not started: they could not finish
MIN_FRACTION = 0.5


@dataclass(frozen=True)
class Phase:
    """One step of the session: ``command`` (argv, run from the repository root; ``{out}``,
    ``{device}``, ``{date}``, ``{junit}`` and ``{sanitizer}`` filled in) within ``budget`` seconds,
    after the phases in ``needs`` passed, the wheels of .whl/ installed first if ``wheels``, with
    ``env`` added to its environment; ``results``: the file stems it writes in OUT, for the dry
    run and the file count."""

    name: str
    budget: int
    command: tuple[str, ...]
    what: str
    needs: tuple[str, ...] = ()
    results: tuple[str, ...] = ()
    wheels: bool = False
    env: tuple[tuple[str, str], ...] = ()


PY = "python3"
PHASES = (
    Phase(
        "build",
        150,
        (PY, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."),
        "the wheels from .whl/ into build/site, then the extension (CUDA for TORCH_CUDA_ARCH_LIST, "
        "the CUDA sources first, MAX_JOBS parallel)",
        wheels=True,
    ),
    Phase(
        "tests",
        80,
        (
            PY,
            "-m",
            "pytest",
            "tests/test_triton.py",
            "tests/test_cuda_backend.py",
            "tests/test_graph_capture.py",
            "-q",
            "-n",
            "8",
            "--junitxml",
            "{junit}",
        ),
        "the Triton and cuda backends against fp64 references, CUDA graph capture and replay",
        needs=("build",),
    ),
    Phase(
        "sanitize",
        45,
        (
            "{sanitizer}",
            "--tool",
            "memcheck",
            "--error-exitcode",
            "1",
            PY,
            "-m",
            "pytest",
            "tests/test_cuda_backend.py",
            "-q",
            "-x",
            "-k",
            "(bfloat16 or float32) and not 130",
        ),
        "compute-sanitizer memcheck on the cuda backend's small cases",
        needs=("build",),
    ),
    *(
        Phase(
            name,
            budget,
            (PY, "-m", module, *args, "--out", "{out}"),
            what,
            ("build",),
            (stem,),
            env=env,
        )
        for name, budget, module, args, stem, what, env in (
            (
                "layers",
                80,
                "bench.gpu_suite",
                ("--part", "headline"),
                "gpu-{device}-{date}-headline",
                "per layer: 3x3 convs of ResNet-50 and VGG-16 at 50% and 80% group sparsity in "
                "bf16 and strict fp32, linear 4096x4096 at 80%, against cuDNN / cuBLAS, eager and "
                "CUDA graph; the opt-in grouped backend too (recorded as failed, not stopping the "
                "part, if its first runs fail)",
                (("SPARSEKIT_BENCH_ALSO", "grouped"),),
            ),
            (
                "reproduce",
                105,
                "bench.reproduce",
                ("--device", "cuda"),
                "reproduce-cuda-{device}-{date}",
                "end to end: the papers' time savings on zoo ResNet-18, VGG-16-BN (32x32) and "
                "ResNet-50 (224), batch 64, refill / regroup / kernel masks at 80%, fp32 and bf16, "
                "eager and graph",
                (),
            ),
            (
                "host",
                20,
                "bench.host_overhead",
                (),
                "host-overhead-gpu-{device}-{date}",
                "one layer call at tiny shapes against the dense layer's, eager and CUDA graph",
                (),
            ),
        )
    ),
)
SESSION_STEM = "session-{device}-{date}"


@dataclass
class Outcome:
    """What became of a phase."""

    name: str
    budget: int
    status: str = "not run"  # passed, failed, timed out, skipped
    seconds: float = 0.0
    reason: str = ""
    log_tail: list[str] = field(default_factory=list)


def device_name() -> str:
    """The GPU's name as file names carry it (``NVIDIA-H100-80GB-HBM3``), from nvidia-smi."""
    try:
        found = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        found = []
    return re.sub(r"[^A-Za-z0-9.-]+", "-", found[0].strip()) if found else "no-GPU"


def sanitizer() -> str:
    return shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"


def budgets_fit(phases=PHASES) -> bool:
    return sum(p.budget for p in phases) <= SESSION_SECONDS


def filled(phase: Phase, values: dict) -> list[str]:
    return [part.format(**values) for part in phase.command]


def environment() -> dict:
    """The phases' environment: the wheels' site folder first on the path, sm_90a only unless
    asked otherwise, a Triton cache of the machine's, the build on every core."""
    env = dict(os.environ)
    site = ROOT / "build" / "site"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 8))
    env["TRITON_CACHE_DIR"] = str(ROOT / "build" / "triton-cache")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def install_wheels(env: dict, log, seconds: float) -> int:
    """The .whl/ wheels into build/site (once per machine), within ``seconds``; the exit status
    (1 past that time)."""
    site = ROOT / "build" / "site"
    for wheel in WHEELS:
        if (site / f".{wheel}").exists():
            continue
        found = sorted((ROOT / ".whl").glob(f"{wheel}-*.whl"))
        if not found:
            log.write(
                f"{wheel}: no wheel in .whl/; run 'bash scripts/gpu_session.sh prepare' here\n"
            )
            return 1
        command = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        try:
            status = subprocess.run(
                [*command, "--target", str(site), str(found[0])],
                stdout=log,
                stderr=log,
                env=env,
                timeout=seconds,
            ).returncode
        except subprocess.TimeoutExpired:
            log.write(f"{wheel}: not installed within {seconds:.0f} s\n")
            return 1
        if status:
            return status
        (site / f".{wheel}").touch()
    return 0


def run_phase(phase: Phase, command: list[str], seconds: float, env: dict, log_path: Path):
    """(status, seconds taken) of ``command`` stopped after ``seconds``: its whole process group,
    so that pytest's workers go with it."""
    start = time.monotonic()
    with open(log_path, "w") as log:
        if phase.wheels and install_wheels(env, log, seconds):
            return "failed", time.monotonic() - start
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env | dict(phase.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            status = process.wait(timeout=max(1.0, seconds - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended meanwhile
                pass
            process.wait()
            return "timed out", time.monotonic() - start
    return ("passed" if status == 0 else "failed"), time.monotonic() - start


def junit_counts(junit: Path, log: list[str]) -> dict:
    """Passed, failed, skipped and the failing tests' ids, from pytest's JUnit XML; without it (a
    run stopped before pytest wrote it), the tests named as failing in the log (``log``: its
    lines; tests/conftest.py names each failure as it happens)."""
    if not junit.exists():
        failures = [line.split()[1] for line in log if line.startswith("FAILED ")]
        return {"report": "none: pytest was stopped before writing it", "failures": failures}
    cases = ElementTree.parse(junit).getroot().iter("testcase")
    counts, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in cases:
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
            failures.append(f"{case.get('classname')}::{case.get('name')}")
        elif "skipped" in kinds:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts | {"failures": failures}


def write_session(stem: Path, header: dict, outcomes: list[Outcome], tests: dict) -> None:
    record = {**header, "phases": [vars(o) for o in outcomes], "tests": tests}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
    rows = [
        f"| {o.name} | {o.budget} | {o.seconds:.0f} | {o.status} | {o.reason} |" for o in outcomes
    ]
    counts = ", ".join(f"{k} {v}" for k, v in tests.items() if k != "failures")
    failures = "".join(f"\n- `{t}`" for t in tests.get("failures", []))
    stem.with_suffix(".md").write_text(
        f"GPU session on {header['device']}, {header['date']}; `{header['command']}`\n\n"
        "| phase | budget s | took s | status | note |\n| --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + (f"\n\nGPU tests: {counts}{failures}\n" if tests else "\n")
    )


def run(
    out: Path,
    phases=PHASES,
    session_seconds: int = SESSION_SECONDS,
    command: str = "bash scripts/gpu_session.sh",
) -> list[Outcome]:
    """Every phase in order (see the module doc); the outcomes, also written to OUT. ``command``:
    what was called, for the record."""
    out.mkdir(parents=True, exist_ok=True)
    logs = ROOT / "build" / "gpu-session-logs"
    logs.mkdir(parents=True, exist_ok=True)
    device, date = device_name(), datetime.date.today().isoformat()
    values = {
        "out": str(out),
        "device": device,
        "date": date,
        "junit": str(logs / "tests.xml"),
        "sanitizer": sanitizer(),
    }
    header = {
        "device": device,
        "date": date,
        "command": command,
        "session_seconds": session_seconds,
    }
    env = environment()
    Path(values["junit"]).unlink(missing_ok=True)  # an earlier session's, on a warm machine
    outcomes = [Outcome(p.name, p.budget) for p in phases]
    stem = out / SESSION_STEM.format(**values)
    start, spare, tests = time.monotonic(), 0.0, {}
    for phase, outcome in zip(phases, outcomes):
        left = session_seconds - (time.monotonic() - start)
        allowed = min(phase.budget + spare, left)
        missing = [
            n for n in phase.needs if next(o for o in outcomes if o.name == n).status != "passed"
        ]
        if missing:
            outcome.status, outcome.reason = (
                "skipped",
                f"needs {', '.join(missing)}, which did not pass",
            )
        elif allowed < MIN_FRACTION * phase.budget:
            outcome.status = "skipped"
            outcome.reason = (
                f"{left:.0f} s of the session left, the phase's budget is {phase.budget} s"
            )
        else:
            log_path = logs / f"{phase.name}.log"
            outcome.status, outcome.seconds = run_phase(
                phase, filled(phase, values), allowed, env, log_path
            )
            spare = max(0.0, allowed - outcome.seconds)
            log = log_path.read_text(errors="replace").splitlines()
            outcome.log_tail = log[-LOG_TAIL:]
            if outcome.status == "timed out":
                outcome.reason = f"stopped at {allowed:.0f} s; results so far are kept"
            if phase.name == "tests":
                tests = junit_counts(Path(values["junit"]), log)
        print(
            f"{phase.name}: {outcome.status} ({outcome.seconds:.0f} s) {outcome.reason}", flush=True
        )
        write_session(stem, header, outcomes, tests)
    return outcomes


def dry_run(phases=PHASES, command: str = "bash scripts/gpu_session.sh") -> str:
    """What the session would do, and the exact call (``command``) that runs it on the GPU
    machine."""
    values = {
        "out": "$OUT",
        "device": "<device>",
        "date": "<date>",
        "junit": "build/gpu-session-logs/tests.xml",
        "sanitizer": "compute-sanitizer",
    }
    lines = [
        f"GPU session: {len(phases)} phases, budgets sum to "
        f"{sum(p.budget for p in phases)} s of {SESSION_SECONDS} s"
    ]
    for phase in phases:
        needs = f" (after {', '.join(phase.needs)})" if phase.needs else ""
        lines.append(f"  {phase.name:<10} {phase.budget:>4} s{needs}: {phase.what}")
        env = "".join(f"{k}={shlex.quote(v)} " for k, v in phase.env)
        lines.append(f"  {'':<10}        $ {env}{shlex.join(filled(phase, values))}")
    stems = [SESSION_STEM, *(s for p in phases for s in p.results)]
    files = [f"{s.format(**values)}.{suffix}" for s in stems for suffix in ("json", "md")]
    lines.append(f"Results in OUT ({len(files)} files of at most {MAX_FILES}): {', '.join(files)}")
    missing = [w for w in WHEELS if not list((ROOT / ".whl").glob(f"{w}-*.whl"))]
    if missing:
        lines.append(
            f"Missing in .whl/: {', '.join(missing)}: "
            "run 'bash scripts/gpu_session.sh prepare' first"
        )
    lines.append(
        f"Run it on the GPU machine as one call: command '{command}', carry [\".whl\"], "
        "timeout_s 600"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="results folder (default: $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[p.name for p in PHASES],
        help="run these phases only (on a machine where the others ran: their needs are not asked)",
    )
    args = parser.parse_args(argv)
    phases = PHASES
    if args.only:
        phases = tuple(
            Phase(**(vars(p) | {"needs": tuple(n for n in p.needs if n in args.only)}))
            for p in PHASES
            if p.name in args.only
        )
    command = shlex.join(
        ["bash", "scripts/gpu_session.sh", *(["--only", *args.only] if args.only else [])]
    )
    if args.dry_run:
        print(dry_run(phases, command))
        return 0
    out = args.out or Path(os.environ.get("OUT") or ROOT / "build" / "gpu-session")
    outcomes = run(out, phases, command=command)
    return 0 if all(o.status == "passed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
