"""Models: build a detector, its loss and its post-processor from a config.

    model = build_model(cfg)              # DETR or Deformable DETR (cfg.model)
    criterion = build_criterion(cfg)      # Hungarian matching + set losses, .weight_dict
    postprocessor = build_postprocessor(cfg)

    outputs = model(samples)              # NestedTensor, list of (3, H, W), or (B, 3, H, W)
    losses = criterion(outputs, targets)  # targets: [{"labels": (N,), "boxes": (N, 4) cxcywh}]
    loss = sum(losses[k] * criterion.weight_dict[k] for k in criterion.weight_dict if k in losses)
    results = postprocessor(outputs, orig_sizes)  # orig_sizes (B, 2) as (h, w)

Looking inside (``capture.py``, forward hooks; the models themselves record nothing):
``capture_attention(model)`` (DETR's attention maps) and ``capture_deformable(model)``
(Deformable DETR's sampling locations, attention weights, reference points and
two-stage proposals); ``set_attention_backend(model, "torch")``
runs deformable attention with the PyTorch reference instead of the Numba kernel.
"""
from __future__ import annotations

from ddetr_lib.models.backbone import build_backbone
from ddetr_lib.models.capture import capture_attention, capture_deformable
from ddetr_lib.models.checkpoint import load_official_checkpoint
from ddetr_lib.models.criterion import SetCriterion, build_weight_dict
from ddetr_lib.models.deformable_detr import DeformableDETR, PostProcessDeformable, set_attention_backend
from ddetr_lib.models.deformable_transformer import DeformableTransformer, build_deformable_transformer
from ddetr_lib.models.detr import DETR, MLP, PostProcess
from ddetr_lib.models.matcher import HungarianMatcher, build_matcher
from ddetr_lib.models.position_encoding import build_position_encoding
from ddetr_lib.models.ms_deform_attn import MSDeformAttn
from ddetr_lib.models.transformer import Transformer, build_transformer

__all__ = [
    "build_model", "build_criterion", "build_postprocessor", "build_backbone", "build_transformer",
    "build_position_encoding", "build_matcher", "DETR", "MLP", "PostProcess", "SetCriterion",
    "HungarianMatcher", "Transformer", "capture_attention", "load_official_checkpoint",
    "DeformableDETR", "DeformableTransformer", "MSDeformAttn", "PostProcessDeformable", "capture_deformable",
    "set_attention_backend", "build_deformable_transformer", "build_detr", "build_deformable_detr",
]

def build_detr(cfg) -> DETR:
    backbone = build_backbone(cfg, return_interm_layers=False)  # C5 only
    return DETR(backbone, build_transformer(cfg), num_classes=cfg.num_classes, num_queries=cfg.num_queries,
                aux_loss=cfg.aux_loss)


def build_deformable_detr(cfg) -> DeformableDETR:
    # C3-C5 for the multi-scale model; C5 alone for the single-scale variant.
    backbone = build_backbone(cfg, return_interm_layers=cfg.num_feature_levels > 1)
    return DeformableDETR(backbone, build_deformable_transformer(cfg), num_classes=cfg.num_classes,
                          num_queries=cfg.num_queries, num_feature_levels=cfg.num_feature_levels,
                          aux_loss=cfg.aux_loss, with_box_refine=cfg.with_box_refine, two_stage=cfg.two_stage)


MODEL_BUILDERS = {"detr": build_detr, "deformable_detr": build_deformable_detr}


def build_model(cfg):
    """The detector described by ``cfg`` (randomly initialised, apart from the backbone's
    ImageNet weights when ``cfg.pretrained_backbone``)."""
    if cfg.model not in MODEL_BUILDERS:
        raise ValueError(f"model: unknown {cfg.model!r}; use one of {sorted(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[cfg.model](cfg)


def build_criterion(cfg) -> SetCriterion:
    """Hungarian matcher + set losses. ``cfg.focal_loss``: sigmoid focal loss and focal
    class cost (Deformable DETR); otherwise softmax cross-entropy with a down-weighted
    "no object" class (DETR). Two-stage adds the ``_enc`` losses (``build_weight_dict``)."""
    matcher = build_matcher(cfg)
    return SetCriterion(cfg.num_classes, matcher, build_weight_dict(cfg), eos_coef=cfg.eos_coef,
                        losses=("labels", "boxes", "cardinality"), focal_loss=cfg.focal_loss,
                        focal_alpha=cfg.focal_alpha)


def build_postprocessor(cfg):
    """Sigmoid classifiers (``cfg.focal_loss``) keep the ``cfg.num_select`` best
    (query, class) pairs; softmax ones the best class of every query."""
    if cfg.focal_loss:
        return PostProcessDeformable(num_select=cfg.num_select)
    return PostProcess()
