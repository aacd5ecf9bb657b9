"""Configs as plain data.

Every run is described by one flat :class:`Config`. ``get_config(name, **overrides)``
returns a named preset with some fields replaced; the training CLI turns its flags
(and ``--set key=value``) into overrides.  The published recipes reproduce the
papers' settings; the ``toy_*`` presets are small, CPU-friendly models for the
synthetic dataset.

    >>> cfg = get_config("toy_detr", epochs=3)
    >>> cfg.model, cfg.epochs
    ('detr', 3)
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

# Multi-scale training sizes of the official recipe (short side), max 1333.
COCO_TRAIN_SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]


# What differs between the two architectures besides the network itself; a preset
# sets these explicitly, a config that leaves them None gets its model's values.
MODEL_DEFAULTS = {
    "detr": dict(focal_loss=False, position_embedding_offset=0.0),
    "deformable_detr": dict(focal_loss=True, position_embedding_offset=-0.5),
}


@dataclass
class Config:
    name: str = "custom"
    model: str = "detr"  # "detr" | "deformable_detr"

    # --- backbone -------------------------------------------------------------
    backbone: str = "resnet50"  # "resnet50" | "resnet18" | "toy"
    pretrained_backbone: bool = True  # torchvision ImageNet V1 weights (downloads once)
    frozen_batchnorm: bool = True  # FrozenBatchNorm2d: only for pretrained weights
    train_backbone: bool = True  # False: backbone lr 0 (frozen entirely)
    dilation: bool = False  # DC5 variant: dilate the last stage
    toy_widths: tuple = (16, 32, 64, 128)  # channel widths of the "toy" backbone's 4 stages

    # --- transformer ------------------------------------------------------------
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 100
    pre_norm: bool = False
    position_embedding: str = "sine"
    # Added to the 1-based pixel count before the sine encoding normalises it: 0 in
    # DETR's official code, -0.5 (the pixel centre) in Deformable DETR's. None: the model's.
    position_embedding_offset: float | None = None

    # --- Deformable DETR ---------------------------------------------------------
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    with_box_refine: bool = False
    two_stage: bool = False

    # --- heads, matcher and loss ---------------------------------------------------
    num_classes: int = 91  # logits indexed by raw category id (COCO ids go up to 90)
    # Classifier and class loss: False = softmax over C+1 logits ("no object" last) with
    # cross-entropy (DETR); True = C sigmoid logits with the sigmoid focal loss and the
    # focal matching cost (Deformable DETR). None: the model's.
    focal_loss: bool | None = None
    num_select: int = 100  # sigmoid models: detections kept per image (top-k over queries x classes)
    aux_loss: bool = True
    set_cost_class: float = 1.0
    set_cost_bbox: float = 5.0
    set_cost_giou: float = 2.0
    cls_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    eos_coef: float = 0.1  # DETR: weight of the no-object class
    focal_alpha: float = 0.25  # Deformable DETR: sigmoid focal loss

    # --- optimisation ---------------------------------------------------------------
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    lr_linear_proj_mult: float = 0.1  # Deformable DETR: sampling_offsets / reference_points
    weight_decay: float = 1e-4
    epochs: int = 500
    lr_drop: int = 400  # StepLR: lr x0.1 after this many epochs
    clip_max_norm: float = 0.1
    batch_size: int = 2  # per process (GPU); total = batch_size x world size

    # --- data -------------------------------------------------------------------------
    train_scales: list = field(default_factory=lambda: list(COCO_TRAIN_SCALES))
    train_max_size: int = 1333
    random_crop: bool = True  # the crop branch of the augmentation (chosen with probability 1/2)
    crop_resize_choices: list = field(default_factory=lambda: [400, 500, 600])
    crop_min: int = 384
    crop_max: int = 600
    val_size: int = 800
    val_max_size: int = 1333
    num_workers: int = 2

    def __post_init__(self):
        # Fields left at None take the model's own value (also fills configs saved
        # before these fields existed, e.g. in older checkpoints).
        if self.model not in MODEL_DEFAULTS:
            raise ValueError(f"model: unknown {self.model!r}; use one of {sorted(MODEL_DEFAULTS)}")
        for key, value in MODEL_DEFAULTS[self.model].items():
            if getattr(self, key) is None:
                setattr(self, key, value)

    def replace(self, **overrides: Any) -> "Config":
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(f.name for f in fields(self))}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _detr_r50() -> Config:
    # DETR (Carion et al., 2020), R-50, 500-epoch schedule.
    return Config(name="detr_r50", model="detr", focal_loss=False, position_embedding_offset=0.0)


def _deformable_detr_r50() -> Config:
    # Deformable DETR (Zhu et al., 2021), R-50, 50 epochs, lr drop at 40.
    return Config(
        name="deformable_detr_r50",
        model="deformable_detr",
        focal_loss=True,
        position_embedding_offset=-0.5,
        dim_feedforward=1024,
        num_queries=300,
        set_cost_class=2.0,
        cls_loss_coef=2.0,
        lr=2e-4,
        lr_backbone=2e-5,
        epochs=50,
        lr_drop=40,
    )


def _deformable_detr_r50_single_scale() -> Config:
    return _deformable_detr_r50().replace(name="deformable_detr_r50_single_scale", num_feature_levels=1)


def _deformable_detr_r50_refine() -> Config:
    return _deformable_detr_r50().replace(name="deformable_detr_r50_refine", with_box_refine=True)


def _deformable_detr_r50_refine_two_stage() -> Config:
    return _deformable_detr_r50().replace(
        name="deformable_detr_r50_refine_two_stage", with_box_refine=True, two_stage=True
    )


# Small images for the synthetic dataset: multi-scale training around 128 px.
_TOY_DATA = dict(
    train_scales=[96, 104, 112, 120, 128],
    train_max_size=192,
    crop_resize_choices=[100, 120, 140],
    crop_min=80,
    crop_max=120,
    val_size=128,
    val_max_size=192,
)


def _toy_detr() -> Config:
    # Trained from scratch: ordinary (trainable) BatchNorm, no frozen stages, and the
    # backbone learns at the full learning rate.
    # Measured on the demo data (2 CPU cores): the last stage dilated (stride 16, an 8x8
    # map at 128 px) and a looser gradient clip learn faster; the crop branch of the
    # augmentation is off because at ~100 px it cuts most objects.
    return Config(
        name="toy_detr",
        model="detr",
        focal_loss=False,
        position_embedding_offset=0.0,
        backbone="toy",
        pretrained_backbone=False,
        frozen_batchnorm=False,
        dilation=True,
        random_crop=False,
        hidden_dim=64,
        nheads=4,
        enc_layers=2,
        dec_layers=2,
        dim_feedforward=128,
        dropout=0.0,
        num_queries=20,
        lr=5e-4,
        lr_backbone=5e-4,
        epochs=24,  # about 8 minutes on 2 cores: `make demo` fits in 10
        lr_drop=20,
        clip_max_norm=1.0,
        batch_size=8,
        num_workers=0,  # measured on 2 cores: a loader process steals the model's cores (104 vs 87 ms/step)
        **_TOY_DATA,
    )


def _toy_deformable_detr() -> Config:
    return _toy_detr().replace(
        name="toy_deformable_detr",
        model="deformable_detr",
        focal_loss=True,
        position_embedding_offset=-0.5,
        dilation=False,  # multi-scale C3-C5 already gives fine levels (16, 8, 4 px cells at 128 px)
        num_feature_levels=3,
        epochs=23,  # about 9 minutes on 2 cores: `make demo` fits in 10
        lr_drop=19,
        enc_n_points=4,
        dec_n_points=4,
        num_queries=20,
        set_cost_class=2.0,
        cls_loss_coef=2.0,
    )


# The paper's variants at toy size (Table 1 of the paper in miniature): the same
# recipe, data and budget as `toy_deformable_detr`, one switch each.
def _toy_deformable_detr_single_scale() -> Config:
    return _toy_deformable_detr().replace(name="toy_deformable_detr_single_scale", num_feature_levels=1)


def _toy_deformable_detr_refine() -> Config:
    return _toy_deformable_detr().replace(name="toy_deformable_detr_refine", with_box_refine=True)


def _toy_deformable_detr_refine_two_stage() -> Config:
    return _toy_deformable_detr().replace(name="toy_deformable_detr_refine_two_stage", with_box_refine=True,
                                          two_stage=True)


PRESETS = {
    "detr_r50": _detr_r50,
    "deformable_detr_r50": _deformable_detr_r50,
    "deformable_detr_r50_single_scale": _deformable_detr_r50_single_scale,
    "deformable_detr_r50_refine": _deformable_detr_r50_refine,
    "deformable_detr_r50_refine_two_stage": _deformable_detr_r50_refine_two_stage,
    "toy_detr": _toy_detr,
    "toy_deformable_detr": _toy_deformable_detr,
    "toy_deformable_detr_single_scale": _toy_deformable_detr_single_scale,
    "toy_deformable_detr_refine": _toy_deformable_detr_refine,
    "toy_deformable_detr_refine_two_stage": _toy_deformable_detr_refine_two_stage,
}


def get_config(name: str, **overrides: Any) -> Config:
    """Return the preset ``name`` with ``overrides`` applied (unknown keys raise ``ValueError``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name]()).replace(**overrides)


def parse_override(text: str, cfg: Config) -> tuple[str, Any]:
    """Parse ``key=value`` into a typed override for ``cfg`` (``--set`` on the CLI).

    Lists are comma-separated (``train_scales=96,112,128``); bools accept true/false/1/0.
    """
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not hasattr(cfg, key):
        raise ValueError(f"unknown config key {key!r}")
    current = getattr(cfg, key)
    if isinstance(current, bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{key} expects true/false, got {raw!r}")
        return key, raw.lower() in ("true", "1", "yes")
    if isinstance(current, (list, tuple)):
        items = [int(v) if v.strip().lstrip("-").isdigit() else float(v) for v in raw.split(",") if v.strip()]
        return key, type(current)(items)
    if isinstance(current, int):
        return key, int(raw)
    if isinstance(current, float):
        return key, float(raw)
    return key, raw
