"""Models: build a detector, its loss and its post-processor from a config.

    model = build_model(cfg)              # DETR (cfg.model == "detr")
    criterion = build_criterion(cfg)      # Hungarian matching + set losses, .weight_dict
    postprocessor = build_postprocessor(cfg)

    outputs = model(samples)              # NestedTensor, list of (3, H, W), or (B, 3, H, W)
    losses = criterion(outputs, targets)  # targets: [{"labels": (N,), "boxes": (N, 4) cxcywh}]
    loss = sum(losses[k] * criterion.weight_dict[k] for k in criterion.weight_dict if k in losses)
    results = postprocessor(outputs, orig_sizes)  # orig_sizes (B, 2) as (h, w)
"""
from __future__ import annotations

from ddetr_lib.models.backbone import build_backbone
from ddetr_lib.models.checkpoint import load_official_checkpoint
from ddetr_lib.models.criterion import SetCriterion, build_weight_dict
from ddetr_lib.models.detr import DETR, MLP, PostProcess
from ddetr_lib.models.matcher import HungarianMatcher, build_matcher
from ddetr_lib.models.position_encoding import build_position_encoding
from ddetr_lib.models.transformer import Transformer, build_transformer, capture_attention

__all__ = [
    "build_model", "build_criterion", "build_postprocessor", "build_backbone", "build_transformer",
    "build_position_encoding", "build_matcher", "DETR", "MLP", "PostProcess", "SetCriterion",
    "HungarianMatcher", "Transformer", "capture_attention", "load_official_checkpoint",
]

_DEFORMABLE_MSG = "Deformable DETR arrives with the model-family issue"


def build_model(cfg):
    """The detector described by ``cfg`` (randomly initialised, apart from the backbone's
    ImageNet weights when ``cfg.pretrained_backbone``)."""
    if cfg.model == "detr":
        backbone = build_backbone(cfg, return_interm_layers=False)
        transformer = build_transformer(cfg)
        return DETR(backbone, transformer, num_classes=cfg.num_classes, num_queries=cfg.num_queries,
                    aux_loss=cfg.aux_loss)
    if cfg.model == "deformable_detr":
        raise NotImplementedError(_DEFORMABLE_MSG)
    raise ValueError(f"model: unknown {cfg.model!r}; use 'detr' or 'deformable_detr'")


def build_criterion(cfg) -> SetCriterion:
    if cfg.model == "detr":
        matcher = build_matcher(cfg, focal=False)
        return SetCriterion(cfg.num_classes, matcher, build_weight_dict(cfg), eos_coef=cfg.eos_coef,
                            losses=("labels", "boxes", "cardinality"))
    if cfg.model == "deformable_detr":
        raise NotImplementedError(_DEFORMABLE_MSG)
    raise ValueError(f"model: unknown {cfg.model!r}; use 'detr' or 'deformable_detr'")


def build_postprocessor(cfg):
    if cfg.model == "detr":
        return PostProcess()
    if cfg.model == "deformable_detr":
        raise NotImplementedError(_DEFORMABLE_MSG)
    raise ValueError(f"model: unknown {cfg.model!r}; use 'detr' or 'deformable_detr'")
