"""The one-command GPU session (bench/gpu_session.py), without a GPU: its budgets fit, its dry run
says what it would do, and its runner keeps every phase's results whatever a later one does
(fails, overruns its budget, is skipped)."""

import json
import pathlib
import subprocess
import sys
import time

from bench import gpu_session
from bench.gpu_session import PHASES, Phase


def test_the_phases_budgets_fit_the_session_and_its_results_the_file_limit():
    assert gpu_session.budgets_fit()
    assert sum(p.budget for p in PHASES) <= 8 * 60 == gpu_session.SESSION_SECONDS
    stems = [gpu_session.SESSION_STEM, *(s for p in PHASES for s in p.results)]
    assert 2 * len(stems) <= gpu_session.MAX_FILES  # a .json and a .md each
    names = [p.name for p in PHASES]
    assert names[0] == "build" and all(p.needs == ("build",) for p in PHASES[1:])


def test_the_dry_run_lists_every_phase_its_command_and_the_call_to_make():
    done = subprocess.run(
        ["bash", "scripts/gpu_session.sh", "--dry-run"],
        capture_output=True,
        text=True,
        cwd=gpu_session.ROOT,
        check=True,
    )
    text = done.stdout
    assert f"budgets sum to {sum(p.budget for p in PHASES)} s of 480 s" in text
    for phase in PHASES:
        assert f"{phase.name:<10} {phase.budget:>4} s" in text
    assert "python3 -m bench.reproduce --device cuda --out '$OUT'" in text
    assert "command 'bash scripts/gpu_session.sh', carry [\".whl\"]" in text


def script(body: str) -> tuple[str, ...]:
    return (sys.executable, "-c", body)


def test_every_phase_keeps_its_results_when_later_ones_fail_overrun_or_are_skipped(tmp_path):
    pid_file = tmp_path / "child.pid"
    phases = (
        # overruns its budget; its child must be stopped with it
        Phase(
            "slow",
            2,
            ("sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"),
            "a phase past its budget",
        ),
        Phase(
            "first",
            5,
            script("import pathlib, sys; pathlib.Path(sys.argv[1], 'first.json').write_text('[]')")
            + ("{out}",),
            "a phase that writes its results",
        ),
        Phase(
            "broken",
            5,
            script("import sys; print('partial'); sys.exit(3)"),
            "a phase that fails",
        ),
        Phase("after", 5, script("pass"), "needs the broken one", needs=("broken",)),
        Phase("late", 40, script("pass"), "more than the session has left"),
    )
    start = time.monotonic()
    outcomes = gpu_session.run(tmp_path, phases, session_seconds=20)
    assert time.monotonic() - start < 15
    status = {o.name: o.status for o in outcomes}
    assert status == {
        "slow": "timed out",
        "first": "passed",
        "broken": "failed",
        "after": "skipped",
        "late": "skipped",
    }
    assert (tmp_path / "first.json").exists()
    child = pathlib.Path(f"/proc/{int(pid_file.read_text())}/stat")
    # stopped with its phase, not left running (gone, or a zombie its new parent has not reaped)
    assert not child.exists() or child.read_text().split(") ")[1].startswith("Z")
    (session,) = tmp_path.glob("session-*.json")
    saved = json.loads(session.read_text())
    by_name = {p["name"]: p for p in saved["phases"]}
    assert by_name["broken"]["log_tail"] == ["partial"]
    assert "needs broken" in by_name["after"]["reason"]
    assert "budget is 40 s" in by_name["late"]["reason"]
    assert "| slow | 2 |" in session.with_suffix(".md").read_text()


def test_junit_counts_read_pytests_xml_or_else_its_log(tmp_path):
    junit = tmp_path / "tests.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="ok"/>'
        '<testcase classname="tests.test_a" name="bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="off"><skipped message="no GPU"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert gpu_session.junit_counts(junit, []) == {
        "passed": 1,
        "failed": 1,
        "skipped": 1,
        "failures": ["tests.test_a::bad"],
    }
    # a run stopped before pytest wrote it: the failures its log named as they happened
    log = ["....", "FAILED tests/test_a.py::bad[x] (call)", "..."]
    assert gpu_session.junit_counts(tmp_path / "none.xml", log) == {
        "report": "none: pytest was stopped before writing it",
        "failures": ["tests/test_a.py::bad[x]"],
    }
