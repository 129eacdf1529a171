import json

import torch
from safetensors.torch import load_file, save_file

from sparsekit import zoo
from sparsekit.cli import main
from sparsekit.transforms import global_magnitude_masks

from .helpers import calibrated_zoo_model


def test_structure_lth_pruning_reaches_the_sparsity_and_spares_the_first_conv():
    model = zoo.create("resnet18").eval()
    masks = global_magnitude_masks(model, 0.8)
    assert "conv1.weight" not in masks and "layer1.0.conv1.weight" in masks
    kept = sum(m.sum() for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert abs(kept.item() - 0.2) < 1e-3
    assert not any(hasattr(m, "weight_mask") for m in model.modules())


def test_demo_compiles_verifies_and_saves(capsys, tmp_path, flop_timing):
    assert main(["demo", "--model", "wrn32_2", "--batch", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "after refill" in out and "end to end" in out and "; ok (bound" in out
    assert main(["inspect", str(tmp_path / "out")]) == 0
    assert "verified on cpu" in capsys.readouterr().out


def test_compile_command_and_errors(capsys, tmp_path, flop_timing):
    model, masks = calibrated_zoo_model("resnet18")
    save_file({k: m.float() for k, m in masks.items()}, str(tmp_path / "masks.safetensors"))
    save_file(model.state_dict(), str(tmp_path / "weights.safetensors"))
    args = [
        "compile",
        "resnet18",
        "--mask",
        str(tmp_path / "masks.safetensors"),
        "--batch",
        "2",
        "--weights",
        str(tmp_path / "weights.safetensors"),
    ]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "error: load: cannot read" in capsys.readouterr().err
    torch.save({"fc.weight": torch.ones(3)}, tmp_path / "bad.pt")
    assert (
        main(
            [
                "compile",
                "resnet18",
                "--mask",
                str(tmp_path / "bad.pt"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_plan_command_meets_the_target_and_saves_what_it_chose(
    flop_timing, capsys, tmp_path, scripted_speedups
):
    scripted_speedups.script = [1.3]
    args = [
        "plan",
        "resnet18",
        "--speedup",
        "1.2",
        "--batch",
        "8",
        "--levels",
        "3",
        "--calib",
        "1",
        "--draws",
        "3",
        "--steps",
        "1",
        "--cache",
        str(tmp_path / "tables.json"),
        "--out",
        str(tmp_path / "plan"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sparsekit.plan: measured speedup" in out and "layer4.1.conv2" in out
    report = json.loads((tmp_path / "plan" / "plan.json").read_text())
    assert report["speedup"] == 1.3 and len(report["sparsities"]) == 19
    assert set(load_file(str(tmp_path / "plan" / "masks.safetensors"))) == {
        f"{n}.weight" for n in report["layers"]
    }
    assert (tmp_path / "plan" / "plan.png").stat().st_size > 1000 and (
        tmp_path / "tables.json"
    ).exists()
    assert main(["inspect", str(tmp_path / "plan" / "compiled")]) == 0
    assert (
        main(
            [
                "plan",
                "resnet18",
                "--speedup",
                "100",
                "--batch",
                "8",
                "--levels",
                "3",
                "--cache",
                str(tmp_path / "tables.json"),
            ]
        )
        == 2
    )
    assert "out of reach" in capsys.readouterr().err
