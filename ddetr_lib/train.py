"""Train and evaluate DETR / Deformable DETR on a COCO-format dataset.

One process (CPU or one GPU):

    python -m ddetr_lib.train --config toy_detr --data-root data/synthetic_demo --output-dir outputs/toy

Many GPUs, one or several nodes (the same flags; DDP with nccl on GPU, gloo on CPU):

    torchrun --nproc_per_node=8 -m ddetr_lib.train --config deformable_detr_r50 --data-root data/coco

Writes to ``--output-dir``: ``log.jsonl`` (one JSON object per epoch), ``metrics.jsonl``
(one line every ``--log-every`` steps: losses, lr, speed), ``checkpoint.pth`` (model,
optimizer, scheduler, epoch, RNG state; loadable with ``weights_only=True``), every
``--checkpoint-every`` epochs and before the lr drop also ``checkpointNNNN.pth``,
``eval.json`` (the 12 COCO box stats of the last evaluation) and ``predictions.png``.

SIGTERM or SIGINT (Ctrl-C; a second one aborts at once): the run finishes its step,
writes ``checkpoint.pth`` and exits with code 75 ("stopped, resume me"); continue with
``--resume OUTPUT_DIR/checkpoint.pth``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ddetr_lib.config import PRESETS, get_config, parse_override
from ddetr_lib.engine import (
    AMP_DTYPES,
    COCO_STAT_NAMES,
    MetricsWriter,
    StopRequested,
    TrainingDiverged,
    evaluate,
    format_coco_table,
    stop_agreed,
    train_one_epoch,
)
from ddetr_lib.optim import build_optimizer, build_scheduler
from ddetr_lib.utils import get_rank, get_world_size, is_main_process

CHECKPOINT_NAME = "checkpoint.pth"
EXIT_STOPPED = 75  # sysexits' EX_TEMPFAIL: stopped by a signal, checkpoint written, resume to continue


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ddetr_lib.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, choices=sorted(PRESETS), help="preset name (ddetr_lib.config)")
    p.add_argument("--data-root", required=True, type=Path,
                   help="COCO layout: train2017/, val2017/, annotations/instances_{train,val}2017.json")
    p.add_argument("--output-dir", type=Path, default=None, help="where logs and checkpoints go (default outputs/CONFIG)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's number of epochs")
    p.add_argument("--lr-drop", type=int, default=None, help="epoch after which the lr is multiplied by 0.1")
    p.add_argument("--batch-size", type=int, default=None, help="images per process (GPU)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None,
                   help="number of logits (default: largest category id in the training annotations + 1)")
    p.add_argument("--pretrained-backbone", dest="pretrained_backbone", action="store_true", default=None,
                   help="start the backbone from torchvision's ImageNet weights (downloaded once, by rank 0 first)")
    p.add_argument("--no-pretrained-backbone", dest="pretrained_backbone", action="store_false")
    p.add_argument("--backbone-weights", type=Path, default=None, metavar="PATH",
                   help="torchvision ResNet state dict file to start the backbone from (no download; "
                        "e.g. ~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth copied from a machine with internet)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set hidden_dim=128 --set train_scales=96,128")
    p.add_argument("--resume", type=Path, default=None,
                   help="checkpoint to continue from (ours or an official one), or to evaluate with --eval-only")
    p.add_argument("--finetune-from", type=Path, default=None, metavar="CKPT",
                   help="start from these weights (ours or official) with a fresh optimizer and schedule; "
                        "class heads are re-initialised when the class count differs")
    p.add_argument("--accumulate", type=int, default=1, metavar="K",
                   help="gradient accumulation: one optimizer step per K batches (effective batch K x batch x processes)")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None,
                   help="mixed precision (autocast; fp16 with a GradScaler); the deformable-attention kernel "
                        "and the loss / matching stay in float32")
    p.add_argument("--log-every", type=int, default=10, metavar="N",
                   help="write a line to metrics.jsonl every N steps (0: no metrics.jsonl)")
    p.add_argument("--checkpoint-every", type=int, default=5, metavar="K",
                   help="keep checkpointNNNN.pth every K epochs and before the lr drop (0: only checkpoint.pth)")
    p.add_argument("--eval-only", action="store_true", help="evaluate on val2017 and exit")
    p.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (and always after the last)")
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap on training steps per epoch (smoke runs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--overwrite", action="store_true", help="start afresh even if --output-dir holds a checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- set-up
def init_distributed(device_arg: str) -> torch.device:
    """Start torch.distributed when launched by torchrun (RANK/WORLD_SIZE set); pick the device."""
    want_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but CUDA is not available")
    distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        if distributed:  # share the cores between the processes of this node
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if distributed:
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The RNG seed of one epoch on one process: a resumed run replays exactly."""
    return seed + 100_003 * epoch + 1_009 * rank


def make_config(args: argparse.Namespace, num_classes: int):
    cfg = get_config(args.config)
    overrides = dict(parse_override(text, cfg) for text in args.overrides)
    for key in ("epochs", "lr_drop", "batch_size", "lr", "num_workers", "pretrained_backbone"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    overrides["num_classes"] = args.num_classes if args.num_classes is not None else num_classes
    cfg = cfg.replace(**overrides)
    if args.epochs is not None and args.lr_drop is None and cfg.lr_drop >= cfg.epochs:
        # keep the recipe's shape: drop the lr at the same fraction of a shortened schedule
        base = get_config(args.config)
        cfg = cfg.replace(lr_drop=max(1, round(cfg.epochs * base.lr_drop / base.epochs)))
    return cfg


class SkipFirst(torch.utils.data.Sampler):
    """The indices of ``sampler`` without the first ``n``: a run resumed mid-epoch sees the
    rest of the epoch's images in the same order, without loading the ones already done."""

    def __init__(self, sampler, n: int):
        self.sampler, self.n = sampler, n

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.n, None)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.n, 0)


def make_loader(dataset, cfg, train: bool, seed: int, epoch: int = 0, skip: int = 0) -> DataLoader:
    """The DataLoader of one epoch; ``skip`` images of this process's share left out at the start."""
    from ddetr_lib.data import collate_fn

    sampler = DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=train,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, get_rank()))
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=SkipFirst(sampler, skip) if skip else sampler,
                      collate_fn=collate_fn, num_workers=cfg.num_workers,
                      drop_last=train and len(dataset) >= cfg.batch_size * get_world_size(),
                      generator=generator, persistent_workers=False, pin_memory=False)


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: Path, state: dict) -> None:
    """Write to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """Load one of our checkpoints, or an official one (whose pickled ``args`` is an
    ``argparse.Namespace``: allowed, nothing else is)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))


def checkpoint_state(r: "Run", epoch: int, iteration: int) -> dict:
    """Everything a resumed run needs. ``epoch``: the last finished epoch (-1: none);
    ``iter``: steps already done in the next one (a run stopped mid-epoch)."""
    state = {"model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
             "lr_scheduler": r.scheduler.state_dict(), "epoch": epoch, "iter": iteration,
             "config": r.cfg.to_dict(), "rng": rng_state()}
    if r.scaler is not None:
        state["scaler"] = r.scaler.state_dict()
    return state


# --------------------------------------------------------------------------- stopping
class StopSignal:
    """SIGTERM / SIGINT set a flag instead of killing the process; the training loop checks it
    after every step. A second SIGINT (Ctrl-C twice) aborts at once. ``restore()`` puts the
    previous handlers back."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # handlers only install there
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum  # (no printing here: a handler may interrupt a print)

    def __call__(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


# --------------------------------------------------------------------------- the run
def log(*msg) -> None:
    if is_main_process():
        print(*msg, flush=True)


@dataclass
class Run:
    """What :func:`setup` builds and the other steps use."""

    args: argparse.Namespace
    cfg: object
    device: torch.device
    out_dir: Path
    model: torch.nn.Module
    criterion: torch.nn.Module
    postprocessor: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    dataset_train: object
    dataset_val: object
    loader_val: DataLoader
    progress: bool
    stop: StopSignal
    train_model: torch.nn.Module = None
    start_epoch: int = 0  # first epoch to train
    start_iter: int = 0  # steps of start_epoch already done (resumed mid-epoch)
    last_stats: dict = field(default_factory=dict)
    last_results: dict = field(default_factory=dict)

    @property
    def ckpt_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def evaluate(self):
        return evaluate(self.model, self.postprocessor, self.loader_val, self.dataset_val.coco, self.device,
                        self.progress, amp=self.args.amp, stop=self.stop)


def load_backbone_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a torchvision ResNet state dict (a file such as ``resnet50-0676ba61.pth``) into the
    model's backbone; its classifier (``fc``) is not used. Anything else that does not fit
    is an error."""
    state = load_checkpoint(path)
    state = state.get("model", state.get("state_dict", state))
    body = model.backbone[0].body
    try:
        result = body.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes differ: another network
        raise SystemExit(f"error: {path} does not fit the backbone: {' '.join(str(exc).split())[:300]}") from None
    unexpected = [k for k in result.unexpected_keys if not k.startswith("fc.")]
    if result.missing_keys or unexpected:
        raise SystemExit(f"error: {path} does not fit the {len(list(body.parameters()))}-tensor backbone: "
                         f"missing {result.missing_keys[:5]}, unexpected {unexpected[:5]}")


def build_model_once(cfg, args, device) -> torch.nn.Module:
    """Build the model. torchvision's ImageNet weights are downloaded by rank 0 alone, the
    others wait at a barrier and then read them from the cache; ``--backbone-weights``
    reads them from a file instead (machines without internet)."""
    from ddetr_lib.models import build_model

    if args.backbone_weights is not None:
        model = build_model(cfg.replace(pretrained_backbone=False))
        load_backbone_weights(model, args.backbone_weights)
        log(f"backbone weights from {args.backbone_weights}")
        return model.to(device)
    first = dist.is_initialized() and cfg.pretrained_backbone
    if first and get_rank() != 0:
        dist.barrier()
    model = build_model(cfg)
    if first and get_rank() == 0:
        dist.barrier()
    return model.to(device)


def setup(args: argparse.Namespace) -> Run:
    """Processes, config, data, model, loss, optimizer: everything before the first step."""
    from ddetr_lib.data import build_dataset, max_category_id
    from ddetr_lib.models import build_criterion, build_postprocessor

    if args.accumulate < 1:
        raise SystemExit(f"error: --accumulate must be >= 1, got {args.accumulate}")
    if args.log_every < 0 or args.checkpoint_every < 0:
        raise SystemExit("error: --log-every and --checkpoint-every must be >= 0")
    if args.resume is not None and args.finetune_from is not None:
        raise SystemExit("error: --resume continues a run, --finetune-from starts a new one: pass one of them")
    device = init_distributed(args.device)
    out_dir = args.output_dir or Path("outputs") / args.config
    if not args.eval_only and args.resume is None and (out_dir / CHECKPOINT_NAME).exists() and not args.overwrite:
        raise SystemExit(f"error: {out_dir / CHECKPOINT_NAME} exists; pass --resume {out_dir / CHECKPOINT_NAME} "
                         f"to continue or --overwrite to start afresh")
    if args.amp == "fp16" and device.type == "cpu":
        raise SystemExit("error: --amp fp16 is for GPUs; on the CPU use --amp bf16")

    train_ann = args.data_root / "annotations" / "instances_train2017.json"
    val_ann = args.data_root / "annotations" / "instances_val2017.json"
    num_classes = max_category_id(train_ann if (train_ann.exists() or not args.eval_only) else val_ann) + 1
    try:
        cfg = make_config(args, num_classes)
    except ValueError as exc:  # unknown --set key or a value of the wrong type
        raise SystemExit(f"error: {exc}") from None
    seed_everything(args.seed + get_rank())

    dataset_val = build_dataset("val", args.data_root, cfg)
    dataset_train = None if args.eval_only else build_dataset("train", args.data_root, cfg)
    model = build_model_once(cfg, args, device)
    optimizer = build_optimizer(model, cfg)
    r = Run(args=args, cfg=cfg, device=device, out_dir=out_dir, model=model,
            criterion=build_criterion(cfg).to(device), postprocessor=build_postprocessor(cfg),
            optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg),
            scaler=torch.amp.GradScaler(device.type) if args.amp == "fp16" else None,
            dataset_train=dataset_train, dataset_val=dataset_val,
            loader_val=make_loader(dataset_val, cfg, train=False, seed=args.seed),
            progress=not args.no_progress and sys.stderr.isatty(),  # no bars in log files
            stop=StopSignal())
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"config {cfg.name}: {cfg.model}, backbone {cfg.backbone}, {cfg.num_classes} classes, "
        f"{n_params / 1e6:.2f} M trainable parameters, {get_world_size()} process(es) on {device}"
        + (f", {args.amp} autocast" if args.amp else ""))
    if not args.eval_only:
        k = args.accumulate
        log(f"{cfg.epochs} epochs of {len(dataset_train)} images, batch {cfg.batch_size} x {get_world_size()} process(es)"
            + (f" x {k} accumulated = {cfg.batch_size * get_world_size() * k}" if k > 1 else "")
            + f", lr {cfg.lr:g} (x0.1 after epoch {cfg.lr_drop}), output in {out_dir}")
    return r


def finetune(r: Run, path: Path) -> None:
    """Load every weight of ``path`` that fits; the class heads are re-initialised when the
    checkpoint has another class count. Prints what was loaded and what was not."""
    from ddetr_lib.models.checkpoint import _is_class_head, load_official_checkpoint, read_official_state_dict

    state = read_official_state_dict(load_checkpoint(path))
    own = r.model.state_dict()
    heads = sorted(k for k in state if _is_class_head(k) and k in own and state[k].shape != own[k].shape)
    try:
        load_official_checkpoint(r.model, state, strict=True, reinit_class_head=bool(heads))
    except (RuntimeError, ValueError) as exc:
        first = " ".join(str(exc).strip().splitlines()[:3])
        raise SystemExit(f"error: {path} does not fit config {r.cfg.name}: {first[:300]}") from None
    loaded = [k for k in state if not (heads and _is_class_head(k))]
    n_loaded = sum(state[k].numel() for k in loaded)
    log(f"fine-tuning from {path}: loaded {len(loaded)} tensors ({n_loaded / 1e6:.2f} M values)")
    if heads:
        rows = {k: (tuple(state[k].shape), tuple(own[k].shape)) for k in heads if k.endswith("weight")}
        example = next(iter(rows.items()))
        log(f"  re-initialised {len(heads)} class-head tensors ({len(rows)} heads), checkpoint "
            f"{example[1][0][0]} -> {example[1][1][0]} outputs, e.g. {example[0]} {example[1][0]} -> {example[1][1]}")
    else:
        log("  class heads loaded too (same class count)")


def resume(r: Run, path: Path) -> None:
    """Load a checkpoint (ours or official). Training continues after its last step, with
    ``--lr-drop``, if given, replacing the checkpoint's; the model is evaluated at once."""
    ckpt = load_checkpoint(path)
    try:
        r.model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise SystemExit(f"error: {path} does not fit config {r.cfg.name} "
                         f"({r.cfg.num_classes} classes): {' '.join(first)[:300]}") from None
    if r.args.eval_only or "optimizer" not in ckpt:
        log(f"loaded the model of {path}")
        return
    r.optimizer.load_state_dict(ckpt["optimizer"])
    r.scheduler.load_state_dict(ckpt["lr_scheduler"])
    if r.scaler is not None and "scaler" in ckpt:
        r.scaler.load_state_dict(ckpt["scaler"])
    r.start_epoch, r.start_iter = ckpt["epoch"] + 1, int(ckpt.get("iter", 0))
    old_drop = r.scheduler.step_size
    if r.args.lr_drop is not None and r.args.lr_drop != old_drop:
        # StepLR's closed form: lr = base_lr * 0.1 ** (epochs done // lr_drop)
        r.scheduler.step_size = r.args.lr_drop
        for group, base in zip(r.optimizer.param_groups, r.scheduler.base_lrs):
            group["lr"] = base * r.scheduler.gamma ** (r.scheduler.last_epoch // r.scheduler.step_size)
        log(f"--lr-drop {r.args.lr_drop} replaces the checkpoint's {old_drop}: lr now {r.optimizer.param_groups[0]['lr']:g}")
    elif old_drop != r.cfg.lr_drop:
        log(f"keeping the checkpoint's lr drop after epoch {old_drop} (pass --lr-drop to change it)")
    r.cfg = r.cfg.replace(lr_drop=r.scheduler.step_size)
    where = f"epoch {r.start_epoch}" + (f", step {r.start_iter}" if r.start_iter else "")
    log(f"resumed from {path} at {where}")
    _truncate_logs(r)
    stats, results = r.evaluate()  # check the resumed model, as the official code does
    r.last_stats, r.last_results = stats, results  # (what finish() reports if no epoch is left)
    log(f"resumed model: AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}")
    if r.start_iter and "rng" in ckpt:
        set_rng_state(ckpt["rng"])  # mid-epoch: go on with the RNG where it stopped (after the evaluation's draws)


def _truncate_logs(r: Run) -> None:
    """Drop log lines written after the checkpoint (from a run killed without saving one):
    each epoch and each step then appears once."""
    if not is_main_process():
        return
    def after_checkpoint(name: str, entry: dict) -> bool:
        if name == "log.jsonl":
            return entry["epoch"] >= r.start_epoch
        return (entry["epoch"], entry["iter"]) > (r.start_epoch, r.start_iter)

    for name in ("log.jsonl", "metrics.jsonl"):
        path = r.out_dir / name
        if path.exists():
            lines = path.read_text().splitlines()
            keep = [line for line in lines if not after_checkpoint(name, json.loads(line))]
            if len(keep) != len(lines):
                path.write_text("".join(x + "\n" for x in keep))


def fit(r: Run) -> None:
    """The epochs: train, evaluate every ``--eval-every`` epochs, log, checkpoint."""
    args, cfg = r.args, r.cfg
    n_params = sum(p.numel() for p in r.model.parameters() if p.requires_grad)
    if is_main_process():
        if r.start_epoch == 0 and r.start_iter == 0:
            (r.out_dir / "log.jsonl").write_text("")
            (r.out_dir / "metrics.jsonl").unlink(missing_ok=True)
        # (rewritten on resuming: --epochs or --lr-drop may have changed)
        (r.out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    metrics = MetricsWriter(r.out_dir / "metrics.jsonl", args.log_every) if is_main_process() and args.log_every else None
    full_epoch = len(make_loader(r.dataset_train, cfg, train=True, seed=args.seed)) // args.accumulate
    iters_per_epoch = full_epoch if args.steps_per_epoch is None else min(args.steps_per_epoch, full_epoch)
    try:
        for epoch in range(r.start_epoch, cfg.epochs):
            start_iter = r.start_iter if epoch == r.start_epoch else 0
            if not start_iter:
                # Seed every RNG from (seed, epoch, rank): augmentation, sampling and dropout of
                # this epoch are the same whether or not the run was interrupted before it.
                seed_everything(epoch_seed(args.seed, epoch, get_rank()))
            skip = start_iter * args.accumulate * cfg.batch_size
            loader = make_loader(r.dataset_train, cfg, train=True, seed=args.seed, epoch=epoch, skip=skip)
            train_stats = train_one_epoch(
                r.train_model, r.criterion, loader, r.optimizer, r.device, epoch, cfg.clip_max_norm,
                max_steps=args.steps_per_epoch, progress=r.progress, accumulate=args.accumulate, amp=args.amp,
                scaler=r.scaler, metrics=metrics, start_iter=start_iter, iters_per_epoch=iters_per_epoch, stop=r.stop)
            if train_stats.pop("stopped"):
                done = start_iter + train_stats["train_steps"]
                if done < iters_per_epoch:
                    return _stop(r, epoch - 1, done)
            r.scheduler.step()
            entry = {"epoch": epoch, **train_stats, "n_parameters": n_params}
            if start_iter:
                entry["resumed_at_step"] = start_iter
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == cfg.epochs:
                t0 = time.perf_counter()
                try:
                    stats, results = r.evaluate()
                except StopRequested:
                    return _stop(r, epoch, 0, entry)
                r.last_stats, r.last_results = stats, results
                entry.update({f"test_{k}": v for k, v in stats.items()})
                entry["test_coco_eval_bbox"] = [stats[k] for k in COCO_STAT_NAMES]
                entry["eval_time_s"] = time.perf_counter() - t0
            _end_of_epoch(r, epoch, entry)
            if epoch + 1 < cfg.epochs and stop_agreed(r.stop, r.device):  # a signal during the last bits
                return _stop(r, epoch, 0, saved=True)
    finally:
        if metrics is not None:
            metrics.close()


def _end_of_epoch(r: Run, epoch: int, entry: dict) -> None:
    if not is_main_process():
        return
    with open(r.out_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    state = checkpoint_state(r, epoch, 0)
    save_checkpoint(r.ckpt_path, state)
    every = r.args.checkpoint_every
    if every and ((epoch + 1) % every == 0 or (epoch + 1) % r.cfg.lr_drop == 0):
        save_checkpoint(r.out_dir / f"checkpoint{epoch:04}.pth", state)  # as the official code keeps them
    ap = f", AP {entry['test_AP']:.3f}, AP50 {entry['test_AP50']:.3f}" if "test_AP" in entry else ""
    log(f"epoch {epoch}: loss {entry['train_loss']:.3f}, {entry['train_step_s'] * 1000:.0f} ms/step{ap}")


def _stop(r: Run, epoch: int, iteration: int, entry: dict | None = None, saved: bool = False) -> None:
    """Save ``checkpoint.pth`` after the last finished step and say how to continue."""
    if entry is not None:  # the epoch's training is done, its evaluation was cut short
        _end_of_epoch(r, epoch, entry)
    elif is_main_process() and not saved:
        save_checkpoint(r.ckpt_path, checkpoint_state(r, epoch, iteration))
    where = f"epoch {epoch + 1}, step {iteration}" if iteration else f"the end of epoch {epoch}"
    name = signal.Signals(r.stop.signum).name if r.stop.signum else "signal"
    raise Stopped(f"{name}: stopped at {where}, checkpoint {r.ckpt_path}; continue with --resume {r.ckpt_path}",
                  is_main_process())


class Stopped(Exception):
    """The run stopped on a signal (after saving its checkpoint, if there was anything new)."""

    def __init__(self, message: str, main_process: bool = True):
        super().__init__(message)
        self.main_process = main_process  # the one that prints (known before the process group ends)


def finish(r: Run) -> None:
    """eval.json, the COCO table and the predictions picture of the last evaluation."""
    stats, results = r.last_stats, r.last_results
    if is_main_process() and stats:
        r.out_dir.mkdir(parents=True, exist_ok=True)
        (r.out_dir / "eval.json").write_text(json.dumps(stats, indent=2) + "\n")
        log(format_coco_table(stats))
        try:
            from ddetr_lib.viz import save_prediction_figure

            fig_path = save_prediction_figure(r.dataset_val, results, r.out_dir / "predictions.png")
            log(f"predictions vs ground truth: {fig_path}")
        except ImportError:
            pass


def run(args: argparse.Namespace) -> dict:
    """Set up, resume or fine-tune, fit (or evaluate only), finish. Returns the last COCO stats."""
    r = setup(args)
    try:
        r.out_dir.mkdir(parents=True, exist_ok=True)
        if args.finetune_from is not None:
            finetune(r, args.finetune_from)
        if args.resume is not None:
            resume(r, args.resume)
        if args.eval_only:
            r.last_stats, r.last_results = r.evaluate()
        else:
            r.train_model = r.model
            if get_world_size() > 1:
                r.train_model = torch.nn.parallel.DistributedDataParallel(
                    r.model, device_ids=[r.device.index] if r.device.type == "cuda" else None)
            fit(r)
        finish(r)
    except StopRequested:  # during --eval-only or the check after resuming: nothing new to save
        raise Stopped("stopped during evaluation; nothing new to save", is_main_process()) from None
    finally:
        r.stop.restore()
        if dist.is_initialized():
            dist.destroy_process_group()
    return r.last_stats


def _one_line(exc: BaseException) -> str:
    """An error raised in a DataLoader worker arrives with the worker's traceback in its
    message: keep only its last line."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last.split("DataError: ", 1)[-1]


def main(argv=None) -> int:
    from ddetr_lib.data import DataError

    args = parse_args(argv)
    try:
        run(args)
    except (DataError, FileNotFoundError, TrainingDiverged) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        return 2
    except Stopped as exc:
        if exc.main_process:
            print(exc, flush=True)
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
