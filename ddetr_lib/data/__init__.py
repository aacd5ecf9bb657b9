"""Data: the synthetic shapes set, COCO-format loading, augmentation and batching.

    from ddetr_lib.data import build_dataset, collate_fn, DataError
    from ddetr_lib.data.synthetic import generate

    generate("data/synthetic_demo", setting="demo")           # COCO layout, seconds
    ds = build_dataset("train", "data/synthetic_demo", cfg)   # (image, target) pairs
    loader = DataLoader(ds, batch_size=8, collate_fn=collate_fn)
"""
from ddetr_lib.data.coco import (
    CocoDetection,
    DataError,
    build_dataset,
    collate_fn,
    load_annotation_json,
    load_coco_api,
    load_rgb_image,
    max_category_id,
)
from ddetr_lib.data.transforms import (
    DropEmptyBoxes,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomShortSideResize,
    RandomSizeCrop,
    ToDetrTarget,
    make_transforms,
    short_side_resize_size,
)

__all__ = [
    "CocoDetection",
    "DataError",
    "build_dataset",
    "collate_fn",
    "load_annotation_json",
    "load_coco_api",
    "load_rgb_image",
    "max_category_id",
    "SETTINGS",
    "SyntheticSpec",
    "generate",
    "object_size_stats",
    "DropEmptyBoxes",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomShortSideResize",
    "RandomSizeCrop",
    "ToDetrTarget",
    "make_transforms",
    "short_side_resize_size",
]

_SYNTHETIC = ("SETTINGS", "SyntheticSpec", "generate", "object_size_stats")


def __getattr__(name):
    # The synthetic module is imported on first use, not here, so that
    # ``python -m ddetr_lib.data.synthetic`` runs it fresh (no runpy warning).
    if name in _SYNTHETIC:
        from ddetr_lib.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
