"""benchmarks/convergence.py: log parsing, the equal-epoch / equal-wall-clock summary
(checked on hand-made curves) and a two-epoch smoke run of the whole study."""
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

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "convergence.py"


@pytest.fixture(scope="module")
def conv():
    spec = importlib.util.spec_from_file_location("convergence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(epoch, train_time_s, ap=None):
    e = {"epoch": epoch, "train_loss": 10.0 - epoch, "train_time_s": train_time_s, "train_step_s": train_time_s / 10}
    if ap is not None:
        e.update({f"test_{k}": ap for k in COCO_STAT_NAMES})
        e["test_AP50"], e["test_AP_small"] = 2 * ap, ap / 2
    return e


def test_read_curve_sums_training_time_over_all_epochs(conv, tmp_path):
    log = tmp_path / "log.jsonl"
    # epoch 1 was not evaluated: its time still counts towards the wall-clock of epoch 2
    log.write_text("\n".join(json.dumps(e) for e in [_entry(0, 10.0, 0.1), _entry(1, 12.0), _entry(2, 14.0, 0.3)]))
    curve = conv.read_curve(log)
    assert curve["epoch"] == [1, 3]
    assert curve["train_time_s"] == [10.0, 36.0]
    assert curve["AP"] == [0.1, 0.3] and curve["AP50"] == [0.2, 0.6] and curve["AP_small"] == [0.05, 0.15]
    assert curve["loss"] == [10.0, 8.0]
    assert curve["coco_stats"][1]["AR100"] == 0.3
    assert curve["epoch_s"] == 12.0  # 36 s over 3 epochs
    assert curve["step_ms"] == 1200.0  # mean of 1.0, 1.2 and 1.4 s


def test_summary_equal_epochs_and_equal_wall_clock(conv):
    detr = {"epoch": [1, 2, 3, 4], "train_time_s": [10, 20, 30, 40],
            "AP": [0.0, 0.01, 0.02, 0.05], "AP50": [0.0, 0.02, 0.06, 0.1], "AP_small": [0, 0, 0.01, 0.01]}
    deform = {"epoch": [1, 2, 3, 4], "train_time_s": [25, 50, 75, 100],
              "AP": [0.05, 0.1, 0.2, 0.3], "AP50": [0.1, 0.3, 0.4, 0.5], "AP_small": [0, 0.05, 0.1, 0.2]}
    s = conv.summarize({"toy_detr": detr, "toy_deformable_detr": deform})
    eq = s["equal_epochs"]
    assert eq["epoch"] == 4
    assert eq["toy_detr"] == {"AP": 0.05, "AP50": 0.1, "AP_small": 0.01}
    assert eq["AP_ratio_deformable_over_detr"] == 6.0
    wc = s["equal_wall_clock"]
    # DETR is done after 40 s; by then Deformable DETR had finished epoch 1 only (25 s)
    assert wc["train_time_s"] == 40
    assert wc["toy_detr"] == {"AP": 0.05, "AP50": 0.1, "AP_small": 0.01, "epoch": 4}
    assert wc["toy_deformable_detr"] == {"AP": 0.05, "AP50": 0.1, "AP_small": 0, "epoch": 1}
    assert s["first_epoch_AP50_over_0.05"] == {"toy_detr": 3, "toy_deformable_detr": 1}
    # one model missing: no comparison to make
    assert conv.summarize({"toy_detr": detr}) == {}


@pytest.mark.slow
def test_two_epoch_study_end_to_end(tmp_path):
    data = tmp_path / "data"
    generate(data, setting="default", seed=5, num_train=8, num_val=4)
    out, work = tmp_path / "results", tmp_path / "work"
    small = ["--set", "batch_size=4", "--set", "num_queries=8", "--set", "hidden_dim=32", "--set", "dim_feedforward=64",
             "--set", "train_scales=64,72", "--set", "train_max_size=96", "--set", "val_size=72",
             "--set", "val_max_size=96"]
    env = dict(os.environ, PYTHONSAFEPATH="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data-root", str(data), "--work-dir", str(work),
                           "--out", str(out), "--epochs", "2", "--steps-per-epoch", "2", *small],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "convergence.json").read_text())
    for name in ("toy_detr", "toy_deformable_detr"):
        curve = report["models"][name]
        assert curve["epoch"] == [1, 2]
        times = [json.loads(line)["train_time_s"] for line in (work / name / "log.jsonl").read_text().splitlines()]
        assert min(times) > 0 and curve["train_time_s"] == [round(times[0], 2), round(sum(times), 2)]
        assert all(0 <= v <= 1 for m in ("AP", "AP50", "AP_small") for v in curve[m] if v >= 0)
        # extra overrides win over the study's own (they come later on the command line)
        cfg = json.loads((work / name / "config.json").read_text())
        assert cfg["num_queries"] == 8 and cfg["train_scales"] == [64, 72] and cfg["epochs"] == 2
        assert report["commands"][name][report["commands"][name].index("--lr-drop") + 1] == "2"  # round(0.8 * 2)
        logged = (work / name / "log.jsonl").read_text().splitlines()
        assert len(logged) == 2 and json.loads(logged[0])["train_steps"] == 2
    assert report["summary"]["equal_epochs"]["epoch"] == 2
    assert (out / "convergence.png").stat().st_size > 20_000
