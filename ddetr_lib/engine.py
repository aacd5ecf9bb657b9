"""One training epoch and COCO evaluation.

The training step is the one of the official code:

    outputs = model(images)                       # pred_logits, pred_boxes, aux_outputs, ...
    loss_dict = criterion(outputs, targets)       # one entry per loss and decoder layer
    loss = sum(loss_dict[k] * weight_dict[k])     # weighted total
    loss.backward(); clip_grad_norm_(0.1); optimizer.step()

Evaluation runs the postprocessor (boxes in absolute pixels of the original image),
gathers detections from every process and scores them with pycocotools' COCOeval.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from typing import Iterable

import torch
from tqdm.auto import tqdm

from ddetr_lib.box_ops import box_xyxy_to_xywh
from ddetr_lib.utils import all_gather_object, get_world_size, is_dist_avail_and_initialized, is_main_process

# The 12 numbers of COCOeval.summarize(), in its order.
COCO_STAT_NAMES = [
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _move_targets(targets, device):
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]


def _reduce_for_logging(loss_dict: dict) -> dict:
    """Average each (detached) loss over processes, as plain floats."""
    names = sorted(loss_dict)
    values = torch.stack([loss_dict[k].detach().float() for k in names])
    if is_dist_avail_and_initialized():
        torch.distributed.all_reduce(values)
        values /= get_world_size()
    return {k: v.item() for k, v in zip(names, values)}


def train_one_epoch(
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    data_loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    clip_max_norm: float = 0.0,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict:
    """Train for one pass over ``data_loader``; return the epoch's mean losses and speed."""
    model.train()
    criterion.train()
    weight_dict = criterion.weight_dict
    sums: dict[str, float] = {}
    n_steps, n_images = 0, 0
    total = len(data_loader) if max_steps is None else min(max_steps, len(data_loader))
    bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not (progress and is_main_process()), dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    for samples, targets in data_loader:
        samples = samples.to(device, non_blocking=True)
        targets = _move_targets(targets, device)

        outputs = model(samples)
        loss_dict = criterion(outputs, targets)
        loss = sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm if clip_max_norm > 0 else math.inf)
        optimizer.step()

        logged = _reduce_for_logging({**loss_dict, "loss": loss})
        if not math.isfinite(logged["loss"]):
            raise TrainingDiverged(f"loss is {logged['loss']} at epoch {epoch}, step {n_steps}; losses: "
                                   + ", ".join(f"{k}={v:.4g}" for k, v in logged.items() if k in weight_dict))
        logged["grad_norm"] = float(grad_norm)
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        n_steps += 1
        n_images += len(targets) * get_world_size()
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{logged['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                        img_s=f"{n_images / elapsed:.1f}", refresh=False)
        bar.update()
        if max_steps is not None and n_steps >= max_steps:
            break
    bar.close()
    elapsed = time.perf_counter() - start
    stats = {f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()}
    stats.update(train_steps=n_steps, train_time_s=elapsed, train_images_per_s=n_images / max(elapsed, 1e-9),
                 train_step_s=elapsed / max(n_steps, 1), lr=optimizer.param_groups[0]["lr"])
    return stats


@torch.no_grad()
def predict(model, postprocessor, data_loader, device, progress: bool = True, desc: str = "eval") -> dict:
    """Run the model over ``data_loader``; return ``{image_id: {"scores", "labels", "boxes"}}``
    with boxes as absolute (x0, y0, x1, y1) in the original image (CPU tensors)."""
    model.eval()
    results = {}
    for samples, targets in tqdm(data_loader, desc=desc, disable=not (progress and is_main_process()),
                                 dynamic_ncols=True, leave=False):
        samples = samples.to(device, non_blocking=True)
        outputs = model(samples)
        orig_sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
        for t, det in zip(targets, postprocessor(outputs, orig_sizes)):
            results[int(t["image_id"])] = {k: v.cpu() for k, v in det.items()}
    return results


def detections_to_coco(results: dict) -> list[dict]:
    """``{image_id: {scores, labels, boxes xyxy}}`` -> COCO result records (boxes as x, y, w, h)."""
    records = []
    for image_id, det in results.items():
        boxes = box_xyxy_to_xywh(det["boxes"])  # COCO results: (x, y, w, h)
        for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            records.append({"image_id": image_id, "category_id": int(label), "bbox": box, "score": float(score)})
    return records


def coco_evaluate(coco_gt, records: list[dict], image_ids=None, verbose: bool = False) -> list[float]:
    """Score COCO result records with pycocotools; return the 12 summary numbers."""
    from pycocotools.cocoeval import COCOeval

    if len(records) == 0:  # loadRes cannot take an empty list: nothing detected scores 0 everywhere
        return [0.0] * len(COCO_STAT_NAMES)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_dt = coco_gt.loadRes(records)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(x) for x in evaluator.stats]


def evaluate(model, postprocessor, data_loader, coco_gt, device, progress: bool = True) -> tuple[dict, dict]:
    """Predict on this process's share of the validation set, gather all shares, score them.

    Returns ``(stats, results)``: ``stats`` maps the 12 COCO names to values (-1 where
    COCO has no ground truth of that size) on every process; ``results`` holds all detections.
    """
    local = predict(model, postprocessor, data_loader, device, progress=progress)
    merged: dict = {}
    for part in all_gather_object(local):  # a DistributedSampler pads with repeats: the dict de-duplicates
        merged.update(part)
    stats = None
    if is_main_process():
        values = coco_evaluate(coco_gt, detections_to_coco(merged), image_ids=list(merged))
        stats = dict(zip(COCO_STAT_NAMES, values))
    if is_dist_avail_and_initialized():
        box = [stats]
        torch.distributed.broadcast_object_list(box, src=0)
        stats = box[0]
    return stats, merged


def format_coco_table(stats: dict) -> str:
    """The COCOeval summary as a small table."""
    rows = [
        ("AP @[.50:.95]", "AP"), ("AP @.50", "AP50"), ("AP @.75", "AP75"),
        ("AP small", "AP_small"), ("AP medium", "AP_medium"), ("AP large", "AP_large"),
        ("AR @1", "AR1"), ("AR @10", "AR10"), ("AR @100", "AR100"),
        ("AR small", "AR_small"), ("AR medium", "AR_medium"), ("AR large", "AR_large"),
    ]
    lines = ["  COCO box metric      value", "  -------------------  -----"]
    for label, key in rows:
        v = stats[key]
        lines.append(f"  {label:<19}  {'  n/a' if v < 0 else f'{v:5.3f}'}")
    return "\n".join(lines)
