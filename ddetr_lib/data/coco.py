"""COCO-format detection data: loading, checking, batching.

The layout (COCO's, and the synthetic set's)::

    DATA_ROOT/train2017/*.jpg           DATA_ROOT/annotations/instances_train2017.json
    DATA_ROOT/val2017/*.jpg             DATA_ROOT/annotations/instances_val2017.json

An annotation file is one JSON object with ``images`` (id, file_name, width,
height), ``annotations`` (id, image_id, category_id, bbox = [x, y, w, h] in
pixels, area, iscrowd, segmentation) and ``categories`` (id, name).

What :class:`CocoDetection` does with an annotation, in order:

1. crowd regions (``iscrowd=1``, one box around a whole crowd) are dropped for
   training; for validation they are kept and flagged in ``target["iscrowd"]``
   (COCOeval ignores detections that fall on them);
2. ``[x, y, w, h]`` -> ``[x0, y0, x1, y1]``, clamped to the image;
3. boxes with no width or height left are dropped (COCO has a few);
4. images without any annotation are kept, with empty (0, 4) boxes: DETR learns
   from them that "nothing here" is an answer too.

Broken data raises :class:`DataError` with a one-line message that names the
file, so the training command can print it instead of a traceback.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.ops import box_convert

from ddetr_lib.utils import NestedTensor, nested_tensor_from_tensor_list


class DataError(Exception):
    """A problem with the dataset on disk; the message is one line and names the file.

    (Raised inside a DataLoader worker, PyTorch re-raises it in the main process
    with the worker's traceback prepended; the original message is its last line.)
    """


def _flat(error: BaseException) -> str:
    """An exception's text on one line (PIL and OS errors may span several)."""
    return " ".join(str(error).split())


# --------------------------------------------------------------------------- annotation files
def load_annotation_json(ann_file: str | os.PathLike) -> dict:
    """Read a COCO annotation file and check its structure; raise :class:`DataError` if it is broken.

    Checks: the file exists and is valid JSON; ``images``, ``annotations`` and
    ``categories`` are lists; every image has ``id``, ``file_name``, ``width``,
    ``height``; every annotation has ``image_id``, ``category_id`` and a 4-number
    ``bbox`` and refers to an image and a category that exist.
    """
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(f"{ann_file}: annotation file not found")
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{ann_file}: not valid JSON (truncated or corrupt?): {_flat(e.msg)} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{ann_file}: cannot read annotation file: {_flat(e)}") from None

    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a JSON object with 'images', 'annotations' and 'categories', got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{ann_file}: missing key '{key}' (a COCO annotation file needs 'images', 'annotations' and 'categories')")
        if not isinstance(data[key], list):
            raise DataError(f"{ann_file}: '{key}' should be a list, got {type(data[key]).__name__}")

    image_ids = set()
    for i, img in enumerate(data["images"]):
        missing = [k for k in ("id", "file_name", "width", "height") if not isinstance(img, dict) or k not in img]
        if missing:
            raise DataError(f"{ann_file}: images[{i}] lacks {missing}")
        if img["id"] in image_ids:
            raise DataError(f"{ann_file}: image id {img['id']} appears twice in 'images'")
        image_ids.add(img["id"])
    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataError(f"{ann_file}: categories[{i}] lacks 'id' or 'name'")
        cat_ids.add(cat["id"])
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in ("image_id", "category_id", "bbox") if not isinstance(ann, dict) or k not in ann]
        if missing:
            raise DataError(f"{ann_file}: annotations[{i}] lacks {missing}")
        ann_id = ann.get("id", f"#{i}")
        if ann["image_id"] not in image_ids:
            raise DataError(f"{ann_file}: annotation {ann_id} refers to image id {ann['image_id']}, which is not in 'images'")
        if ann["category_id"] not in cat_ids:
            raise DataError(f"{ann_file}: annotation {ann_id} has category_id {ann['category_id']}, which is not in 'categories'")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataError(f"{ann_file}: annotation {ann_id} has bbox {_flat(repr(bbox))}; expected [x, y, width, height]")
    return data


def load_coco_api(ann_file: str | os.PathLike) -> COCO:
    """A pycocotools ``COCO`` object for ``ann_file``, checked and without the "loading annotations..." chatter."""
    data = load_annotation_json(ann_file)
    coco = COCO()  # empty; fill it ourselves so the file is parsed (and checked) only once
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints "creating index..."
        coco.createIndex()
    return coco


def max_category_id(ann_file: str | os.PathLike) -> int:
    """The largest category id in an annotation file (COCO: 90).

    DETR's classifier has one logit per category id, so ``num_classes`` defaults
    to ``max_category_id + 1`` (id 0 and unused ids simply never get a target).
    """
    data = load_annotation_json(ann_file)
    ids = [c["id"] for c in data["categories"]] + [a["category_id"] for a in data["annotations"]]
    if not ids:
        raise DataError(f"{ann_file}: no categories")
    return int(max(ids))


# --------------------------------------------------------------------------- images
def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Open an image fully and convert it to RGB; :class:`DataError` if missing or unreadable.

    ``img.load()`` decodes the whole file now, so a truncated JPEG fails here
    (PIL raises "image file is truncated" unless someone set
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``).  Grayscale, CMYK, palette and
    RGBA images become RGB (an alpha channel is dropped).  EXIF orientation is
    ignored, as in COCO's own annotations.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":  # palette (maybe with transparency) -> RGBA first, avoids PIL's warning
                img = img.convert("RGBA")
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({_flat(e)})") from None


# --------------------------------------------------------------------------- dataset
class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset returning ``(image, target)`` for DETR.

    Args:
        img_folder: folder with the images (``file_name`` is relative to it).
        ann_file: COCO annotation json.
        transforms: ``(image, target) -> (image, target)``, e.g. from
            :func:`~ddetr_lib.data.transforms.make_transforms`.
        train: training targets drop crowd annotations (see ``keep_crowd``).
        keep_crowd: keep ``iscrowd=1`` annotations in the targets (flagged in
            ``target["iscrowd"]``); default ``not train``.  Note that a loss
            computed on such targets treats crowds as objects: filter them out
            (``target["iscrowd"] == 0``) before a validation loss.
        check_files: stat every image file now (cheap), so that a missing file
            is reported before training starts rather than hours into it.

    Returns, with ``transforms=make_transforms(...)``: ``image`` (3, H, W) float
    normalised; ``target`` a dict with ``boxes`` (K, 4) float32 normalised
    (cx, cy, w, h), ``labels`` (K,) int64 category ids, ``image_id`` () int64,
    ``orig_size`` (2,) int64 (h, w) of the file, ``size`` (2,) int64 (h, w)
    after the transforms, ``area`` (K,) float32, ``iscrowd`` (K,) int64.
    Without transforms: the PIL RGB image, and ``boxes`` a
    ``tv_tensors.BoundingBoxes`` in pixel (x0, y0, x1, y1), ``area`` the
    annotation's area, ``size == orig_size``.

    ``.coco`` is the pycocotools ``COCO`` object (for ``COCOeval``), ``.ids`` the
    image ids in dataset order.
    """

    def __init__(
        self,
        img_folder: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms: Callable | None = None,
        train: bool = False,
        keep_crowd: bool | None = None,
        check_files: bool = True,
    ):
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        if not self.img_folder.is_dir():
            raise DataError(f"{self.img_folder}: image folder not found")
        self.coco = load_coco_api(self.ann_file)
        self.ids = sorted(self.coco.imgs)
        self.transforms = transforms
        self.train = train
        self.keep_crowd = (not train) if keep_crowd is None else keep_crowd
        if check_files:
            self._check_files()

    def _check_files(self) -> None:
        missing = [
            self.img_folder / self.coco.imgs[i]["file_name"]
            for i in self.ids
            if not os.path.isfile(self.img_folder / self.coco.imgs[i]["file_name"])
        ]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"{missing[0]}: image file not found{more}; listed in {self.ann_file}")

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, index: int) -> Image.Image:
        info = self.coco.imgs[self.ids[index]]
        path = self.img_folder / info["file_name"]
        image = load_rgb_image(path)
        if image.size != (info["width"], info["height"]):
            raise DataError(
                f"{path}: image is {image.size[0]}x{image.size[1]} but {self.ann_file} says "
                f"{info['width']}x{info['height']} (width x height)"
            )
        return image

    def load_target(self, index: int) -> dict[str, Any]:
        """The target in pixels of the original image (before transforms)."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        w, h = info["width"], info["height"]
        anns = self.coco.imgToAnns.get(image_id, [])
        if not self.keep_crowd:
            anns = [a for a in anns if not a.get("iscrowd", 0)]

        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)  # (K, 4)
        xyxy = box_convert(xywh, "xywh", "xyxy")  # (K, 4) x0 y0 x1 y1
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # (K,) drop empty boxes

        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        box_area = (xywh[:, 2] * xywh[:, 3]).tolist()
        area = torch.tensor([float(a.get("area", ba)) for a, ba in zip(anns, box_area)], dtype=torch.float32)
        iscrowd = torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64)
        return {
            "boxes": tv_tensors.BoundingBoxes(xyxy[keep], format="XYXY", canvas_size=(h, w)),
            "labels": labels[keep],
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "size": torch.tensor([h, w], dtype=torch.int64),
            "area": area[keep],
            "iscrowd": iscrowd[keep],
        }

    def __getitem__(self, index: int):
        image = self.load_image(index)
        target = self.load_target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


# --------------------------------------------------------------------------- building and batching
def build_dataset(image_set: str, data_root: str | os.PathLike, cfg) -> CocoDetection:
    """``image_set`` "train" or "val" of the COCO-layout folder ``data_root``, with the cfg's transforms."""
    from ddetr_lib.data.transforms import make_transforms

    if image_set not in ("train", "val"):
        raise ValueError(f"image_set: expected 'train' or 'val', got {image_set!r}")
    root = Path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: data root not found")
    img_folder = root / f"{image_set}2017"
    ann_file = root / "annotations" / f"instances_{image_set}2017.json"
    if not img_folder.is_dir():
        raise DataError(f"{img_folder}: image folder not found (expected the COCO layout {image_set}2017/ under {root})")
    if not ann_file.is_file():
        raise DataError(f"{ann_file}: annotation file not found")
    return CocoDetection(img_folder, ann_file, transforms=make_transforms(image_set, cfg), train=image_set == "train")


def collate_fn(batch) -> tuple[NestedTensor, list[dict]]:
    """Batch ``[(image, target), ...]`` into a padded :class:`NestedTensor` and the list of targets.

    Images of different sizes are copied top-left into a zero tensor
    (B, 3, H_max, W_max); ``mask`` (B, H_max, W_max) is True on the padding.
    Boxes stay normalised to each image's own (unpadded) size.
    """
    images, targets = zip(*batch)
    return nested_tensor_from_tensor_list(list(images)), list(targets)
