"""Keep only what inference needs from a training checkpoint (drops optimizer and RNG state).

    python scripts/extract_model.py outputs/demo/checkpoint.pth checkpoints/toy_deformable_detr_demo.pth

The result holds ``model`` (the state dict), ``config`` (the Config as a dict) and
``epoch``; load it with ``torch.load(path, weights_only=True)``.
"""
import argparse
import os
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    slim = {"model": ckpt["model"], "config": ckpt["config"], "epoch": ckpt["epoch"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    torch.save(slim, tmp)
    os.replace(tmp, args.out)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB, epoch {slim['epoch']}, config {slim['config']['name']}")


if __name__ == "__main__":
    main()
