"""Tests of the data pipeline: COCO loading quirks, errors, transforms, batching, synthetic set.

Expectations are computed by hand (box arithmetic written out in the tests) or
taken from independent sources (pycocotools, pixels drawn into the image).
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from torchvision import tv_tensors
from torchvision.transforms import v2

from ddetr_lib.config import get_config
from ddetr_lib.data import (
    CocoDetection,
    DataError,
    build_dataset,
    collate_fn,
    make_transforms,
    max_category_id,
    short_side_resize_size,
)
from ddetr_lib.data import synthetic
from ddetr_lib.data.transforms import DropEmptyBoxes, RandomShortSideResize, RandomSizeCrop
from ddetr_lib.viz import boxes_to_pixels, denormalize, draw_boxes, plot_dataset_examples

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


# --------------------------------------------------------------------------- helpers
def _write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _save_jpeg(path: Path, size=(64, 48), mode="RGB", seed=0) -> Path:
    """A noisy JPEG (noise makes the file big enough to truncate meaningfully)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode=mode).save(path, quality=90)
    return path


def _assert_one_line_naming(err: pytest.ExceptionInfo, name: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert name in msg, f"{name!r} not in {msg!r}"


def _cfg(**kw):
    # the official recipe's pipeline, crop branch included
    return get_config("toy_detr", **{"random_crop": True, **kw})


# --------------------------------------------------------------------------- a COCO-quirks set
@pytest.fixture(scope="module")
def quirks(tmp_path_factory) -> dict:
    """A tiny COCO set with the awkward cases real data has.

    image 1  gray.jpg   40x30 grayscale JPEG: a normal box, a box hanging off the
                        bottom-right corner, a zero-width box, a crowd RLE region
    image 2  rgba.png   20x20 RGBA PNG, no annotations
    image 3  rgb.jpg    64x48 RGB JPEG, one box
    category ids 1, 5, 90 (gaps, as in COCO)
    """
    root = tmp_path_factory.mktemp("quirks")
    img_dir = root / "val2017"
    _save_jpeg(img_dir / "gray.jpg", size=(40, 30), mode="L")
    Image.fromarray(np.full((20, 20, 4), (10, 200, 30, 128), dtype=np.uint8), mode="RGBA").save(img_dir / "rgba.png")
    _save_jpeg(img_dir / "rgb.jpg", size=(64, 48), seed=1)
    ann = {
        "images": [
            {"id": 1, "file_name": "gray.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "rgba.png", "width": 20, "height": 20},
            {"id": 3, "file_name": "rgb.jpg", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 5, 10, 10], "area": 80.0, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 90, "bbox": [30, 20, 20, 20], "area": 300.0, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [5, 5, 0, 10], "area": 0.0, "iscrowd": 0},
            {
                "id": 4, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25.0, "iscrowd": 1,
                "segmentation": {"counts": [0, 5, 25, 5, 25, 5, 25, 5, 25, 5, 1075], "size": [30, 40]},
            },
            {"id": 5, "image_id": 3, "category_id": 90, "bbox": [8, 4, 16, 8], "area": 128.0, "iscrowd": 0},
        ],
        "categories": [
            {"id": 1, "name": "one", "supercategory": "x"},
            {"id": 5, "name": "five", "supercategory": "x"},
            {"id": 90, "name": "ninety", "supercategory": "x"},
        ],
    }
    ann_file = _write_json(root / "annotations" / "instances_val2017.json", ann)
    return {"root": root, "img_dir": img_dir, "ann_file": ann_file, "ann": ann}


def test_quirks_raw_targets_train(quirks):
    ds = CocoDetection(quirks["img_dir"], quirks["ann_file"], transforms=None, train=True)
    assert len(ds) == 3 and ds.ids == [1, 2, 3]
    image, t = ds[0]
    # Grayscale JPEG -> RGB with three equal channels.
    arr = np.asarray(image)
    assert image.mode == "RGB" and arr.shape == (30, 40, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])
    # Normal box [10,5,10,10] -> xyxy [10,5,20,15]; hanging box [30,20,20,20] -> [30,20,50,40]
    # clamped to the 40x30 image -> [30,20,40,30]; zero-width box and crowd dropped.
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].canvas_size == (30, 40)
    torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), torch.tensor([[10.0, 5, 20, 15], [30, 20, 40, 30]]))
    assert t["labels"].tolist() == [1, 90] and t["labels"].dtype == torch.int64
    assert t["iscrowd"].tolist() == [0, 0]
    assert t["area"].tolist() == [80.0, 300.0]  # the annotation's area, untouched
    assert t["image_id"].item() == 1 and t["image_id"].dim() == 0
    assert t["orig_size"].tolist() == [30, 40] and t["size"].tolist() == [30, 40]


def test_quirks_crowd_kept_for_val(quirks):
    ds = CocoDetection(quirks["img_dir"], quirks["ann_file"], train=False)
    _, t = ds[0]
    assert t["labels"].tolist() == [1, 90, 1]
    assert t["iscrowd"].tolist() == [0, 0, 1]
    torch.testing.assert_close(t["boxes"][2].as_subclass(torch.Tensor), torch.tensor([0.0, 0, 5, 5]))


def test_quirks_empty_image_and_rgba(quirks):
    ds = CocoDetection(quirks["img_dir"], quirks["ann_file"], train=True)
    image, t = ds[1]  # rgba.png, no annotations
    assert image.mode == "RGB" and image.size == (20, 20)
    assert np.asarray(image)[0, 0].tolist() == [10, 200, 30]  # alpha dropped, colour kept
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["area"].shape == (0,)
    # Through both pipelines it stays empty and well-formed.
    for image_set in ("train", "val"):
        ds.transforms = make_transforms(image_set, _cfg())
        img, tt = ds[1]
        assert img.dtype == torch.float32 and img.shape[0] == 3
        assert tt["boxes"].shape == (0, 4) and tt["boxes"].dtype == torch.float32
        assert tt["labels"].shape == (0,) and tt["iscrowd"].shape == (0,) and tt["area"].shape == (0,)


def test_quirks_val_transform_exact_numbers(quirks):
    # val_size 60: the 40x30 (w x h) image's short side 30 -> 60, so the scale is 2
    # and the output is 80 x 60 (w x h).
    cfg = _cfg(val_size=60, val_max_size=1000)
    ds = CocoDetection(quirks["img_dir"], quirks["ann_file"], transforms=make_transforms("val", cfg), train=True)
    image, t = ds[0]
    assert image.shape == (3, 60, 80) and image.dtype == torch.float32
    assert type(image) is torch.Tensor and type(t["boxes"]) is torch.Tensor
    # [10,5,20,15] x2 = [20,10,40,30]: cx 30/80, cy 20/60, w 20/80, h 20/60
    # clamped [30,20,40,30] x2 = [60,40,80,60]: cx 70/80, cy 50/60, w 20/80, h 20/60
    expected = torch.tensor([[30 / 80, 20 / 60, 20 / 80, 20 / 60], [70 / 80, 50 / 60, 20 / 80, 20 / 60]])
    torch.testing.assert_close(t["boxes"], expected)
    assert t["labels"].tolist() == [1, 90]
    assert t["size"].tolist() == [60, 80] and t["orig_size"].tolist() == [30, 40]
    torch.testing.assert_close(t["area"], torch.tensor([400.0, 400.0]))  # box areas in output pixels
    assert t["image_id"].item() == 1 and t["iscrowd"].tolist() == [0, 0]
    # With a long-side cap of 72: 60 * 40/30 = 80 > 72, so the short side becomes
    # round(72 * 30 / 40) = 54 and the long side int(54 * 40 / 30) = 72.
    ds.transforms = make_transforms("val", _cfg(val_size=60, val_max_size=72))
    image, t = ds[0]
    assert image.shape == (3, 54, 72)
    torch.testing.assert_close(t["boxes"], expected)  # normalised boxes do not depend on the scale
    # The pixel values are the ImageNet-normalised ones: undo and compare with a plain resize.
    ds.transforms = make_transforms("val", _cfg(val_size=30, val_max_size=1000))  # identity size
    image, _ = ds[0]
    raw = torch.from_numpy(np.array(ds.load_image(0))).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(image * STD + MEAN, raw, atol=1e-5, rtol=0)


def test_load_rgb_image_modes(tmp_path):
    """CMYK JPEG, palette PNG with transparency, grayscale+alpha: all come back as RGB."""
    from ddetr_lib.data import load_rgb_image

    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # pure red in CMYK
    pal = Image.new("P", (6, 4), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 1 = blue
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png")
    Image.new("LA", (6, 4), (77, 10)).save(tmp_path / "la.png")
    for name, colour in (("cmyk.jpg", (255, 0, 0)), ("pal.png", (0, 0, 255)), ("la.png", (77, 77, 77))):
        img = load_rgb_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (6, 4)
        assert np.abs(np.asarray(img)[1, 1].astype(int) - colour).max() <= 3, name


def test_error_image_size_disagrees_with_annotation(tmp_path):
    bad = json.loads(json.dumps(_GOOD))
    bad["images"][0]["width"] = 65
    img_dir, ann_file = _broken_set(tmp_path, bad)
    with pytest.raises(DataError) as err:
        CocoDetection(img_dir, ann_file)[0]
    _assert_one_line_naming(err, str(img_dir / "a.jpg"))


def test_max_category_id(quirks):
    assert max_category_id(quirks["ann_file"]) == 90  # ids 1, 5, 90: the default num_classes is 91


def test_pycocotools_is_silent_and_coco_attribute(quirks, capsys):
    ds = CocoDetection(quirks["img_dir"], quirks["ann_file"])
    assert capsys.readouterr().out == ""
    assert isinstance(ds.coco, COCO)
    assert sorted(ds.coco.getCatIds()) == [1, 5, 90]
    assert len(ds.coco.getAnnIds(imgIds=[1])) == 4


# --------------------------------------------------------------------------- DataError
def _broken_set(tmp_path: Path, ann) -> tuple[Path, Path]:
    img_dir = tmp_path / "train2017"
    _save_jpeg(img_dir / "a.jpg")
    ann_file = tmp_path / "annotations" / "instances_train2017.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(ann if isinstance(ann, str) else json.dumps(ann))
    return img_dir, ann_file


_GOOD = {
    "images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}],
    "categories": [{"id": 1, "name": "thing"}],
}


def test_error_truncated_json(tmp_path):
    text = json.dumps(_GOOD)
    img_dir, ann_file = _broken_set(tmp_path, text[: len(text) // 2])
    with pytest.raises(DataError) as err:
        CocoDetection(img_dir, ann_file)
    _assert_one_line_naming(err, str(ann_file))
    with pytest.raises(DataError) as err:
        max_category_id(ann_file)
    _assert_one_line_naming(err, str(ann_file))


def test_error_json_missing_images(tmp_path):
    img_dir, ann_file = _broken_set(tmp_path, {k: v for k, v in _GOOD.items() if k != "images"})
    with pytest.raises(DataError) as err:
        CocoDetection(img_dir, ann_file)
    _assert_one_line_naming(err, str(ann_file))
    assert "images" in str(err.value)


def test_error_annotation_refers_to_missing_image(tmp_path):
    bad = json.loads(json.dumps(_GOOD))
    bad["annotations"][0]["image_id"] = 7
    img_dir, ann_file = _broken_set(tmp_path, bad)
    with pytest.raises(DataError) as err:
        CocoDetection(img_dir, ann_file)
    _assert_one_line_naming(err, str(ann_file))
    assert "7" in str(err.value)


def test_error_missing_image_file(tmp_path):
    bad = json.loads(json.dumps(_GOOD))
    bad["images"].append({"id": 2, "file_name": "gone.jpg", "width": 10, "height": 10})
    img_dir, ann_file = _broken_set(tmp_path, bad)
    with pytest.raises(DataError) as err:  # found when the dataset is built
        CocoDetection(img_dir, ann_file)
    _assert_one_line_naming(err, "gone.jpg")
    # ... and at load time, if it disappears later.
    img_dir, ann_file = _broken_set(tmp_path, _GOOD)
    ds = CocoDetection(img_dir, ann_file)
    (img_dir / "a.jpg").unlink()
    with pytest.raises(DataError) as err:
        ds[0]
    _assert_one_line_naming(err, str(img_dir / "a.jpg"))


def test_error_truncated_jpeg(tmp_path):
    img_dir, ann_file = _broken_set(tmp_path, _GOOD)
    path = img_dir / "a.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # chop the file: the header still parses
    ds = CocoDetection(img_dir, ann_file)  # the file exists, so building succeeds
    with pytest.raises(DataError) as err:
        ds[0]
    _assert_one_line_naming(err, str(path))
    # From a DataLoader worker the error is re-raised as a DataError whose last line is ours.
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_fn)
    batches, message = iter(loader), None
    try:
        next(batches)
    except DataError as e:
        message = str(e)  # keep only the text: the traceback would keep the worker alive
    del batches
    gc.collect()  # the re-raised error sits in a reference cycle; free the worker here (torch takes ~5 s to join it)
    assert message is not None
    last = message.strip().splitlines()[-1]
    assert str(path) in last and "cannot read image" in last


def test_error_missing_folders(tmp_path):
    cfg = _cfg()
    with pytest.raises(DataError) as err:
        build_dataset("train", tmp_path / "nowhere", cfg)
    _assert_one_line_naming(err, "nowhere")
    _broken_set(tmp_path, _GOOD)  # train2017 + annotations exist, val2017 does not
    with pytest.raises(DataError) as err:
        build_dataset("val", tmp_path, cfg)
    _assert_one_line_naming(err, str(tmp_path / "val2017"))
    (tmp_path / "val2017").mkdir()
    with pytest.raises(DataError) as err:
        build_dataset("val", tmp_path, cfg)
    _assert_one_line_naming(err, "instances_val2017.json")
    assert isinstance(build_dataset("train", tmp_path, cfg), CocoDetection)


# --------------------------------------------------------------------------- transforms
def _sample(h, w, boxes_xyxy, fill_boxes=True, labels=None):
    """A black uint8 image with each box filled in white, and its raw target."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    boxes = torch.tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4)
    if fill_boxes:
        for x0, y0, x1, y1 in boxes.int().tolist():
            img[y0:y1, x0:x1] = 255
    k = len(boxes)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
        "labels": torch.tensor(labels if labels is not None else list(range(1, k + 1)), dtype=torch.int64),
        "area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]),
        "iscrowd": torch.zeros(k, dtype=torch.int64),
        "image_id": torch.tensor(1),
        "orig_size": torch.tensor([h, w]),
        "size": torch.tensor([h, w]),
    }
    return Image.fromarray(img), target


def test_short_side_resize_size_by_hand():
    # (h, w, size, max) -> (h', w'), worked out by hand from the rule
    assert short_side_resize_size(480, 640, 800, 1333) == (800, 1066)  # 800 * 640/480 = 1066.7
    assert short_side_resize_size(640, 480, 800, 1333) == (1066, 800)
    assert short_side_resize_size(400, 1200, 800, 1333) == (444, 1332)  # round(1333/3)=444, 444*3
    assert short_side_resize_size(100, 100, 50, None) == (50, 50)
    assert short_side_resize_size(30, 40, 60, 72) == (54, 72)  # round(72*30/40) = 54
    assert short_side_resize_size(123, 77, 77, 1000) == (123, 77)  # already that size


def test_resize_transform_sizes_and_boxes():
    image, target = _sample(30, 40, [[4, 6, 20, 18]])
    out_img, out_t = RandomShortSideResize([60], max_size=1000)(v2.ToImage()(image), target)
    assert tuple(out_img.shape[-2:]) == (60, 80)
    torch.testing.assert_close(out_t["boxes"].as_subclass(torch.Tensor), torch.tensor([[8.0, 12, 40, 36]]))
    assert out_t["boxes"].canvas_size == (60, 80)
    out_img, _ = RandomShortSideResize([60], max_size=72)(v2.ToImage()(image), target)
    assert tuple(out_img.shape[-2:]) == (54, 72)
    # A list of sizes: every draw is one of them.
    torch.manual_seed(0)
    seen = {tuple(RandomShortSideResize([10, 20, 30])(v2.ToImage()(image), target)[0].shape[-2:]) for _ in range(30)}
    assert seen == {(10, 13), (20, 26), (30, 40)}  # 10*40/30 = 13.3, 20*40/30 = 26.7


def test_flip_maps_boxes_and_pixels():
    image, target = _sample(20, 10, [[1, 2, 4, 6]])
    out_img, out_t = v2.RandomHorizontalFlip(p=1.0)(v2.ToImage()(image), target)
    # x -> W - x: [1, 4] -> [10 - 4, 10 - 1] = [6, 9]
    torch.testing.assert_close(out_t["boxes"].as_subclass(torch.Tensor), torch.tensor([[6.0, 2, 9, 6]]))
    assert torch.equal(out_img, torch.flip(v2.ToImage()(image), dims=[-1]))
    assert isinstance(make_transforms("train", _cfg()).transforms[1], v2.RandomHorizontalFlip)


def test_crop_keeps_boxes_on_the_pixels():
    """Crop many times; the box must be exactly the extent of the white pixels left (crop does not interpolate)."""
    image, target = _sample(80, 100, [[30, 20, 60, 50], [0, 70, 8, 80]])
    image = v2.ToImage()(image)
    crop = RandomSizeCrop(25, 70)
    torch.manual_seed(0)
    kept_partial = 0
    for _ in range(60):
        out_img, out_t = crop(image, target)
        h, w = out_img.shape[-2:]
        assert 25 <= w <= 70 and 25 <= h <= 70
        out_img, out_t = DropEmptyBoxes()(out_img, out_t)
        white = out_img[0] == 255
        boxes = out_t["boxes"].as_subclass(torch.Tensor)
        assert len(boxes) == len(out_t["labels"])
        covered = torch.zeros_like(white)
        for x0, y0, x1, y1 in boxes.tolist():
            # each kept box covers pixels that are all white...
            assert white[int(y0) : int(y1), int(x0) : int(x1)].all()
            covered[int(y0) : int(y1), int(x0) : int(x1)] = True
            kept_partial += (x1 - x0) < 30 or (y1 - y0) < 30
        # ... and every white pixel is inside a box
        assert torch.equal(covered, white)
    assert kept_partial > 0  # some crops cut a box


def test_box_filter_only_drops_empty_boxes_after_a_crop():
    """As in the official code: a crop drops the boxes it leaves empty (with their labels,
    areas and crowd flags); a resize never drops a box, even one shrunk under a pixel."""
    from torchvision.transforms.v2 import functional as F

    boxes_xyxy = [[2, 2, 10, 10], [30, 30, 31, 38]]
    image, target = _sample(40, 40, boxes_xyxy, labels=[3, 7])
    target["iscrowd"] = torch.tensor([0, 1])
    image = v2.ToImage()(image)
    # the window (top 0, left 0, 20 x 20) keeps the first box whole and leaves the second empty
    img = F.crop(image, 0, 0, 20, 20)
    cropped = F.crop(target["boxes"], 0, 0, 20, 20)
    assert cropped.as_subclass(torch.Tensor)[1].tolist() == [20.0, 20.0, 20.0, 20.0]  # clipped to nothing
    _, t = DropEmptyBoxes()(img, {**target, "boxes": cropped})
    assert t["boxes"].as_subclass(torch.Tensor).tolist() == [[2.0, 2.0, 10.0, 10.0]]
    assert t["labels"].tolist() == [3] and t["area"].tolist() == [64.0] and t["iscrowd"].tolist() == [0]
    assert isinstance(t["boxes"], tv_tensors.BoundingBoxes) and t["boxes"].canvas_size == (20, 20)
    # Resizing 40 -> 10 px makes the 1-px-wide box 0.25 px wide: kept in val and in train.
    cfg = _cfg(val_size=10, val_max_size=1000, train_scales=[10], train_max_size=1000, random_crop=False)
    for image_set in ("val", "train"):
        image, target = _sample(40, 40, boxes_xyxy, labels=[3, 7])
        _, t = make_transforms(image_set, cfg)(image, target)
        assert t["labels"].tolist() == [3, 7], image_set
        assert sorted(t["boxes"][:, 2].tolist()) == pytest.approx([1 / 40, 8 / 40])


def test_train_pipeline_boxes_follow_pixels():
    """Full train recipe (flip + either branch + normalise): normalised boxes still frame the rectangles."""
    cfg = _cfg(train_scales=[48, 64], train_max_size=90, crop_resize_choices=[50, 60], crop_min=30, crop_max=45)
    tf = make_transforms("train", cfg)
    image, target = _sample(60, 80, [[10, 10, 30, 40], [50, 20, 75, 35]], labels=[3, 7])
    torch.manual_seed(1)
    sizes = set()
    for _ in range(40):
        img, t = tf(image, target)
        assert img.dtype == torch.float32 and type(img) is torch.Tensor
        h, w = img.shape[-2:]
        sizes.add((h, w))
        assert t["size"].tolist() == [h, w]
        assert min(h, w) in (48, 64) and max(h, w) <= 90
        b = t["boxes"]
        assert b.dtype == torch.float32 and b.shape[1] == 4
        assert len(b) == len(t["labels"]) == len(t["area"]) == len(t["iscrowd"])
        assert set(t["labels"].tolist()) <= {3, 7}
        xyxy = boxes_to_pixels(b, (h, w))
        assert (xyxy >= -1e-4).all() and (xyxy[:, 0::2] <= w + 1e-4).all() and (xyxy[:, 1::2] <= h + 1e-4).all()
        torch.testing.assert_close(t["area"], (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]), atol=1e-3, rtol=1e-4)
        # Pixels that are clearly white after resizing lie inside some box (1 px slack for interpolation).
        bright = (img * STD + MEAN)[0] > 0.9
        inside = torch.zeros_like(bright)
        for x0, y0, x1, y1 in xyxy.tolist():
            inside[max(0, math.floor(y0) - 1) : math.ceil(y1) + 1, max(0, math.floor(x0) - 1) : math.ceil(x1) + 1] = True
        assert not (bright & ~inside).any()
        # Each box frames a bright region: its centre pixel is white.
        for x0, y0, x1, y1 in xyxy.tolist():
            if x1 - x0 >= 3 and y1 - y0 >= 3:
                assert bright[int((y0 + y1) / 2), int((x0 + x1) / 2)]
    assert len(sizes) > 3  # multi-scale and crops give varied sizes


# --------------------------------------------------------------------------- collate
def test_collate_fn_mask():
    a, b = torch.rand(3, 4, 5), torch.rand(3, 6, 3)
    ta, tb = {"labels": torch.tensor([1])}, {"labels": torch.tensor([2, 3])}
    samples, targets = collate_fn([(a, ta), (b, tb)])
    assert samples.tensors.shape == (2, 3, 6, 5) and samples.mask.shape == (2, 6, 5)
    assert samples.mask.dtype == torch.bool
    expected = torch.ones(2, 6, 5, dtype=torch.bool)
    expected[0, :4, :5] = False
    expected[1, :6, :3] = False
    assert torch.equal(samples.mask, expected)
    assert torch.equal(samples.tensors[0, :, :4, :5], a) and torch.equal(samples.tensors[1, :, :6, :3], b)
    assert samples.tensors[0, :, 4:].abs().sum() == 0 and samples.tensors[1, :, :, 3:].abs().sum() == 0
    assert targets[0] is ta and targets[1] is tb


# --------------------------------------------------------------------------- synthetic set
@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("demo"), "demo", seed=0, num_train=40, num_val=8)


@pytest.fixture(scope="module")
def default_dir(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("default"), "default", seed=0, num_train=40, num_val=8)


def _pixels(root: Path, split: str) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((root / f"{split}2017").glob("*.jpg"))}


def test_synthetic_determinism(tmp_path, demo_dir):
    again = synthetic.generate(tmp_path / "again", "demo", seed=0, num_train=40, num_val=8, workers=2)
    other = synthetic.generate(tmp_path / "other", "demo", seed=1, num_train=40, num_val=8)
    for split in ("train", "val"):
        name = f"annotations/instances_{split}2017.json"
        assert (demo_dir / name).read_bytes() == (again / name).read_bytes()
        assert (demo_dir / name).read_bytes() != (other / name).read_bytes()
        a, b, c = _pixels(demo_dir, split), _pixels(again, split), _pixels(other, split)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert any(a[k].shape != c[k].shape or not np.array_equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("setting", ["demo", "default"])
def test_synthetic_coco_layout(setting, demo_dir, default_dir):
    root = demo_dir if setting == "demo" else default_dir
    spec = synthetic.SETTINGS[setting]
    for split, n in (("train", 40), ("val", 8)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(root / "annotations" / f"instances_{split}2017.json"))
        assert len(coco.imgs) == n
        assert sorted(coco.cats) == list(range(1, len(spec.classes) + 1))
        assert [coco.cats[i]["name"] for i in sorted(coco.cats)] == list(spec.classes)
        assert len(coco.anns) >= n * spec.objects_per_image[0] * 0.8
        for img in coco.imgs.values():
            with Image.open(root / f"{split}2017" / img["file_name"]) as im:
                assert im.format == "JPEG" and im.size == (img["width"], img["height"])
        for a in coco.anns.values():
            x, y, w, h = a["bbox"]
            W, H = coco.imgs[a["image_id"]]["width"], coco.imgs[a["image_id"]]["height"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6
            assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h + 1e-6
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert len(poly) >= 3
            assert np.allclose(poly.min(0), [x, y], atol=0.02) and np.allclose(poly.max(0), [x + w, y + h], atol=0.02)
        mask = coco.annToMask(next(iter(coco.anns.values())))  # pycocotools can rasterise our polygons
        assert mask.sum() > 0


def test_synthetic_object_sizes(demo_dir, default_dir):
    ann = json.loads((demo_dir / "annotations" / "instances_train2017.json").read_text())
    assert min(min(a["bbox"][2], a["bbox"][3]) for a in ann["annotations"]) >= 8.0
    stats = synthetic.object_size_stats(default_dir / "annotations" / "instances_train2017.json")
    assert stats["frac_small"] >= 0.30
    assert stats["frac_medium"] > 0.1
    # Independent count of COCO-small objects (area < 32^2) straight from the json.
    ann = json.loads((default_dir / "annotations" / "instances_train2017.json").read_text())
    assert stats["num_small"] == sum(a["area"] < 1024 for a in ann["annotations"])
    assert min(min(a["bbox"][2], a["bbox"][3]) for a in ann["annotations"]) < 8  # tiny ones exist


def test_synthetic_image_sizes_vary(default_dir):
    ann = json.loads((default_dir / "annotations" / "instances_train2017.json").read_text())
    sizes = {(i["width"], i["height"]) for i in ann["images"]}
    ratios = [i["width"] / i["height"] for i in ann["images"]]
    assert len(sizes) > 20 and min(ratios) < 0.9 and max(ratios) > 1.1
    assert all(128 <= min(w, h) <= 256 for w, h in sizes)


def test_synthetic_boxes_match_pixels(tmp_path):
    """One shape on a flat background: the box is where the pixels differ from the background."""
    root = synthetic.generate(
        tmp_path, "demo", seed=3, num_train=12, num_val=0,
        objects_per_image=(1, 1), clutter=(0, 0), noise_std=(0.0, 0.0), backgrounds=("flat",),
    )
    ann = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert len(ann["annotations"]) == 12
    for a in ann["annotations"]:
        img = np.asarray(Image.open(root / "train2017" / f"{a['image_id']:012d}.jpg")).astype(np.float32)
        bg = np.median(np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]]), axis=0)
        x, y, w, h = a["bbox"]
        centre = img[int(y + h / 2), int(x + w / 2)]  # inside each of the demo's (convex-ish) shapes
        contrast = np.linalg.norm(centre - bg)
        assert contrast > 80
        # Pixels at least ~60% covered by the shape (JPEG ringing stays below that).
        ys, xs = np.nonzero(np.linalg.norm(img - bg, axis=-1) > 0.6 * contrast)
        assert xs.min() >= x - 1 and xs.max() + 1 <= x + w + 1 and ys.min() >= y - 1 and ys.max() + 1 <= y + h + 1
        assert xs.min() <= x + 2 and xs.max() + 1 >= x + w - 2 and ys.min() <= y + 2 and ys.max() + 1 >= y + h - 2


def test_rasterize_and_clip_by_hand():
    # An axis-aligned 4x4 square from (2, 2) to (6, 6) covers exactly 16 pixels.
    square = np.array([[2.0, 2], [6, 2], [6, 6], [2, 6]])
    alpha, origin = synthetic._rasterize([square], 10, 10)
    assert abs(alpha.sum() - 16.0) < 1e-6
    x0, y0 = origin
    assert alpha[2 - y0 : 6 - y0, 2 - x0 : 6 - x0].min() == 1.0
    # Half of it outside the image on the left: 2 x 4 = 8 pixels remain.
    alpha, _ = synthetic._rasterize([square - [4, 0]], 10, 10)
    assert abs(alpha.sum() - 8.0) < 1e-6
    # Sutherland-Hodgman: the square [-1, 3]^2 clipped to [0, 2]^2 is [0, 2]^2 (area 4 by shoelace).
    clipped = synthetic._clip_polygon(np.array([[-1.0, -1], [3, -1], [3, 3], [-1, 3]]), 2, 2)
    x, y = clipped[:, 0], clipped[:, 1]
    assert abs(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) - 4.0) < 1e-9
    assert clipped.min() == 0 and clipped.max() == 2


def test_synthetic_skips_identical_and_regenerates(tmp_path, capsys):
    out = tmp_path / "set"
    synthetic.generate(out, "demo", seed=0, num_train=5, num_val=2)
    ann = out / "annotations" / "instances_train2017.json"
    stamp = (ann.stat().st_mtime_ns, (out / "synthetic.json").stat().st_mtime_ns)
    synthetic.generate(out, "demo", seed=0, num_train=5, num_val=2)  # identical: nothing rewritten
    assert (ann.stat().st_mtime_ns, (out / "synthetic.json").stat().st_mtime_ns) == stamp
    synthetic.generate(out, "demo", seed=0, num_train=3, num_val=2)  # different: regenerated, no stale files
    assert len(list((out / "train2017").glob("*.jpg"))) == 3
    assert json.loads((out / "synthetic.json").read_text())["spec"]["num_train"] == 3
    (out / "train2017" / "000000000001.jpg").unlink()  # incomplete: regenerated
    synthetic.generate(out, "demo", seed=0, num_train=3, num_val=2)
    assert (out / "train2017" / "000000000001.jpg").is_file()
    # The CLI says "up to date" for the same parameters.
    assert synthetic.main(["--out", str(out), "--setting", "demo", "--num-train", "3", "--num-val", "2"]) == 0
    assert "up to date" in capsys.readouterr().out
    # A directory we did not make is never overwritten.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        synthetic.generate(foreign, "demo", num_train=2, num_val=1)


def test_dataloader_on_synthetic(demo_dir):
    cfg = _cfg()
    ds = build_dataset("train", demo_dir, cfg)
    assert max_category_id(ds.ann_file) + 1 == 5  # 4 classes, ids 1..4
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate_fn)
    torch.manual_seed(0)
    samples, targets = next(iter(loader))
    assert samples.tensors.shape[:2] == (4, 3) and samples.tensors.dtype == torch.float32
    assert torch.equal(samples.image_sizes(), torch.stack([t["size"] for t in targets]))
    for t in targets:
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert t["image_id"].dtype == torch.int64 and t["orig_size"].dtype == torch.int64
        assert t["area"].dtype == torch.float32 and t["iscrowd"].dtype == torch.int64
        assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
        assert set(t["labels"].tolist()) <= {1, 2, 3, 4}
    val = build_dataset("val", demo_dir, cfg)
    image, t = val[0]
    assert min(image.shape[-2:]) == cfg.val_size or max(image.shape[-2:]) <= cfg.val_max_size


def test_visualize_draw_boxes(demo_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = build_dataset("val", demo_dir, _cfg())
    image, t = ds[0]
    arr = denormalize(image)
    assert arr.dtype == np.uint8 and arr.shape == (*image.shape[-2:], 3)
    fig, (ax1, ax2) = plt.subplots(1, 2)
    xyxy = boxes_to_pixels(t["boxes"], t["size"])
    draw_boxes(ax1, image, xyxy, t["labels"], names={1: "circle"})
    draw_boxes(ax2, arr, xyxy, t["labels"], scores=torch.rand(len(xyxy)), color="white")
    assert len(ax1.patches) == len(xyxy) == len(ax2.patches)
    plt.close(fig)
    # Example grids from a directory (stored images) and from a dataset (after transforms).
    for source in (demo_dir, ds):
        fig = plot_dataset_examples(source, n=3, ncols=3)
        assert sum(len(ax.patches) for ax in fig.axes) > 0
        plt.close(fig)
