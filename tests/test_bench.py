import json

from bench import cpu_suite as suite


def test_cpu_suite_quick_mode_writes_results(tmp_path):
    records = suite.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("cpu-*-quick.json")
    saved = json.loads(json_file.read_text())
    assert saved["environment"]["command"] == "python -m bench.cpu_suite --quick"
    assert {"device", "threads", "torch", "dtype", "date"} <= set(saved["environment"])
    kinds = {r["kind"] for r in saved["results"]}
    assert kinds == {"conv3x3", "linear", "model"} and len(saved["results"]) == len(records)
    for r in saved["results"]:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0 and r["flop_limit"] > 1
        assert abs(r["speedup"] - r["dense_ms"] / r["sparse_ms"]) < 1e-9
    assert any("bsr_ms" in r for r in saved["results"])
    assert (tmp_path / json_file.name.replace(".json", ".png")).stat().st_size > 1000
    assert "| kind |" in (tmp_path / json_file.name.replace(".json", ".md")).read_text()


def test_gpu_suite_quick_mode_checks_and_times_every_side(tmp_path):
    from bench import gpu_suite

    records = gpu_suite.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("gpu-*-quick.json")
    saved = json.loads(json_file.read_text())
    assert {"device", "torch", "triton", "cuda", "date", "command"} <= set(saved["environment"])
    assert {r["kind"] for r in saved["results"]} == {"conv3x3", "linear"} and len(records) == len(saved["results"])
    for r in saved["results"]:
        assert r["triton_error"] <= r["bound"] and r["flop_limit"] > 1
        assert abs(r["triton_speedup"] - r["dense_ms"] / r["triton_ms"]) < 1e-9
    assert any("torch_ms" in r for r in saved["results"])
