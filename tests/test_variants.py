"""benchmarks/variants.py: the commands it runs, the table it makes (on hand-made curves)
and a two-epoch run of the whole study on a tiny set."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddetr_lib.data.synthetic import generate
from ddetr_lib.engine import COCO_STAT_NAMES

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "variants.py"


@pytest.fixture(scope="module")
def var():
    spec = importlib.util.spec_from_file_location("variants", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_commands_are_the_committed_runs(var):
    # The committed study's schedule: 10 epochs, lr drop after 8, seed 42, every epoch evaluated.
    args = var.parse_args([])
    for name in var.VARIANTS:
        cmd = var.train_command(name, args)
        assert cmd[1:] == ["-m", "ddetr_lib.train", "--config", name, "--data-root", "data/synthetic_demo",
                           "--output-dir", f"outputs/variants/{name}", "--seed", "42", "--eval-every", "1",
                           "--no-progress", "--epochs", "10", "--lr-drop", "8", "--overwrite"]
    presets = var.train_command("toy_deformable_detr", var.parse_args(["--epochs", "0"]))
    assert "--epochs" not in presets and "--lr-drop" not in presets  # the presets' own 23 epochs
    short = var.parse_args(["--epochs", "3", "--set", "hidden_dim=32", "--steps-per-epoch", "4"])
    cmd = var.train_command("toy_deformable_detr_refine", short)
    assert cmd[cmd.index("--epochs") + 1] == "3" and "--lr-drop" not in cmd  # the CLI keeps the recipe's fraction
    assert cmd[cmd.index("--set") + 1] == "hidden_dim=32" and cmd[cmd.index("--steps-per-epoch") + 1] == "4"


def _curve(aps, small=0.5):
    stats = [{k: ap for k in COCO_STAT_NAMES} | {"AP_small": small * ap} for ap in aps]
    return {"epoch": list(range(1, len(aps) + 1)), "AP": aps, "train_time_s": [60.0 * (i + 1) for i in range(len(aps))],
            "coco_stats": stats, "epoch_s": 60.0, "step_ms": 500.0}


def test_final_metrics_take_the_last_epoch_and_remember_the_best(var):
    f = var.final_metrics(_curve([0.1, 0.3, 0.25]))
    assert f["AP"] == 0.25 and f["AP_small"] == 0.125 and f["AP75"] == 0.25
    assert f["best_AP"] == 0.3 and f["best_AP_epoch"] == 2 and f["epochs"] == 3
    assert f["train_time_s"] == 180.0


def test_unfinished_runs_are_compared_at_their_last_common_epoch(var):
    curves = {"a": _curve([0.1, 0.2, 0.3, 0.4]), "b": _curve([0.05, 0.15])}
    assert var.common_epoch(curves) == 2
    f = var.final_metrics(curves["a"], 2)
    assert f["AP"] == 0.2 and f["epochs"] == 2 and f["best_AP"] == 0.2 and f["train_time_s"] == 120.0
    with pytest.raises(SystemExit):
        var.common_epoch({"a": _curve([0.1]), "b": {**_curve([0.2]), "epoch": [5]}})


def test_summary_gains_and_order_against_coco(var):
    finals = {n: var.final_metrics(_curve([ap])) for n, ap in
              [("toy_deformable_detr", 0.30), ("toy_deformable_detr_single_scale", 0.20),
               ("toy_deformable_detr_refine", 0.35), ("toy_deformable_detr_refine_two_stage", 0.33)]}
    s = var.summarize(finals)
    assert s["order_by_AP"] == ["toy_deformable_detr_refine", "toy_deformable_detr_refine_two_stage",
                                "toy_deformable_detr", "toy_deformable_detr_single_scale"]
    g = s["AP_gain_over_base_points"]
    assert g["toy_deformable_detr_refine"]["toy"] == 5.0 and g["toy_deformable_detr_single_scale"]["toy"] == -10.0
    assert g["toy_deformable_detr_refine"]["coco_mmdetection"] == 1.9
    assert g["toy_deformable_detr_refine_two_stage"]["coco_official repository"] == 2.4
    assert "coco_mmdetection" not in g["toy_deformable_detr_single_scale"]  # no COCO number in the seed's table
    assert s["same_order_as_coco"] is False  # two-stage below refine here; COCO has it on top
    finals["toy_deformable_detr_refine_two_stage"] = var.final_metrics(_curve([0.4]))
    assert var.summarize(finals)["same_order_as_coco"] is True
    table = var.format_table(finals)
    assert "| + box refinement | 46.2 / 46.2 | 35.0 |" in table and "| single-scale | - | 20.0 |" in table


@pytest.mark.slow
def test_two_epoch_study_end_to_end(tmp_path):
    data = tmp_path / "data"
    generate(data, setting="demo", seed=5, num_train=8, num_val=4)
    out, work = tmp_path / "results", tmp_path / "work"
    small = ["--set", "batch_size=4", "--set", "num_queries=6", "--set", "hidden_dim=32", "--set",
             "dim_feedforward=64", "--set", "train_scales=64,72", "--set", "train_max_size=96", "--set",
             "val_size=72", "--set", "val_max_size=96"]
    env = dict(os.environ, PYTHONSAFEPATH="1")
    env.pop("PYTHONPATH", None)
    base = [sys.executable, str(SCRIPT), "--data-root", str(data), "--work-dir", str(work), "--out", str(out)]
    proc = subprocess.run([*base, "--epochs", "2", "--steps-per-epoch", "2", "--nice", "0", *small],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "variants.json").read_text())
    assert report["commands_note"] == "as run"
    for name in ("toy_deformable_detr", "toy_deformable_detr_single_scale", "toy_deformable_detr_refine",
                 "toy_deformable_detr_refine_two_stage"):
        curve, final = report["curves"][name], report["variants"][name]
        assert curve["epoch"] == [1, 2]
        logged = [json.loads(line) for line in (work / name / "log.jsonl").read_text().splitlines()]
        assert len(logged) == 2 and logged[0]["train_steps"] == 2
        # the table holds the last epoch's COCO stats, as logged by the training run
        for m in ("AP", "AP50", "AP75", "AP_small", "AP_medium"):
            assert final[m] == round(logged[-1][f"test_{m}"], 4)
        assert final["train_time_s"] == round(sum(e["train_time_s"] for e in logged), 2)
        cfg = report["configs"][name]
        assert cfg["hidden_dim"] == 32 and cfg["epochs"] == 2
        assert report["commands"][name][0] == "python" and "--steps-per-epoch" in report["commands"][name]
    flags = {n: (c["num_feature_levels"], c["with_box_refine"], c["two_stage"]) for n, c in report["configs"].items()}
    assert flags == {"toy_deformable_detr": (3, False, False), "toy_deformable_detr_single_scale": (1, False, False),
                     "toy_deformable_detr_refine": (3, True, False),
                     "toy_deformable_detr_refine_two_stage": (3, True, True)}
    assert report["coco_reference_AP"]["mmdetection"]["toy_deformable_detr_refine_two_stage"] == 47.0
    assert (out / "variants.png").stat().st_size > 20_000

    # --report-only rebuilds the same numbers from the logs alone
    (out / "variants.json").unlink()
    proc = subprocess.run([*base, "--report-only"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = json.loads((out / "variants.json").read_text())
    assert again["variants"] == report["variants"] and "| ++ two-stage | 47.0 / 46.9 |" in proc.stdout


@pytest.mark.parametrize("name, refine, two_stage", [("toy_deformable_detr_refine", True, False),
                                                      ("toy_deformable_detr_refine_two_stage", True, True)])
def test_shipped_variant_checkpoints(name, refine, two_stage):
    # What notebooks 10 and 11 load: small, weights-only, the right variant, with its COCO stats beside it.
    import torch

    from ddetr_lib import course

    path = course.checkpoint_path(name)
    assert path.stat().st_size <= 5_000_000
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model", "config", "epoch"} and ckpt["config"]["name"] == name
    model, cfg = course.load_model(name)
    assert (cfg.with_box_refine, cfg.two_stage) == (refine, two_stage)
    out = model([torch.rand(3, 96, 112)])
    assert out["pred_boxes"].shape == (1, cfg.num_queries, 4) and ("enc_outputs" in out) == two_stage
    stats = json.loads(path.with_suffix(".eval.json").read_text())
    assert list(stats) == COCO_STAT_NAMES and 0 < stats["AP"] <= 1
