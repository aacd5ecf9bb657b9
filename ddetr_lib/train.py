"""Train and evaluate DETR / Deformable DETR on a COCO-format dataset.

One process (CPU or one GPU):

    python -m ddetr_lib.train --config toy_detr --data-root data/synthetic_demo --output-dir outputs/toy

Many GPUs, one or several nodes (the same flags; DDP with nccl on GPU, gloo on CPU):

    torchrun --nproc_per_node=8 -m ddetr_lib.train --config deformable_detr_r50 --data-root data/coco

Writes to ``--output-dir``: ``log.jsonl`` (one JSON object per epoch), ``checkpoint.pth``
(model, optimizer, scheduler, epoch, RNG state; loadable with ``weights_only=True``),
``eval.json`` (the 12 COCO box stats of the last evaluation) and ``predictions.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from ddetr_lib.config import PRESETS, get_config, parse_override
from ddetr_lib.optim import build_optimizer, build_scheduler
from ddetr_lib.engine import COCO_STAT_NAMES, TrainingDiverged, evaluate, format_coco_table, train_one_epoch
from ddetr_lib.utils import get_rank, get_world_size, is_main_process

CHECKPOINT_NAME = "checkpoint.pth"


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
                   help="start the backbone from torchvision's ImageNet weights (downloads once)")
    p.add_argument("--no-pretrained-backbone", dest="pretrained_backbone", action="store_false")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set hidden_dim=128 --set train_scales=96,128")
    p.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from (or evaluate with --eval-only)")
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


def make_loader(dataset, cfg, train: bool, seed: int, epoch: int = 0) -> DataLoader:
    from ddetr_lib.data import collate_fn

    sampler = DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=train,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, get_rank()))
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_fn,
                      num_workers=cfg.num_workers, drop_last=train and len(dataset) >= cfg.batch_size * get_world_size(),
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


# --------------------------------------------------------------------------- main
def log(*msg) -> None:
    if is_main_process():
        print(*msg, flush=True)


def run(args: argparse.Namespace) -> dict:
    from ddetr_lib.data import build_dataset, max_category_id
    from ddetr_lib.models import build_criterion, build_model, build_postprocessor

    device = init_distributed(args.device)
    out_dir = args.output_dir or Path("outputs") / args.config
    ckpt_path = out_dir / CHECKPOINT_NAME
    if not args.eval_only and args.resume is None and ckpt_path.exists() and not args.overwrite:
        raise SystemExit(f"error: {ckpt_path} exists; pass --resume {ckpt_path} to continue or --overwrite to start afresh")

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

    model = build_model(cfg).to(device)
    criterion = build_criterion(cfg).to(device)
    postprocessor = build_postprocessor(cfg)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"config {cfg.name}: {cfg.model}, backbone {cfg.backbone}, {cfg.num_classes} classes, "
        f"{n_params / 1e6:.2f} M trainable parameters, {get_world_size()} process(es) on {device}")
    if not args.eval_only:
        log(f"{cfg.epochs} epochs of {len(dataset_train)} images, batch {cfg.batch_size} x {get_world_size()}, "
            f"lr {cfg.lr:g} (x0.1 after epoch {cfg.lr_drop}), output in {out_dir}")

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    start_epoch = 0
    if args.resume is not None:
        ckpt = load_checkpoint(args.resume)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[:3]
            raise SystemExit(f"error: {args.resume} does not fit config {cfg.name} "
                             f"({cfg.num_classes} classes): {' '.join(first)[:300]}") from None
        if not args.eval_only and "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["lr_scheduler"])
            start_epoch = ckpt["epoch"] + 1
            set_rng_state(ckpt["rng"])
        log(f"resumed from {args.resume}" + (f" at epoch {start_epoch}" if start_epoch else ""))

    train_model = model
    if get_world_size() > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    out_dir.mkdir(parents=True, exist_ok=True)
    loader_val = make_loader(dataset_val, cfg, train=False, seed=args.seed)
    progress = not args.no_progress and sys.stderr.isatty()  # no bars in log files
    stats: dict = {}
    results: dict = {}

    if args.eval_only:
        stats, results = evaluate(model, postprocessor, loader_val, dataset_val.coco, device, progress)
    else:
        if is_main_process() and start_epoch == 0:
            (out_dir / "log.jsonl").write_text("")
            (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        for epoch in range(start_epoch, cfg.epochs):
            # Seed every RNG from (seed, epoch, rank): augmentation, sampling and dropout of
            # this epoch are the same whether or not the run was interrupted before it.
            seed_everything(epoch_seed(args.seed, epoch, get_rank()))
            loader_train = make_loader(dataset_train, cfg, train=True, seed=args.seed, epoch=epoch)
            train_stats = train_one_epoch(train_model, criterion, loader_train, optimizer, device, epoch,
                                          cfg.clip_max_norm, max_steps=args.steps_per_epoch, progress=progress)
            scheduler.step()
            entry = {"epoch": epoch, **train_stats, "n_parameters": n_params}
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == cfg.epochs:
                t0 = time.perf_counter()
                stats, results = evaluate(model, postprocessor, loader_val, dataset_val.coco, device, progress)
                entry.update({f"test_{k}": v for k, v in stats.items()})
                entry["test_coco_eval_bbox"] = [stats[k] for k in COCO_STAT_NAMES]
                entry["eval_time_s"] = time.perf_counter() - t0
            if is_main_process():
                with open(out_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(entry) + "\n")
                save_checkpoint(ckpt_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(), "epoch": epoch,
                    "config": cfg.to_dict(), "rng": rng_state(),
                })
                ap = f", AP {stats['AP']:.3f}, AP50 {stats['AP50']:.3f}" if "test_AP" in entry else ""
                log(f"epoch {epoch}: loss {train_stats['train_loss']:.3f}, "
                    f"{train_stats['train_step_s'] * 1000:.0f} ms/step{ap}")
    if is_main_process() and stats:
        (out_dir / "eval.json").write_text(json.dumps(stats, indent=2) + "\n")
        log(format_coco_table(stats))
        try:
            from ddetr_lib.viz import save_prediction_figure

            fig_path = save_prediction_figure(dataset_val, results, out_dir / "predictions.png")
            log(f"predictions vs ground truth: {fig_path}")
        except ImportError:
            pass
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return stats


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
