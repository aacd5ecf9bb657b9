"""The training command end to end, on a tiny synthetic dataset.

Covers: train + eval through the CLI, the files it writes, resume exactness
(2 epochs == 1 epoch + resume 1), --eval-only, a 2-process torchrun run on CPU
(gloo), and one-line errors for broken data.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from ddetr_lib.data.synthetic import generate
from ddetr_lib.engine import COCO_STAT_NAMES, coco_evaluate
from ddetr_lib.train import main

pytestmark = pytest.mark.slow

# Small and fast: 3 steps per epoch of batch 4, 8 queries.
FAST = ["--config", "toy_detr", "--batch-size", "4", "--num-workers", "0", "--no-progress",
        "--set", "num_queries=8", "--set", "hidden_dim=32", "--set", "dim_feedforward=64",
        "--set", "train_scales=64,72,80", "--set", "val_size=72", "--set", "val_max_size=96",
        "--set", "crop_min=48", "--set", "crop_max=64", "--set", "crop_resize_choices=64,72"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, setting="demo", seed=3, num_train=12, num_val=6)
    return root


def _env():
    env = dict(os.environ, PYTHONSAFEPATH="1", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    return env


def test_train_and_eval_through_the_cli(data_root, tmp_path):
    out = tmp_path / "run"
    assert main([*FAST, "--data-root", str(data_root), "--output-dir", str(out), "--epochs", "2"]) == 0

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]
    assert all(math.isfinite(e["train_loss"]) and e["train_steps"] == 3 for e in log)
    assert all(len(e["test_coco_eval_bbox"]) == 12 for e in log)

    stats = json.loads((out / "eval.json").read_text())
    assert list(stats) == COCO_STAT_NAMES
    assert stats == {k: log[-1][f"test_{k}"] for k in COCO_STAT_NAMES}

    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "lr_scheduler", "config", "rng"} <= set(ckpt)
    # --num-classes defaults to the largest training category id + 1
    ann = json.loads((data_root / "annotations" / "instances_train2017.json").read_text())
    assert ckpt["config"]["num_classes"] == max(c["id"] for c in ann["categories"]) + 1
    assert (out / "predictions.png").stat().st_size > 10_000

    # an existing run is not silently overwritten
    with pytest.raises(SystemExit, match="--resume"):
        main([*FAST, "--data-root", str(data_root), "--output-dir", str(out), "--epochs", "2"])

    # --eval-only from the checkpoint reproduces the last evaluation
    out2 = tmp_path / "eval"
    assert main([*FAST, "--data-root", str(data_root), "--output-dir", str(out2), "--eval-only",
                 "--resume", str(out / "checkpoint.pth")]) == 0
    assert json.loads((out2 / "eval.json").read_text()) == stats


def test_resume_is_exact(data_root, tmp_path):
    # the same lr schedule in both runs (by default it scales with --epochs)
    args = [*FAST, "--data-root", str(data_root), "--num-workers", "1", "--lr-drop", "10"]
    full, half = tmp_path / "full", tmp_path / "half"
    assert main([*args, "--output-dir", str(full), "--epochs", "2", "--eval-every", "5"]) == 0
    assert main([*args, "--output-dir", str(half), "--epochs", "1"]) == 0
    assert main([*args, "--output-dir", str(half), "--epochs", "2", "--eval-every", "5",
                 "--resume", str(half / "checkpoint.pth")]) == 0
    a = torch.load(full / "checkpoint.pth", weights_only=True)
    b = torch.load(half / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        assert torch.equal(va["exp_avg"], vb["exp_avg"])
    log_full = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    log_half = [json.loads(x) for x in (half / "log.jsonl").read_text().splitlines()]
    assert [e["train_loss"] for e in log_full] == [e["train_loss"] for e in log_half]


def test_torchrun_two_processes_on_cpu(data_root, tmp_path):
    out = tmp_path / "ddp"
    # `python -m torch.distributed.run` is torchrun (the script may not be on this venv's PATH)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddetr_lib.train",
           *FAST, "--data-root", str(data_root), "--output-dir", str(out), "--epochs", "1"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1  # only rank 0 writes
    # 12 images, 2 processes x batch 4 -> 1 full step per process
    assert log[0]["train_steps"] == 12 // (2 * 4)
    assert proc.stdout.count("epoch 0:") == 1
    stats = json.loads((out / "eval.json").read_text())
    assert list(stats) == COCO_STAT_NAMES


def test_coco_evaluate_perfect_and_empty(data_root):
    from pycocotools.coco import COCO
    import contextlib, io

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data_root / "annotations" / "instances_val2017.json"))
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt.dataset["annotations"]]
    stats = coco_evaluate(gt, perfect)
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0)
    assert coco_evaluate(gt, []) == [0.0] * 12


def _cli(data_root, tmp_path):
    cmd = [sys.executable, "-m", "ddetr_lib.train", *FAST, "--data-root", str(data_root),
           "--output-dir", str(tmp_path / "out"), "--epochs", "1"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)


def _copy(data_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    return root


def test_missing_image_is_a_one_line_error(data_root, tmp_path):
    root = _copy(data_root, tmp_path)
    victim = sorted((root / "train2017").iterdir())[0]
    victim.unlink()
    proc = _cli(root, tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and victim.name in err[0] and "Traceback" not in proc.stderr


def test_broken_annotation_file_is_a_one_line_error(data_root, tmp_path):
    root = _copy(data_root, tmp_path)
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text(ann.read_text()[:200])
    proc = _cli(root, tmp_path)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "instances_train2017.json" in err[0] and "Traceback" not in proc.stderr


def test_ground_truth_through_the_whole_eval_path_scores_one(data_root):
    """Targets from the val loader, written as DETR outputs (one-hot logits) and sent through
    PostProcess + COCOeval, must score AP 1: the box conventions of the data pipeline
    (normalised cx,cy,w,h of the resized image) and of the evaluation (absolute xyxy of
    the original image) agree."""
    from ddetr_lib.config import get_config
    from ddetr_lib.data import build_dataset
    from ddetr_lib.engine import detections_to_coco
    from ddetr_lib.models import build_postprocessor
    from ddetr_lib.train import make_loader

    cfg = get_config("toy_detr", num_classes=5, batch_size=3, num_workers=0)
    dataset = build_dataset("val", data_root, cfg)
    post = build_postprocessor(cfg)
    results = {}
    for samples, targets in make_loader(dataset, cfg, train=False, seed=0):
        q = max(len(t["labels"]) for t in targets) + 2
        logits = torch.full((len(targets), q, cfg.num_classes + 1), -20.0)
        logits[:, :, -1] = 20.0  # unused queries: "no object"
        boxes = torch.full((len(targets), q, 4), 0.5)
        for b, t in enumerate(targets):
            n = len(t["labels"])
            logits[b, :n, -1] = -20.0
            logits[b, torch.arange(n), t["labels"]] = 20.0
            boxes[b, :n] = t["boxes"]
        sizes = torch.stack([t["orig_size"] for t in targets])
        for t, det in zip(targets, post({"pred_logits": logits, "pred_boxes": boxes}, sizes)):
            results[int(t["image_id"])] = det
    stats = coco_evaluate(dataset.coco, detections_to_coco(results))
    assert stats[0] > 0.99 and stats[1] > 0.99
