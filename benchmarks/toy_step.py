"""Time one full training step of the toy presets on CPU.

A step is: forward, criterion (Hungarian matching + losses, auxiliary included),
backward, gradient clipping and an AdamW update, on a batch of random images of
slightly different sizes (so padding masks are exercised) with random targets.

    python benchmarks/toy_step.py                    # toy_detr and toy_deformable_detr
    python benchmarks/toy_step.py --configs toy_detr --batch-size 8 --steps 20

Prints the median step time in ms per config.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from ddetr_lib.config import get_config
from ddetr_lib.models import build_criterion, build_model


def random_batch(batch_size: int, num_classes: int, generator: torch.Generator, size: int = 128):
    images, targets = [], []
    for _ in range(batch_size):
        h = size - 8 * int(torch.randint(0, 4, (1,), generator=generator))
        w = size - 8 * int(torch.randint(0, 4, (1,), generator=generator))
        images.append(torch.rand(3, h, w, generator=generator))
        n = int(torch.randint(1, 8, (1,), generator=generator))
        centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=generator) * 0.3 + 0.05
        targets.append({"labels": torch.randint(0, num_classes, (n,), generator=generator),
                        "boxes": torch.cat([centre, wh], dim=1)})
    return images, targets


def time_config(name: str, batch_size: int, steps: int, warmup: int) -> float:
    cfg = get_config(name)
    torch.manual_seed(0)
    model = build_model(cfg)
    criterion = build_criterion(cfg)
    model.train()
    criterion.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(warmup + steps):
        images, targets = random_batch(batch_size, cfg.num_classes, g)
        t0 = time.perf_counter()
        outputs = model(images)
        losses = criterion(outputs, targets)
        loss = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
        optimizer.zero_grad()
        loss.backward()
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_max_norm)
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["toy_detr", "toy_deformable_detr"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the reference machine has 2 cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.configs:
        try:
            ms = time_config(name, args.batch_size, args.steps, args.warmup)
        except NotImplementedError as e:
            print(f"{name:24s} skipped: {e}")
            continue
        print(f"{name:24s} batch {args.batch_size}: median training step {ms:7.1f} ms")


if __name__ == "__main__":
    main()
