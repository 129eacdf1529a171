"""What the bench suites share: their command line and the one writer of their results (JSON:
environment + records, and a markdown table beside it), and the reader of earlier results a
resumed run adds to."""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def suite_arguments(argv, description: str, module: str, quick_help: str, add_arguments=None):
    """(the parsed ``--quick`` / ``--out`` of a suite, and what ``add_arguments(parser)``
    adds; the command that reruns it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    words = list(argv or [])
    if "--out" in words:  # where results go is not part of what was measured
        del words[words.index("--out") : words.index("--out") + 2]
    return args, " ".join(["python -m", module, *words])


def write_results(
    stem: Path,
    env: dict,
    title: str,
    header: str,
    rows: list[str],
    records: list[dict],
    extra: str = "",
    more: dict | None = None,
) -> None:
    """``stem``.json and ``stem``.md; ``title`` heads the table, followed by the command, and
    ``extra`` (markdown) follows it; ``more`` adds keys to the JSON."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(
        json.dumps({"environment": env, "results": records, **(more or {})}, indent=1)
    )
    stem.with_suffix(".md").write_text(
        f"{title}; `{env['command']}`\n\n{header}\n" + "\n".join(rows) + "\n" + extra
    )


def resumed(stem: Path, env: dict) -> dict:
    """The saved ``stem``.json (``{"results": [], ...}`` when there is none) of a run on this
    machine with these versions, whose results a run adds to; ``env``'s command then lists the
    earlier commands too. Another machine's or version's results stop the run."""
    path = stem.with_suffix(".json")
    if not path.exists():
        return {"results": []}
    saved = json.loads(path.read_text())
    same = ("device", "threads", "torch", "sparsekit")
    if any(saved["environment"][k] != env[k] for k in same):
        raise SystemExit(
            f"--resume: {path} was measured with {[saved['environment'][k] for k in same]}, "
            f"this run has {[env[k] for k in same]}; move it or drop --resume"
        )
    env["command"] = f"{saved['environment']['command']}; {env['command']}"
    return saved
