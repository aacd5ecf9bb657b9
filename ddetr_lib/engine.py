"""One training epoch and COCO evaluation.

The training step is the one of the official code:

    outputs = model(images)                       # pred_logits, pred_boxes, aux_outputs, ...
    loss_dict = criterion(outputs, targets)       # one entry per loss and decoder layer
    loss = sum(loss_dict[k] * weight_dict[k])     # weighted total
    loss.backward(); clip_grad_norm_(0.1); optimizer.step()

Additions: ``--accumulate K`` (one optimizer step over K batches, weighted so that the
loss is that of one batch of all of them), ``--amp`` (the model under ``torch.autocast``;
loss and matching in float32), a per-step ``metrics.jsonl`` (:class:`MetricsWriter`) and a
stop flag checked after every step (SIGTERM / SIGINT, agreed over all processes).

Evaluation runs the postprocessor (boxes in absolute pixels of the original image),
gathers detections from every process and scores them with pycocotools' COCOeval.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import time
from typing import Callable, Iterable

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


class StopRequested(Exception):
    """Raised by :func:`predict` when a stop was requested (SIGTERM / SIGINT) during evaluation."""


def _move_targets(targets, device):
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]


def _float32(outputs):
    """The model's outputs (nested dicts / lists of tensors) in float32: under autocast the
    loss and the Hungarian matching's cost matrix are computed in float32 (in fp16 the
    costs can overflow to inf and the assignment solver then fails)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.to(torch.promote_types(outputs.dtype, torch.float32)) if outputs.is_floating_point() else outputs
    if isinstance(outputs, dict):
        return {k: _float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_float32(v) for v in outputs)
    return outputs


def _sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    if is_dist_avail_and_initialized():
        values = values.clone()
        torch.distributed.all_reduce(values)
    return values


def _box_counts(micro_batches, device) -> list[float]:
    """Per micro-batch, the loss normaliser the criterion uses: boxes per process, at least 1."""
    counts = torch.tensor([float(sum(len(t["labels"]) for t in targets)) for _, targets in micro_batches], device=device)
    counts = _sum_over_processes(counts) / get_world_size()
    return counts.tolist()


def autocast_context(device: torch.device, amp: str | None):
    """``torch.autocast`` for ``amp`` = "bf16" / "fp16", or a no-op context for None."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train_step(model, criterion, micro_batches, optimizer, device, clip_max_norm: float = 0.0,
               amp: str | None = None, scaler=None) -> tuple[dict, float]:
    """One optimizer step over one or more micro-batches (gradient accumulation).

    ``micro_batches``: a list of K ``(samples, targets)``. The K losses are added with the
    weights ``n_k / N`` (``n_k`` the boxes of micro-batch k, ``N`` of all K, each at least 1):
    the criterion divides each micro-batch's loss by its own box count, so this sum is the
    loss of one batch of all K micro-batches together (exactly, for the box losses and the
    focal class loss; DETR's softmax class loss is a mean over queries, weighted by boxes here).
    Gradients are clipped once, after the last micro-batch, and the optimizer steps once.

    Returns ``(terms, grad_norm)``: each loss-dict entry and the weighted total ``loss``
    of the whole step as a detached tensor (not yet averaged over processes).
    """
    weight_dict = criterion.weight_dict
    counts = _box_counts(micro_batches, device) if len(micro_batches) > 1 else [1.0]
    total = max(sum(counts), 1.0)
    terms: dict[str, torch.Tensor] = {}
    optimizer.zero_grad(set_to_none=True)
    for k, (samples, targets) in enumerate(micro_batches):
        samples = samples.to(device, non_blocking=True)
        targets = _move_targets(targets, device)
        share = counts[k] / total if len(micro_batches) > 1 else 1.0
        last = k == len(micro_batches) - 1
        # DDP: all-reduce the gradients only once, after the last micro-batch
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_context(device, amp):
                outputs = model(samples)
            loss_dict = criterion(_float32(outputs), targets)  # float32, outside autocast
            loss = sum(loss_dict[n] * weight_dict[n] for n in loss_dict if n in weight_dict)
            (scaler.scale(loss * share) if scaler is not None else loss * share).backward()
        for name, value in {**loss_dict, "loss": loss}.items():
            terms[name] = terms.get(name, 0.0) + value.detach() * share
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm if clip_max_norm > 0 else math.inf)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the fp16 gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    return terms, grad_norm


class MetricsWriter:
    """Appends one JSON line per ``every`` training steps to ``metrics.jsonl`` and flushes
    it, so a notebook (or ``tail -f``) can follow a run while it goes.

    Each line holds the means over the steps since the previous line: ``step`` (global
    optimizer step, counted from 1), ``epoch``, ``iter`` (step within the epoch, from 1),
    ``iters_per_epoch``, ``lr``, ``loss`` (the weighted total), each weighted loss term
    by name (``loss_ce``, ``loss_bbox_0``, ...: term x weight, they add up to ``loss``),
    ``sec_per_step``, ``images_per_s`` (all processes), ``time`` (unix seconds).
    """

    def __init__(self, path, every: int = 10):
        if every < 1:
            raise ValueError(f"every: expected >= 1, got {every}")
        self.path, self.every = path, every
        self.file = open(path, "a", buffering=1)  # line-buffered
        self._reset()

    def _reset(self):
        self.sums: dict[str, float] = {}
        self.n_steps, self.n_images, self.t0 = 0, 0, time.perf_counter()

    def add(self, weighted: dict, n_images: int, **position) -> None:
        """One step: ``weighted`` (name -> float, incl. ``loss``), images in the step, and
        ``step``, ``epoch``, ``iter``, ``iters_per_epoch``, ``lr``."""
        for k, v in weighted.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n_steps += 1
        self.n_images += n_images
        if self.n_steps >= self.every or position["iter"] == position["iters_per_epoch"]:
            self.flush_line(position)

    def flush_line(self, position: dict) -> None:
        if self.n_steps == 0:
            return
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        record = {**position, **{k: v / self.n_steps for k, v in self.sums.items()},
                  "sec_per_step": elapsed / self.n_steps, "images_per_s": self.n_images / elapsed, "time": time.time()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        self._reset()

    def close(self) -> None:
        self.file.close()


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
    *,
    accumulate: int = 1,
    amp: str | None = None,
    scaler=None,
    metrics: MetricsWriter | None = None,
    start_iter: int = 0,
    iters_per_epoch: int | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Train for one pass over ``data_loader``; return the epoch's mean losses and speed.

    One step = ``accumulate`` batches of the loader (see :func:`train_step`); a remainder of
    fewer batches at the end of the epoch is not used. ``start_iter``: steps of this epoch
    already done before (a run resumed mid-epoch; the loader then starts after them) and
    ``iters_per_epoch`` the full epoch's steps (for the logs). ``stop()``: checked after
    every step (agreed over all processes); when true the epoch ends early and the returned
    stats have ``stopped: True``.
    """
    model.train()
    criterion.train()
    weight_dict = criterion.weight_dict
    sums: dict[str, float] = {}
    n_steps, n_images = 0, 0
    available = len(data_loader) // accumulate
    total = available if max_steps is None else min(max(max_steps - start_iter, 0), available)
    iters_per_epoch = iters_per_epoch or start_iter + total
    bar = tqdm(total=total, desc=f"epoch {epoch}", disable=not (progress and is_main_process()), dynamic_ncols=True, leave=False)
    start = time.perf_counter()
    stopped = False
    batches = iter(data_loader)
    for _ in range(total):
        micro_batches = [next(batches) for _ in range(accumulate)]
        terms, grad_norm = train_step(model, criterion, micro_batches, optimizer, device, clip_max_norm, amp, scaler)

        # one all-reduce per step: the losses for the logs, and the stop flag (any process)
        names = sorted(terms)
        local_stop = float(stop is not None and stop())
        values = _sum_over_processes(torch.stack([terms[k] for k in names] + [torch.tensor(local_stop, device=device)]))
        values = values.tolist()
        stopped = values[-1] > 0
        logged = {k: v / get_world_size() for k, v in zip(names, values[:-1])}
        if not math.isfinite(logged["loss"]):
            raise TrainingDiverged(f"loss is {logged['loss']} at epoch {epoch}, step {start_iter + n_steps}; losses: "
                                   + ", ".join(f"{k}={v:.4g}" for k, v in logged.items() if k in weight_dict))
        logged["grad_norm"] = float(grad_norm)
        for k, v in logged.items():
            sums[k] = sums.get(k, 0.0) + v
        n_steps += 1
        step_images = sum(len(t) for _, t in micro_batches) * get_world_size()
        n_images += step_images
        lr = optimizer.param_groups[0]["lr"]
        if metrics is not None:
            weighted = {k: logged[k] * weight_dict[k] for k in names if k in weight_dict}
            metrics.add({"loss": logged["loss"], **weighted}, step_images, step=epoch * iters_per_epoch + start_iter + n_steps,
                        epoch=epoch, iter=start_iter + n_steps, iters_per_epoch=iters_per_epoch, lr=lr)
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{logged['loss']:.3f}", lr=f"{lr:.1e}", img_s=f"{n_images / elapsed:.1f}", refresh=False)
        bar.update()
        if stopped:
            break
    bar.close()
    if metrics is not None:
        metrics.flush_line({"step": epoch * iters_per_epoch + start_iter + n_steps, "epoch": epoch,
                            "iter": start_iter + n_steps, "iters_per_epoch": iters_per_epoch,
                            "lr": optimizer.param_groups[0]["lr"]})
    elapsed = time.perf_counter() - start
    stats = {f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()}
    stats.update(train_steps=n_steps, train_time_s=elapsed, train_images_per_s=n_images / max(elapsed, 1e-9),
                 train_step_s=elapsed / max(n_steps, 1), lr=optimizer.param_groups[0]["lr"], stopped=stopped)
    return stats


def stop_agreed(stop: Callable[[], bool] | None, device) -> bool:
    """True on every process when ``stop()`` is true on any of them."""
    local = float(stop is not None and stop())
    if not is_dist_avail_and_initialized():
        return local > 0
    return _sum_over_processes(torch.tensor([local], device=device)).item() > 0


@torch.no_grad()
def predict(model, postprocessor, data_loader, device, progress: bool = True, desc: str = "eval",
            amp: str | None = None, stop: Callable[[], bool] | None = None) -> dict:
    """Run the model over ``data_loader``; return ``{image_id: {"scores", "labels", "boxes"}}``
    with boxes as absolute (x0, y0, x1, y1) in the original image (CPU tensors).

    ``stop()`` is checked (over all processes) before every batch; when true,
    :class:`StopRequested` is raised."""
    model.eval()
    results = {}
    for samples, targets in tqdm(data_loader, desc=desc, disable=not (progress and is_main_process()),
                                 dynamic_ncols=True, leave=False):
        if stop is not None and stop_agreed(stop, device):
            raise StopRequested("stop requested during evaluation")
        samples = samples.to(device, non_blocking=True)
        with autocast_context(device, amp):
            outputs = _float32(model(samples))
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


def evaluate(model, postprocessor, data_loader, coco_gt, device, progress: bool = True,
             amp: str | None = None, stop: Callable[[], bool] | None = None) -> tuple[dict, dict]:
    """Predict on this process's share of the validation set, gather all shares, score them.

    Returns ``(stats, results)``: ``stats`` maps the 12 COCO names to values (-1 where
    COCO has no ground truth of that size) on every process; ``results`` holds all detections.
    """
    local = predict(model, postprocessor, data_loader, device, progress=progress, amp=amp, stop=stop)
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
