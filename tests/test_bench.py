import json

import pytest
import torch

from bench import cpu_suite as suite
from bench import reproduce


def test_cpu_suite_quick_mode_writes_results(tmp_path):
    records = suite.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("cpu-*-quick.json")
    saved = json.loads(json_file.read_text())
    assert saved["environment"]["command"] == "python -m bench.cpu_suite --quick"
    assert {"device", "threads", "torch", "dtypes", "fp32_peak_gmacs", "date"} <= set(
        saved["environment"]
    )
    kinds = {r["kind"] for r in saved["results"]}
    assert kinds == {"conv3x3", "linear", "model"} and len(saved["results"]) == len(records)
    assert {r["dtype"] for r in saved["results"]} == {"float32", "bfloat16"}
    for r in saved["results"]:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0 and r["flop_limit"] > 1
        assert abs(r["speedup"] - r["dense_ms"] / r["sparse_ms"]) < 1e-9
        assert r["dense_peak"] > 0 and r["sparse_peak"] > 0
        if r["backend"] == "cpu":  # the C++ kernels' phases, profiled
            assert r["micro_ms"] > 0 and r["pack_ms"] > 0 and r["epilogue_ms"] > 0
            assert r["grid_positions"] >= r["output_positions"]
    assert any("bsr_ms" in r for r in saved["results"])
    (model,) = [r for r in saved["results"] if r["kind"] == "model"]
    assert model["dense_format"] in ("nchw", "channels_last")
    masked = [layer for layer in model["layers"] if layer["flop_limit"] > 1]
    assert masked and any("micro_ms" in layer for layer in model["layers"])
    assert (tmp_path / json_file.name.replace(".json", ".png")).stat().st_size > 1000
    assert "| kind |" in (tmp_path / json_file.name.replace(".json", ".md")).read_text()


def test_reproduce_quick_mode_measures_against_the_flop_limit(tmp_path):
    records = reproduce.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("reproduce-cpu-*-quick.json")
    saved = json.loads(json_file.read_text())
    assert saved["environment"]["command"] == "python -m bench.reproduce --quick"
    assert (
        [r["transform"] for r in saved["results"]]
        == ["refill", "kernel"]
        == [r["transform"] for r in records]
    )
    for r in saved["results"]:
        assert r["max_error"] <= r["bound"] and r["flop_limit"] > 1 and r["runs"] == 5
        assert r["dense_quartiles_ms"][0] <= r["dense_ms"] <= r["dense_quartiles_ms"][1]
        assert abs(r["saving"] - (1 - r["compiled_ms"] / r["dense_ms"])) < 1e-9
        assert abs(r["limit_saving"] - (1 - 1 / r["flop_limit"])) < 1e-9
        # 80%: the per-layer breakdown; refill's channels leave the dataflow (narrow dense
        # layers), kernel masks are packed
        packed = any(layer["structure"] != "dense" for layer in r["layers"])
        assert packed or r["compacted_flop_limit"] > r["flop_limit"]
    refill, kernel = saved["results"]
    assert reproduce.paper_row(refill)["paper"] == "Structure-LTH"
    assert kernel["acceleration_rate"] >= 1
    markdown = (tmp_path / json_file.name.replace(".json", ".md")).read_text()
    assert "| wrn32_2 | float32 | 2 | refill |" in markdown and "## The papers' figures" in markdown
    assert (tmp_path / json_file.name.replace(".json", ".png")).stat().st_size > 1000

    # --resume keeps the day's cases and measures only those the file lacks
    json_file.write_text(json.dumps({**saved, "results": [refill]}))
    again = reproduce.main(["--quick", "--out", str(tmp_path), "--resume"])
    assert again[0] == refill and [r["transform"] for r in again] == ["refill", "kernel"]
    assert json.loads(json_file.read_text())["environment"]["command"] == (
        "python -m bench.reproduce --quick; python -m bench.reproduce --quick --resume"
    )


def test_the_papers_ticket_keeps_its_blocks_and_flop_limit():
    """The regrouped ResNet-18 ticket as masks: about 65% sparse, and its convolutions' FLOP limit
    end to end is 1.41x (layer1 and layer2 stay dense), the figure its savings are read against."""
    from bench.masks import flop_limit
    from sparsekit import zoo

    model = zoo.create("resnet18").eval()
    masks = reproduce.ticket_masks(model)
    assert len(masks) == 20 and all(
        m.shape == model.get_submodule(k[:-7]).weight.shape for k, m in masks.items()
    )
    kept = sum(m.sum() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.3 < kept < 0.4
    assert all(m.all() for k, m in masks.items() if k.startswith(("layer1.", "conv1")))
    assert abs(flop_limit(model, masks, torch.randn(2, 3, 32, 32)) - 1.41) < 0.01


def test_gpu_suite_quick_mode_checks_and_times_every_side(tmp_path):
    from bench import gpu_suite

    records = gpu_suite.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("gpu-*-quick.json")
    saved = json.loads(json_file.read_text())
    assert {"device", "torch", "triton", "cuda", "date", "command"} <= set(saved["environment"])
    assert {r["kind"] for r in saved["results"]} == {"conv3x3", "linear", "model"}
    assert len(records) == len(saved["results"])
    for r in saved["results"]:
        side = "sparsekit" if r["kind"] == "model" else "triton"  # a model: the compiled one
        assert r[f"{side}_error"] <= r["bound"] and r["flop_limit"] > 1
        assert abs(r[f"{side}_speedup"] - r["dense_ms"] / r[f"{side}_ms"]) < 1e-9
        assert set(r[f"{side}_ms_by_format"]) == (
            {"rows"} if r["kind"] == "linear" else {"nchw", "channels_last"}
        )
    (model,) = (r for r in saved["results"] if r["kind"] == "model")
    assert any(layer["structure"] != "dense" for layer in model["layers"])
    assert any("torch_ms" in r for r in saved["results"])


def test_plan_against_uniform_quick_mode_on_digits(tmp_path, scripted_speedups, flop_timing):
    scripted_speedups.script = [1.3]
    from bench import plan_vs_uniform

    (record,) = plan_vs_uniform.main(
        ["--quick", "--workload", "digits", "--speedup", "1.2", "--out", str(tmp_path)]
    )
    assert record["speedup"] == 1.3 and record["rounds"][-1]["speedup"] == record["speedup"]
    assert [round(u["sparsity"], 3) for u in record["uniform"]] == [0.0, 0.4, 0.827, 0.95]
    assert (
        record["uniform"][0]["loss"] == 0
        or record["uniform"][0]["loss"] < record["uniform"][-1]["loss"]
    )
    assert 0 < record["accuracy"] <= 1 and record["max_error"] < 1e-3
    assert (
        plan_vs_uniform.interpolated(
            [{"speedup": 1.0, "loss": 0.0}, {"speedup": 3.0, "loss": 1.0}], 2.5, "loss"
        )
        == 0.75
    )
    saved = json.loads((tmp_path / "plan-vs-uniform-cpu-quick.json").read_text())
    assert saved["results"][0]["workload"] == "digits"
    assert (tmp_path / "plan-vs-uniform-cpu-quick-digits.png").stat().st_size > 1000


def test_compaction_quick_mode_times_both_sides_against_dense(tmp_path):
    from bench import compaction

    (record,) = compaction.main(["--quick", "--out", str(tmp_path)])
    assert record["max_error"] <= record["bound"]
    assert record["compacted_flop_limit"] > record["mask_flop_limit"] > 1
    for side in ("compacted", "uncompacted"):
        assert abs(record[f"{side}_speedup"] - record["dense_ms"] / record[f"{side}_ms"]) < 1e-9
    (json_file,) = tmp_path.glob("compaction-cpu-*-quick.json")
    assert json.loads(json_file.read_text())["results"][0]["model"] == "resnet18"
    assert "| resnet18 |" in json_file.with_suffix(".md").read_text()


def test_host_overhead_quick_mode_times_every_side_per_backend_and_mode(tmp_path):
    from bench import host_overhead

    records = host_overhead.main(["--quick", "--out", str(tmp_path)])
    cases = {(r["case"], r["mask"], r["backend"], r["mode"]) for r in records}
    cpu_backends = host_overhead.case_backends("cpu")
    assert "cpu" in cpu_backends
    assert len(cases) == len(records) == 2 * 2 * len(cpu_backends) * 2
    for r in records:
        assert all(r[f"{side}_us"] > 0 for side in ("dense", "dense_layer", "layer", "op"))
        assert r["ratio"] == r["layer_us"] / r["dense_us"]
    # the group mask's blocks: two for the linear, whatever plan the conv got
    assert {r["blocks"] for r in records if r["case"] == "linear" and r["mask"] == "group"} == {2}
    (json_file,) = tmp_path.glob("host-overhead-cpu-*-quick.json")
    saved = json.loads(json_file.read_text())
    assert saved["environment"]["threads"] == 1 and len(saved["results"]) == len(records)


def test_reproduce_on_cuda_without_a_gpu_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a GPU-less machine sees

    def measured(*args, **kwargs):
        raise AssertionError("a case was run")

    monkeypatch.setattr(reproduce, "run_case", measured)
    with pytest.raises(SystemExit, match="needs a CUDA GPU, and none was found"):
        reproduce.main(["--device", "cuda", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_reproduce_runs_each_devices_default_cases_unless_told_otherwise():
    def cases(*argv):
        return reproduce.grid(reproduce.arguments(list(argv))[0])

    # CPU: every model, mask (the ticket on resnet18 only), sparsity, dtype and batch; unstructured
    # and kernel masks also at 70% and 95%
    assert len(cases()) == 5 * 2 * 2 * (5 * 6 + 2 * 2) + 2 * 2
    assert {c[2] for c in cases() if c[1] == "kernel"} == {
        0.36,
        0.45,
        0.58,
        0.7,
        0.74,
        0.8,
        0.9,
        0.95,
    }
    assert {c[2] for c in cases("--sparsity", "0.9") if c[1] == "kernel"} == {0.9}
    # GPU: the papers' GPU rows, every model's float32 first
    gpu = cases("--device", "cuda")
    assert len(gpu) == 3 * 3 * 2 and [c[3] for c in gpu] == ["float32"] * 9 + ["bfloat16"] * 9
    assert {(c[0], c[1]) for c in gpu} == {
        (m, t)
        for m in ("resnet18", "vgg16_bn", "resnet50")
        for t in ("refill", "regroup", "kernel")
    }
    assert {(c[2], c[4]) for c in gpu} == {(0.8, 64)}
    assert cases(
        "--device", "cuda", "--model", "resnet50", "--dtype", "bfloat16", "--batch", "8"
    ) == [("resnet50", t, 0.8, "bfloat16", 8) for t in ("refill", "regroup", "kernel")]
    assert cases("--device", "cuda", "--quick") == [("wrn32_2", "refill", 0.8, "float32", 2)]


def test_reproduce_gpu_table_shows_a_record_eager_and_replayed():
    """The GPU table's row of a record made by the shared code, from a case measured on CPU with
    graph times set by hand (a CUDA graph needs a GPU): 1.5 ms dense, 0.5 ms compiled replayed."""

    measured = reproduce.run_case(
        "wrn32_2", "refill", 0.8, "float32", 2, quick=True, gen=torch.Generator().manual_seed(0)
    )
    cpu_row = reproduce._row(measured)
    assert f"| {measured['speedup']:.2f}x |" in cpu_row
    assert cpu_row.count("|") == reproduce.HEADERS["cpu"].splitlines()[0].count("|")

    eager = {key: measured[key] for key in ("dense_ms", "compiled_ms")}
    derived = ("ms", "saving", "speedup")  # the times and what with_savings derives from them
    record = {k: v for k, v in measured.items() if not any(word in k for word in derived)}
    record = reproduce.with_savings(
        record | eager | {"dense_graph_ms": 1.5, "compiled_graph_ms": 0.5}
    )
    assert record["graph_speedup"] == 3.0 and abs(record["graph_saving"] - 2 / 3) < 1e-12
    assert record["speedup"] == measured["speedup"] and record["saving"] == measured["saving"]
    row = reproduce._row(record)
    header = reproduce.HEADERS["cuda"].splitlines()[0]
    assert row.count("|") == header.count("|") > cpu_row.count("|")
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert cells["dense graph ms"] == "1.500" and cells["compiled graph ms"] == "0.500"
    assert cells["graph speedup"] == "3.00x" and cells["graph saving"] == "66.7%"
    assert cells["compiled ms"] == f"{measured['compiled_ms']:.3f}"
    assert cells["time saving"] == f"{measured['saving']:.1%}"
    assert cells["paper's figure"].startswith("53.8%-64.9% (Structure-LTH")


def test_reproduce_strict_fp32_turns_tf32_off_and_restores_it(monkeypatch):

    if not torch.cuda.is_available():  # importing gpu_suite then sets it: undone after the test
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    previous = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    try:
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        with pytest.raises(RuntimeError, match="inside"), reproduce.strict_fp32():
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
            raise RuntimeError("inside")
        assert torch.backends.cudnn.allow_tf32 is True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cudnn.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])


def test_gpu_suite_records_an_opt_in_sides_failure_and_times_the_rest(monkeypatch):
    from bench import gpu_suite

    monkeypatch.setattr(gpu_suite, "ALSO", {"grouped"})  # asked for, not yet tested on a GPU
    x = torch.randn(4, 4)
    dense = {"rows": lambda: x * 2}
    sides = {"grouped": {"rows": lambda: x * 3}, "torch": {"rows": lambda: x * 2}}
    record = gpu_suite.time_case({"shape": [4, 4]}, dense, sides, "float32")
    assert record["grouped_failed"].startswith("max error") and "grouped_ms" not in record
    assert record["torch_speedup"] > 0 and record["torch_error"] == 0
    raising = {"grouped": {"rows": lambda: 1 / 0}}
    record = gpu_suite.time_case({"shape": [4, 4]}, dense, raising, "float32")
    assert record["grouped_failed"].startswith("ZeroDivisionError")
    with pytest.raises(AssertionError, match="torch: max error"):  # any other side stops the run
        gpu_suite.time_case({"shape": [4, 4]}, dense, {"torch": {"rows": lambda: x}}, "float32")
