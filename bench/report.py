"""Writing a suite's results: JSON (environment + records) and a markdown table beside it."""

import json
from pathlib import Path


def write_results(stem: Path, env: dict, title: str, header: str, rows: list[str], records: list[dict]) -> None:
    """``stem``.json and ``stem``.md; ``title`` heads the table, followed by the command."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": records}, indent=1))
    stem.with_suffix(".md").write_text(f"{title}; `{env['command']}`\n\n{header}\n" + "\n".join(rows) + "\n")
