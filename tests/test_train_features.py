"""Training features beyond the basic loop: gradient accumulation, mixed precision,
stopping on a signal and resuming, fine-tuning, official checkpoints, awkward data.

Each test compares against an independent reference: one big batch for accumulation,
float32 for bf16, an uninterrupted run for stop + resume, the checkpoint's own tensors
for fine-tuning, the official key lists for the checkpoint format.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _official_keys import REFERENCE, key_lines, read_reference
from ddetr_lib.config import get_config
from ddetr_lib.data.synthetic import generate
from ddetr_lib.engine import train_step
from ddetr_lib.models import build_criterion, build_model
from ddetr_lib.models.matcher import HungarianMatcher
from ddetr_lib.train import EXIT_STOPPED, main
from ddetr_lib.utils import nested_tensor_from_tensor_list

FAST = ["--config", "toy_detr", "--batch-size", "2", "--num-workers", "0", "--no-progress",
        "--set", "num_queries=8", "--set", "hidden_dim=32", "--set", "dim_feedforward=64",
        "--set", "train_scales=64,72,80", "--set", "val_size=72", "--set", "val_max_size=96"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, setting="demo", seed=5, num_train=8, num_val=4)
    return root


def _tiny_deformable(**kw):
    cfg = get_config("toy_deformable_detr", num_classes=5, hidden_dim=32, dim_feedforward=64, num_queries=10,
                     enc_layers=1, dec_layers=2, **kw)
    torch.manual_seed(0)
    return cfg, build_model(cfg), build_criterion(cfg)


def _batch(n_boxes: list[int], size=64, seed=0, dtype=torch.float32):
    """Images of one size (no padding differences between batchings) and random targets."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, size, size, generator=g, dtype=dtype) for _ in n_boxes]
    targets = []
    for n in n_boxes:
        centre = 0.2 + 0.6 * torch.rand(n, 2, generator=g)
        wh = 0.05 + 0.3 * torch.rand(n, 2, generator=g)
        targets.append({"labels": torch.randint(1, 5, (n,), generator=g),
                        "boxes": torch.cat([centre, wh], 1).to(dtype)})
    return images, targets


# --------------------------------------------------------------------------- accumulation
def test_accumulated_steps_equal_one_big_batch():
    """K=2 micro-batches of 2 images == one batch of 4 (same gradient, same clipped update)."""
    cfg, model, criterion = _tiny_deformable()
    for m in model.modules():  # batch statistics would differ between batchings (the recipe freezes them)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    images, targets = _batch([1, 0, 5, 3])
    big_model, small_model = copy.deepcopy(model), copy.deepcopy(model)
    big_opt = torch.optim.SGD(big_model.parameters(), lr=1.0)
    small_opt = torch.optim.SGD(small_model.parameters(), lr=1.0)

    big = [(nested_tensor_from_tensor_list(images), targets)]
    small = [(nested_tensor_from_tensor_list(images[:2]), targets[:2]),
             (nested_tensor_from_tensor_list(images[2:]), targets[2:])]
    terms_big, norm_big = train_step(big_model, criterion, big, big_opt, torch.device("cpu"), clip_max_norm=0.1)
    terms_small, norm_small = train_step(small_model, criterion, small, small_opt, torch.device("cpu"), clip_max_norm=0.1)

    # float32: equal up to the order of the sums
    torch.testing.assert_close(terms_small["loss"], terms_big["loss"], rtol=1e-5, atol=0)
    torch.testing.assert_close(norm_small, norm_big, rtol=1e-4, atol=0)
    assert norm_big > 0.1  # the clip was active: it must act on the accumulated gradient
    moved = 0
    for (name, a), b, p0 in zip(big_model.named_parameters(), small_model.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(a, p0)
    assert moved > 10
    # A plain mean of the two micro-batch losses (1 box vs 8 boxes) would not be the big batch's loss.
    naive = 0.5 * sum(train_step(copy.deepcopy(model), criterion, [mb], torch.optim.SGD(model.parameters(), lr=0.0),
                                 torch.device("cpu"))[0]["loss"] for mb in small)
    assert abs(float(naive) - float(terms_big["loss"])) > 1e-3


# --------------------------------------------------------------------------- mixed precision
def test_bf16_autocast_on_cpu(monkeypatch):
    """bf16: the model runs in bf16, the kernel and the loss in float32; the loss is within
    3% of float32's and a short run stays finite."""
    import ddetr_lib.models.ms_deform_attn as msda

    cfg, model, criterion = _tiny_deformable()
    images, targets = _batch([2, 3])
    samples = nested_tensor_from_tensor_list(images)
    seen = []
    real = msda.ms_deform_attn
    monkeypatch.setattr(msda, "ms_deform_attn", lambda v, *a, **k: (seen.append((v.dtype, torch.is_autocast_enabled("cpu"))), real(v, *a, **k))[1])

    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        out32 = model(samples)
        loss32 = sum(v * criterion.weight_dict[k] for k, v in criterion(out32, targets).items() if k in criterion.weight_dict)
        seen.clear()
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out16 = model(samples)
    assert out16["pred_logits"].dtype == torch.bfloat16  # autocast was on
    assert seen and all(dtype == torch.float32 and not on for dtype, on in seen)  # kernel in float32
    loss16 = sum(v * criterion.weight_dict[k] for k, v in criterion({k: v for k, v in out16.items()}, targets).items()
                 if k in criterion.weight_dict)
    assert abs(float(loss16) - float(loss32)) <= 0.03 * abs(float(loss32)), (float(loss16), float(loss32))

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(4):
        images, targets = _batch([2, 1], seed=step)
        terms, norm = train_step(model, criterion, [(nested_tensor_from_tensor_list(images), targets)], optimizer,
                                 torch.device("cpu"), clip_max_norm=0.1, amp="bf16")
        assert math.isfinite(float(terms["loss"])) and math.isfinite(float(norm))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_matcher_costs_in_float32_under_fp16():
    """fp16 logits of a confident "no": in fp16, -log(p + 1e-8) is inf (1e-8 underflows) and
    the solver fails; the matcher computes its costs in float32."""
    matcher = HungarianMatcher(cost_class=2, cost_bbox=5, cost_giou=2, focal_loss=True)
    logits = torch.full((1, 3, 4), -30.0, dtype=torch.float16)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1], [0.7, 0.7, 0.2, 0.3]]], dtype=torch.float16)
    targets = [{"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.7, 0.7, 0.2, 0.3]])}]
    (i, j), = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets)
    assert sorted(zip(i.tolist(), j.tolist())) == [(1, 0), (2, 1)]


# --------------------------------------------------------------------------- stop and resume
def _run_with_sigterm_after(args, metrics_path: Path, lines: int, capsys):
    """Run main(args) in this process; send SIGTERM once metrics.jsonl has ``lines`` lines."""
    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if metrics_path.exists() and len(metrics_path.read_text().splitlines()) >= lines:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.005)

    previous = signal.signal(signal.SIGTERM, lambda *a: None)  # a late signal must not kill pytest
    try:
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        rc = main(args)
        watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return rc


def test_sigterm_checkpoint_and_resume_equal_an_uninterrupted_run(data_root, tmp_path, capsys):
    args = [*FAST, "--data-root", str(data_root), "--epochs", "2", "--lr-drop", "10", "--log-every", "1",
            "--eval-every", "5"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main([*args, "--output-dir", str(full)]) == 0
    capsys.readouterr()

    rc = _run_with_sigterm_after([*args, "--output-dir", str(part)], part / "metrics.jsonl", 1, capsys)
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == EXIT_STOPPED
    assert out[-1].startswith("SIGTERM: stopped at ") and f"--resume {part / 'checkpoint.pth'}" in out[-1]
    ckpt = torch.load(part / "checkpoint.pth", weights_only=True)
    done = (ckpt["epoch"] + 1) * 4 + ckpt["iter"]  # 8 images / batch 2 = 4 steps per epoch
    assert 1 <= done < 8, "the signal came too late to test anything"
    assert not list(part.glob("*.tmp"))

    assert main([*args, "--output-dir", str(part), "--resume", str(part / "checkpoint.pth")]) == 0
    assert "resumed model: AP" in capsys.readouterr().out  # evaluated right after resuming
    a = torch.load(full / "checkpoint.pth", weights_only=True)
    b = torch.load(part / "checkpoint.pth", weights_only=True)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key

    # metrics.jsonl: every step once, the same losses as the uninterrupted run
    rows_full = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    rows_part = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_part] == [r["step"] for r in rows_full] == list(range(1, 9))
    assert [r["loss"] for r in rows_part] == [r["loss"] for r in rows_full]
    for row in rows_full:
        assert {"step", "epoch", "iter", "iters_per_epoch", "lr", "loss", "loss_ce", "loss_bbox", "loss_giou",
                "sec_per_step", "images_per_s", "time"} <= set(row)
        assert row["iters_per_epoch"] == 4 and row["step"] == row["epoch"] * 4 + row["iter"]
        weighted = [v for k, v in row.items() if k.startswith("loss_")]
        assert len(weighted) == 6  # 3 terms x (last layer + 1 auxiliary layer)
        assert sum(weighted) == pytest.approx(row["loss"], rel=1e-5)
        assert row["sec_per_step"] > 0 and row["images_per_s"] > 0 and abs(row["time"] - time.time()) < 3600
    log = [json.loads(x) for x in (part / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]


def test_resume_honours_lr_drop_and_keeps_periodic_checkpoints(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*FAST, "--data-root", str(data_root), "--output-dir", str(out), "--steps-per-epoch", "1",
            "--eval-every", "5", "--log-every", "0", "--checkpoint-every", "2"]
    assert main([*args, "--epochs", "1", "--lr-drop", "10"]) == 0
    assert not (out / "metrics.jsonl").exists()
    capsys.readouterr()
    assert main([*args, "--epochs", "3", "--lr-drop", "1", "--resume", str(out / "checkpoint.pth")]) == 0
    text = capsys.readouterr().out
    assert "--lr-drop 1 replaces the checkpoint's 10" in text
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    base = get_config("toy_detr").lr
    assert [e["epoch"] for e in log] == [0, 1, 2]
    assert [e["lr"] for e in log] == pytest.approx([base, base * 0.1, base * 0.01])  # the lr each epoch trained with
    # every 2 epochs (epoch 1) and before each lr drop (lr_drop 1: every epoch after resuming)
    assert sorted(p.name for p in out.glob("checkpoint0*.pth")) == ["checkpoint0001.pth", "checkpoint0002.pth"]


# --------------------------------------------------------------------------- fine-tuning and awkward data
def _awkward_coco(root: Path) -> Path:
    """COCO layout with category ids 3, 17, 40 (gaps), crowd boxes, grayscale and RGBA
    images, images of several sizes and images without annotations, in train and val."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        folder = root / f"{split}2017"
        folder.mkdir(parents=True)
        images, anns = [], []
        for i in range(n):
            w, h = (72, 56) if i % 2 else (60, 80)
            mode = ("L", "RGB", "RGBA")[i % 3]
            arr = rng.integers(0, 255, size=(h, w) if mode == "L" else (h, w, len(mode)), dtype=np.uint8)
            name = f"{i:03d}.png"
            Image.fromarray(arr, mode=mode).save(folder / name)
            images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
            if i % 3 == 2:
                continue  # no annotations
            for k, cat in enumerate((3, 17, 40)[: 1 + i % 3]):
                anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                             "bbox": [5 + 10 * k, 6 + 5 * k, 20, 15], "area": 300.0})
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 17, "iscrowd": 1,
                         "bbox": [0, 0, 30, 30], "area": 900.0, "segmentation": {"counts": [0, 900], "size": [h, w]}})
        cats = [{"id": c, "name": f"class{c}"} for c in (3, 17, 40)]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def test_finetune_on_awkward_data(data_root, tmp_path, capsys):
    """Pretrain on the synthetic set (5 logits), fine-tune on a set with 41 logits: the class
    head is re-initialised, every other parameter starts from the checkpoint."""
    pre = tmp_path / "pre"
    assert main([*FAST, "--data-root", str(data_root), "--output-dir", str(pre), "--epochs", "1",
                 "--steps-per-epoch", "1", "--log-every", "0"]) == 0
    awkward = _awkward_coco(tmp_path / "awkward")
    out = tmp_path / "ft"
    capsys.readouterr()
    # lr 0: the run trains through all the awkward images, yet leaves the weights as loaded
    assert main([*FAST, "--data-root", str(awkward), "--output-dir", str(out), "--epochs", "1",
                 "--finetune-from", str(pre / "checkpoint.pth"), "--set", "lr=0", "--set", "lr_backbone=0"]) == 0
    text = capsys.readouterr().out
    assert "fine-tuning from" in text and "re-initialised 2 class-head tensors" in text and "6 -> 42" in text
    before = torch.load(pre / "checkpoint.pth", weights_only=True)["model"]
    after = torch.load(out / "checkpoint.pth", weights_only=True)
    assert after["config"]["num_classes"] == 41  # largest id 40 + 1
    model = build_model(get_config("toy_detr", **{k: v for k, v in after["config"].items() if k != "name"}))
    params = {name for name, _ in model.named_parameters()}
    for key, value in after["model"].items():
        if key.startswith("class_embed"):
            assert value.shape[0] == 42  # 41 classes + "no object"
        elif key in params:
            assert torch.equal(value, before[key]), key
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert log[0]["train_steps"] == 3 and math.isfinite(log[0]["train_loss"])


# --------------------------------------------------------------------------- official checkpoints
def test_eval_only_with_an_official_checkpoint_file(data_root, tmp_path, capsys):
    """A file in the official format ({"model", "optimizer", "lr_scheduler", "epoch",
    "args": Namespace}) with random weights: --eval-only --resume prints the COCO table."""
    from ddetr_lib.optim import build_optimizer

    cfg = get_config("deformable_detr_r50", pretrained_backbone=False, num_classes=91)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert key_lines(model.state_dict()) == read_reference(REFERENCE / "official_keys_base.txt")
    optimizer = build_optimizer(model, cfg)
    official = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 40).state_dict(), "epoch": 49,
                "args": argparse.Namespace(lr=2e-4, batch_size=2, num_classes=91, dataset_file="coco")}
    path = tmp_path / "r50_deformable_detr-checkpoint.pth"
    torch.save(official, path)
    out = tmp_path / "eval"
    assert main(["--config", "deformable_detr_r50", "--data-root", str(data_root), "--output-dir", str(out),
                 "--eval-only", "--resume", str(path), "--num-classes", "91", "--no-pretrained-backbone",
                 "--batch-size", "2", "--num-workers", "0", "--no-progress",
                 "--set", "val_size=64", "--set", "val_max_size=96"]) == 0
    text = capsys.readouterr().out
    assert "COCO box metric" in text and "AP @[.50:.95]" in text
    assert len(json.loads((out / "eval.json").read_text())) == 12


# --------------------------------------------------------------------------- backbone weights from a file
def test_backbone_weights_from_a_file(tmp_path):
    """--backbone-weights: a torchvision ResNet state dict file (fc included, as torchvision
    saves it) goes into the backbone; the recipe's frozen stem and layer1 stay frozen."""
    import torchvision

    from ddetr_lib.train import build_model_once

    torch.manual_seed(3)
    resnet = torchvision.models.resnet18(weights=None, norm_layer=torchvision.ops.FrozenBatchNorm2d)
    with torch.no_grad():
        for p in resnet.parameters():
            p.add_(0.5)  # unlike any fresh initialisation
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(resnet.state_dict(), path)
    cfg = get_config("deformable_detr_r50", backbone="resnet18", pretrained_backbone=True, num_classes=5,
                     enc_layers=1, dec_layers=1)
    model = build_model_once(cfg, argparse.Namespace(backbone_weights=path), torch.device("cpu"))
    body = model.backbone[0].body
    for name, value in body.state_dict().items():
        assert torch.equal(value, resnet.state_dict()[name]), name
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    # weights of another network are refused with a clear message
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(SystemExit, match="does not fit"):
        build_model_once(cfg, argparse.Namespace(backbone_weights=path), torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_amp_steps_on_the_gpu(amp):
    """fp16 with a GradScaler and bf16 on the GPU: the kernel runs in float32, a few steps stay finite
    and the first loss is within 3% of float32's."""
    cfg, model, criterion = _tiny_deformable()
    device = torch.device("cuda")
    model.to(device)
    images, targets = _batch([2, 3])
    samples = nested_tensor_from_tensor_list(images).to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    with torch.no_grad():
        model.eval()
        ref = criterion(model(samples), targets)
        with torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16):
            low = model(samples)
        low = criterion({k: v for k, v in low.items()}, targets)
    total = lambda d: float(sum(v * criterion.weight_dict[k] for k, v in d.items() if k in criterion.weight_dict))
    assert abs(total(low) - total(ref)) <= 0.03 * abs(total(ref))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    for step in range(4):
        images, targets = _batch([2, 1], seed=step)
        batch = [(nested_tensor_from_tensor_list(images), targets)]
        terms, norm = train_step(model, criterion, batch, optimizer, device, clip_max_norm=0.1, amp=amp, scaler=scaler)
        assert math.isfinite(float(terms["loss"]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
