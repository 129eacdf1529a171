"""What the bench suites share: their command line, the CPU's name, and the one writer of their
results (JSON: environment + records, and a markdown table beside it)."""

import argparse
import json
import platform
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


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def write_results(stem: Path, env: dict, title: str, header: str, rows: list[str], records: list[dict],
                  extra: str = "", more: dict | None = None) -> None:
    """``stem``.json and ``stem``.md; ``title`` heads the table, followed by the command, and
    ``extra`` (markdown) follows it; ``more`` adds keys to the JSON."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": records, **(more or {})}, indent=1))
    stem.with_suffix(".md").write_text(f"{title}; `{env['command']}`\n\n{header}\n" + "\n".join(rows) + "\n" + extra)
