"""Augmentation and normalisation for detection, with ``torchvision.transforms.v2``.

A sample is a pair ``(image, target)``.  On the way in (from
:class:`~ddetr_lib.data.coco.CocoDetection`) the image is a PIL image and
``target["boxes"]`` is a :class:`tv_tensors.BoundingBoxes` in pixel
(x0, y0, x1, y1) with the image's ``canvas_size``: because the boxes are a
tv_tensor, every geometric v2 transform (flip, resize, crop) moves them together
with the pixels.  Plain tensors in the target (``labels``, ``area``, ``iscrowd``,
``image_id``, ...) pass through untouched.

On the way out the image is a float tensor (3, H, W) normalised with the
ImageNet mean/std, and ``target["boxes"]`` is a plain float32 tensor (K, 4) of
normalised (cx, cy, w, h) -- the form DETR predicts and the loss compares.

The training recipe is the official Deformable DETR one (DETR's, too)::

    RandomHorizontalFlip
    RandomChoice(
        RandomShortSideResize(train_scales, max_size=train_max_size),
        [RandomShortSideResize(crop_resize_choices),          # no cap
         RandomSizeCrop(crop_min, crop_max),
         DropEmptyBoxes(),                                    # the only box filter
         RandomShortSideResize(train_scales, max_size=train_max_size)],
    )
    normalise

and validation is ``RandomShortSideResize([val_size], max_size=val_max_size)``
(one size, so not random) then normalise.

Choices worth knowing:

* Boxes are dropped in one place only, as in the official code: right after
  the random crop, a box the crop left empty (no width or no height inside
  the window) goes, together with its label, area and crowd flag
  (:class:`DropEmptyBoxes`).  A box that a resize shrinks below a pixel is
  kept (it is still an object, and the loss works on normalised boxes), and
  validation drops nothing.  (Empty boxes in the annotation file are dropped
  when it is read, see :mod:`ddetr_lib.data.coco`.)
* ``target["area"]`` after the transforms is the **box area in pixels of the
  transformed image**, recomputed at the end.  (The official code scales the
  annotation's segment area by the resize factor but recomputes box areas after
  a crop; one rule is simpler.  COCO evaluation reads areas from the annotation
  file, never from here.)
* Our custom transforms draw their random numbers from ``torch``'s generator,
  like torchvision's, so ``torch.manual_seed`` makes a pipeline repeatable and
  DataLoader workers get different streams automatically.
"""
from __future__ import annotations

from typing import Any, Sequence

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.ops import box_convert
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def short_side_resize_size(height: int, width: int, size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output (h, w) when resizing the short side to ``size`` with the long side capped at ``max_size``.

    The rule of the official DETR code: if scaling the short side to ``size``
    would make the long side exceed ``max_size``, lower ``size`` to
    ``round(max_size * short / long)``; the short side then becomes exactly
    ``size`` and the long side ``int(size * long / short)`` (rounded down).

    >>> short_side_resize_size(480, 640, 800, 1333)    # 800 / 480 * 640 = 1066.7
    (800, 1066)
    >>> short_side_resize_size(400, 1200, 800, 1333)   # capped: 1333 * 400 / 1200 = 444.3
    (444, 1332)
    """
    short, long = (height, width) if height <= width else (width, height)
    if max_size is not None and long / short * size > max_size:
        size = int(round(max_size * short / long))
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _canvas_size(flat_inputs: list[Any]) -> tuple[int, int]:
    """(h, w) of the sample, read from its image (or its boxes' canvas)."""
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.BoundingBoxes, tv_tensors.Mask, PIL.Image.Image, torch.Tensor)):
            h, w = F.get_size(inpt)
            return int(h), int(w)
    raise TypeError("no image or boxes found in the sample")


class RandomShortSideResize(v2.Transform):
    """Resize so that the short side is a random choice of ``sizes``, the long side at most ``max_size``.

    The official DETR ``RandomResize(sizes, max_size)``.  torchvision's
    ``v2.RandomShortestSize`` is close but multiplies both sides by one float
    factor and truncates, which can leave the short side at ``size - 1``; here
    the short side is exactly the chosen size (see :func:`short_side_resize_size`).
    """

    def __init__(self, sizes: Sequence[int] | int, max_size: int | None = None):
        super().__init__()
        self.sizes = [int(sizes)] if isinstance(sizes, int) else [int(s) for s in sizes]
        if not self.sizes:
            raise ValueError("sizes: expected at least one size")
        self.max_size = max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _canvas_size(flat_inputs)
        size = self.sizes[int(torch.randint(len(self.sizes), ()))]
        return {"size": short_side_resize_size(h, w, size, self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # Boxes are scaled by (new_w / old_w, new_h / old_h) by the same kernel call.
        return self._call_kernel(F.resize, inpt, size=list(params["size"]), antialias=True)

    # torchvision < 0.21 called these _get_params / _transform
    _get_params = make_params
    _transform = transform


class RandomSizeCrop(v2.Transform):
    """Crop a random window whose width and height are each uniform in [min_size, min(side, max_size)].

    The official DETR ``RandomSizeCrop``: the crop's width is drawn in
    ``[min_size, min(image width, max_size)]`` and its height likewise (so the
    aspect ratio changes too), then the window is placed uniformly at random.
    If the image is smaller than ``min_size`` the crop is the whole side.
    Boxes are shifted and clipped to the window by ``F.crop``.
    """

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) > max_size ({max_size})")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _canvas_size(flat_inputs)
        hi_w, hi_h = min(w, self.max_size), min(h, self.max_size)
        cw = int(torch.randint(min(self.min_size, hi_w), hi_w + 1, ()))
        ch = int(torch.randint(min(self.min_size, hi_h), hi_h + 1, ()))
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)

    _get_params = make_params
    _transform = transform


class ToDetrTarget:
    """Last step: plain tensors, boxes as normalised (cx, cy, w, h), ``size`` and ``area`` updated.

    Takes and returns ``(image, target)``.  Image: (3, H, W) tensor.  In the
    target: ``boxes`` (K, 4) pixel XYXY BoundingBoxes -> (K, 4) float32 plain
    tensor (cx, cy, w, h) / (W, H, W, H); ``area`` (K,) = box area in pixels of
    this image; ``size`` = (H, W).
    """

    def __call__(self, image, target):
        h, w = image.shape[-2:]
        target = dict(target)
        xyxy = target["boxes"].as_subclass(torch.Tensor).to(torch.float32).reshape(-1, 4)  # (K, 4) pixels
        target["area"] = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])  # (K,)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        target["boxes"] = box_convert(xyxy, "xyxy", "cxcywh") / scale  # (K, 4) in [0, 1]
        target["size"] = torch.tensor([h, w], dtype=torch.int64)
        return image.as_subclass(torch.Tensor), target

    def __repr__(self) -> str:
        return "ToDetrTarget()"


class DropEmptyBoxes:
    """After a crop: drop the boxes with no width or no height left, with their per-box fields.

    The official ``crop`` keeps a box when ``x1 > x0`` and ``y1 > y0`` after
    clipping it to the window.  (``F.crop`` has already clipped the boxes.)
    Takes and returns ``(image, target)``; ``labels``, ``area`` and ``iscrowd``
    are filtered with the boxes.
    """

    per_box = ("labels", "area", "iscrowd")

    def __call__(self, image, target):
        boxes = target["boxes"]  # (K, 4) BoundingBoxes, pixel XYXY
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (K,)
        if bool(keep.all()):
            return image, target
        target = dict(target)
        target["boxes"] = tv_tensors.wrap(boxes.as_subclass(torch.Tensor)[keep], like=boxes)
        for key in self.per_box:
            if key in target:
                target[key] = target[key][keep]
        return image, target

    def __repr__(self) -> str:
        return "DropEmptyBoxes()"


def _normalize_steps() -> list:
    return [
        v2.ToDtype(torch.float32, scale=True),  # uint8 [0, 255] -> float [0, 1] (images only)
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ToDetrTarget(),
    ]


def make_transforms(image_set: str, cfg) -> v2.Compose:
    """The train or val pipeline, sizes taken from ``cfg`` (a :class:`~ddetr_lib.config.Config`).

    Uses ``cfg.train_scales``, ``train_max_size``, ``crop_resize_choices``,
    ``crop_min``, ``crop_max``, ``random_crop`` (train) and ``val_size``, ``val_max_size`` (val).
    Call as ``image, target = transforms(image, target)``.
    """
    if image_set == "train":
        multi_scale = RandomShortSideResize(cfg.train_scales, max_size=cfg.train_max_size)
        crop_then_scale = v2.Compose(
            [
                RandomShortSideResize(cfg.crop_resize_choices),
                RandomSizeCrop(cfg.crop_min, cfg.crop_max),
                DropEmptyBoxes(),
                RandomShortSideResize(cfg.train_scales, max_size=cfg.train_max_size),
            ]
        )
        return v2.Compose(
            [
                v2.ToImage(),  # PIL -> tv_tensors.Image (3, H, W) uint8
                v2.RandomHorizontalFlip(p=0.5),
                v2.RandomChoice([multi_scale, crop_then_scale]) if cfg.random_crop else multi_scale,
                *_normalize_steps(),
            ]
        )
    if image_set == "val":
        return v2.Compose(
            [
                v2.ToImage(),
                RandomShortSideResize([cfg.val_size], max_size=cfg.val_max_size),
                *_normalize_steps(),
            ]
        )
    raise ValueError(f"image_set: expected 'train' or 'val', got {image_set!r}")
