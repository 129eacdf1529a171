"""What the bench suites share: their command line, and the one writer of their results (JSON:
environment + records, and a markdown table beside it)."""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def suite_arguments(argv, description: str, module: str, quick_help: str):
    """(the parsed ``--quick`` / ``--out`` of a suite, the command that reruns it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    return args, f"python -m {module}" + (" --quick" if args.quick else "")


def write_results(stem: Path, env: dict, title: str, header: str, rows: list[str], records: list[dict],
                  extra: str = "") -> None:
    """``stem``.json and ``stem``.md; ``title`` heads the table, followed by the command, and
    ``extra`` (markdown) follows it."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": records}, indent=1))
    stem.with_suffix(".md").write_text(f"{title}; `{env['command']}`\n\n{header}\n" + "\n".join(rows) + "\n" + extra)
