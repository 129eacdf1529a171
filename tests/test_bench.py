import importlib.util
import json
from pathlib import Path


def test_cpu_suite_quick_mode_writes_results(tmp_path):
    path = Path(__file__).resolve().parents[1] / "bench" / "cpu_suite.py"
    spec = importlib.util.spec_from_file_location("cpu_suite", path)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    records = suite.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("cpu-*-quick.json")
    saved = json.loads(json_file.read_text())
    assert saved["environment"]["command"] == "python bench/cpu_suite.py --quick"
    assert {"device", "threads", "torch", "dtype", "date"} <= set(saved["environment"])
    kinds = {r["kind"] for r in saved["results"]}
    assert kinds == {"conv3x3", "linear", "model"} and len(saved["results"]) == len(records)
    for r in saved["results"]:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0
        assert abs(r["speedup"] - r["dense_ms"] / r["sparse_ms"]) < 1e-9
    assert any("bsr_ms" in r for r in saved["results"])
    assert (tmp_path / json_file.name.replace(".json", ".png")).stat().st_size > 1000
    assert "| kind |" in (tmp_path / json_file.name.replace(".json", ".md")).read_text()
