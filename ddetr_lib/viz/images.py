"""Images with boxes: the basic pictures every other figure builds on (matplotlib only).

Boxes in this project travel in two forms:

* **pixels, (x0, y0, x1, y1)** — what a person draws and what ``draw_boxes`` takes;
* **normalised (cx, cy, w, h)** in [0, 1] — what the model predicts and what the
  dataset's targets hold.  ``boxes_to_pixels`` converts back, given the image size.

Images come as an (H, W, 3) uint8 array, a PIL image, a (3, H, W) uint8 tensor,
or a (3, H, W) float tensor normalised with the ImageNet mean/std (what the
dataset returns; ``denormalize`` undoes it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_convert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Undo ImageNet normalisation: (3, H, W) float tensor -> (H, W, 3) uint8 array."""
    image = image.detach().cpu().float()
    m = torch.as_tensor(mean).view(3, 1, 1)
    s = torch.as_tensor(std).view(3, 1, 1)
    rgb = (image * s + m).clamp(0, 1)  # (3, H, W) in [0, 1]
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)


def to_numpy_image(image, normalized: bool | None = None) -> np.ndarray:
    """Any supported image form -> (H, W, 3) uint8 array.

    ``normalized``: whether a float tensor is ImageNet-normalised (default: yes,
    as returned by the dataset); if False it is taken to be RGB in [0, 1].
    """
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"image: expected a (3, H, W) tensor, got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.expand(3, -1, -1).permute(1, 2, 0).cpu().numpy()
        if normalized is None or normalized:
            return denormalize(image.expand(3, -1, -1))
        rgb = image.detach().cpu().float().clamp(0, 1).expand(3, -1, -1).permute(1, 2, 0).numpy()  # (H, W, 3)
        return (rgb * 255).round().astype(np.uint8)
    if hasattr(image, "convert"):  # PIL image
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return arr


def image_extent(h: int, w: int) -> tuple[float, float, float, float]:
    """The extent every figure draws an (h, w) image over: ``(0, w, h, 0)``."""
    return (0.0, float(w), float(h), 0.0)


def show_image(ax, image, normalized: bool | None = None) -> tuple[int, int]:
    """Draw ``image`` (any form :func:`to_numpy_image` takes) and hide the axis. Returns ``(H, W)``.

    Pixel convention of every figure: the image spans the extent ``(0, W, H, 0)``, pixel
    (i, j) covers [j, j + 1] x [i, i + 1] (its centre is (j + 0.5, i + 0.5), the kernel's
    ``pixel = loc * size - 0.5`` rule). A coordinate u normalised by the unpadded image is
    drawn at ``u * W``, and COCO pixel boxes (x0, y0, x1, y1) as they are.
    """
    pixels = to_numpy_image(image, normalized)  # (H, W, 3) uint8
    h, w = pixels.shape[:2]
    ax.imshow(pixels, extent=image_extent(h, w))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    return h, w


def box_patch(box_xyxy, **style):
    """An unfilled Rectangle for a pixel box (x0, y0, x1, y1) (keywords: its style)."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    style.setdefault("fill", False)
    return Rectangle((x0, y0), x1 - x0, y1 - y0, **style)


def boxes_to_pixels(boxes_cxcywh: torch.Tensor, size_hw) -> torch.Tensor:
    """Normalised (cx, cy, w, h) boxes (K, 4) -> pixel (x0, y0, x1, y1) for an image of ``size_hw`` (h, w)."""
    h, w = (int(v) for v in size_hw)
    xyxy = box_convert(torch.as_tensor(boxes_cxcywh, dtype=torch.float32).reshape(-1, 4), "cxcywh", "xyxy")
    return xyxy * torch.tensor([w, h, w, h], dtype=torch.float32)  # (K, 4)


def class_colour(label: int):
    """A fixed colour per class id (matplotlib's tab20 palette, cycled)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return cmap((int(label) * 7) % 20)  # stride 7 keeps neighbouring ids apart


def _name(label: int, names) -> str:
    if names is None:
        return str(int(label))
    if isinstance(names, Mapping):
        return str(names.get(int(label), int(label)))
    return str(names[int(label)]) if 0 <= int(label) < len(names) else str(int(label))


def draw_boxes(
    ax,
    image,
    boxes_xyxy=None,
    labels=None,
    scores=None,
    names: Mapping[int, str] | Sequence[str] | None = None,
    color=None,
    normalized: bool | None = None,
    linewidth: float = 1.5,
    fontsize: float = 7,
    title: str | None = None,
):
    """Show ``image`` on ``ax`` (see :func:`show_image` for the pixel convention) with
    boxes and their class names / scores.

    image: (H, W, 3) uint8 array, PIL image, or a (3, H, W) tensor (uint8, or float
    ImageNet-normalised — see :func:`to_numpy_image`).
    boxes_xyxy: (K, 4) pixel boxes (x0, y0, x1, y1).  labels: (K,) class ids,
    names: id -> name (dict or list).  scores: (K,) shown after the name.
    color: one colour for all boxes (e.g. "white" for ground truth); default: by class.
    Returns ``ax``.
    """
    height, _ = show_image(ax, image, normalized)
    if title:
        ax.set_title(title, fontsize=fontsize + 1)
    if boxes_xyxy is None:
        return ax
    boxes = np.asarray(torch.as_tensor(boxes_xyxy, dtype=torch.float32).reshape(-1, 4))
    labels = None if labels is None else np.asarray(torch.as_tensor(labels)).reshape(-1)
    scores = None if scores is None else np.asarray(torch.as_tensor(scores, dtype=torch.float32)).reshape(-1)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        c = color if color is not None else (class_colour(labels[k]) if labels is not None else "yellow")
        ax.add_patch(box_patch((x0, y0, x1, y1), edgecolor=c, linewidth=linewidth))
        text = [] if labels is None else [_name(labels[k], names)]
        if scores is not None:
            text.append(f"{scores[k]:.2f}")
        if text:
            # Label above the box, or just inside it when the box touches the top of the image.
            inside = y0 < 0.06 * height
            ax.text(
                x0, y0, " ".join(text), fontsize=fontsize, color="black", va="top" if inside else "bottom", ha="left",
                bbox=dict(facecolor=c, edgecolor="none", alpha=0.8, pad=0.5),
                clip_on=True,
            )
    return ax


def _examples_from_dir(root: Path, split: str, indices: Sequence[int] | None, n: int):
    """Yield (PIL image, xyxy boxes, labels, names) read straight from a COCO-layout directory."""
    from PIL import Image

    from ddetr_lib.data.coco import load_coco_api

    coco = load_coco_api(root / "annotations" / f"instances_{split}2017.json")
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    ids = sorted(coco.imgs)
    chosen = [ids[i] for i in (indices if indices is not None else range(min(n, len(ids))))]
    for image_id in chosen:
        info = coco.imgs[image_id]
        anns = [a for a in coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        with Image.open(root / f"{split}2017" / info["file_name"]) as im:
            image = im.convert("RGB")
        yield image, box_convert(xywh, "xywh", "xyxy"), [a["category_id"] for a in anns], names


def _examples_from_dataset(dataset, indices: Sequence[int] | None, n: int):
    """Yield (image, xyxy boxes, labels, names) from a CocoDetection (with or without transforms)."""
    names = {c["id"]: c["name"] for c in dataset.coco.dataset["categories"]}
    for i in indices if indices is not None else range(min(n, len(dataset))):
        image, target = dataset[i]
        boxes = target["boxes"]
        if isinstance(image, torch.Tensor) and image.is_floating_point():
            boxes = boxes_to_pixels(boxes, target["size"])  # transformed: normalised cxcywh
        yield image, boxes, target["labels"], names


def plot_dataset_examples(
    dataset_or_dir,
    n: int = 8,
    split: str = "val",
    indices: Sequence[int] | None = None,
    ncols: int = 4,
    axes=None,
    cell_size: float = 2.4,
    title: str | None = None,
):
    """A grid of ``n`` images with their ground-truth boxes and class names.

    dataset_or_dir: a COCO-layout directory (``DIR/{split}2017`` + annotations;
    images are shown as stored) or a :class:`~ddetr_lib.data.coco.CocoDetection`
    (shown as it returns them, i.e. after its transforms).  ``axes``: draw into
    these (a flat sequence of at least ``n`` axes) instead of a new figure.
    Returns the figure.
    """
    import matplotlib.pyplot as plt

    if isinstance(dataset_or_dir, (str, os.PathLike)):
        examples = list(_examples_from_dir(Path(dataset_or_dir), split, indices, n))
    else:
        examples = list(_examples_from_dataset(dataset_or_dir, indices, n))
    if axes is None:
        nrows = max(1, -(-len(examples) // ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * cell_size, nrows * cell_size), squeeze=False)
        axes = list(axes.reshape(-1))
    else:
        axes = list(np.asarray(axes).reshape(-1))
        fig = axes[0].figure
    for ax in axes:
        ax.set_axis_off()
    for ax, (image, boxes, labels, names) in zip(axes, examples):
        draw_boxes(ax, image, boxes, labels, names=names)
    if title:
        fig.suptitle(title)
    return fig


def make_synthetic_examples_figure(demo_dir, default_dir, out_png, n: int = 8, ncols: int = 4):
    """The README picture: ``n`` validation images of each synthetic setting, with boxes and names.

    Regenerate ``docs/synthetic_examples.png`` with::

        python -c "from ddetr_lib.viz import make_synthetic_examples_figure as f; \\
                   f('data/synthetic_demo', 'data/synthetic', 'docs/synthetic_examples.png')"
    """
    from matplotlib.figure import Figure

    nrows = -(-n // ncols)
    fig = Figure(figsize=(ncols * 2.6, 2 * nrows * 2.5 + 0.8), constrained_layout=True)
    sub = fig.subfigures(2, 1)
    for sf, root, label in ((sub[0], demo_dir, "demo setting"), (sub[1], default_dir, "default setting")):
        axes = sf.subplots(nrows, ncols, squeeze=False)
        plot_dataset_examples(root, n=n, split="val", axes=axes)
        sf.suptitle(f"synthetic shapes — {label}", fontsize=11)
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    return Path(out_png)


def save_prediction_figure(dataset, results: dict, path: Path, n: int = 6, score_threshold: float = 0.3,
                           max_boxes: int = 30) -> Path:
    """Save a 2 x ``n`` grid: ground truth (top) and predictions with score >= threshold (bottom).

    ``dataset``: a ``ddetr_lib.data.CocoDetection`` (its ``.coco`` and image folder are used to
    show the original, untransformed images); ``results``: ``{image_id: {scores, labels,
    boxes (xyxy, original pixels)}}`` as returned by ``ddetr_lib.engine.evaluate``.
    """
    from matplotlib.figure import Figure  # no pyplot: works under any backend, leaks no figure
    from PIL import Image

    coco = dataset.coco
    names = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    image_ids = [i for i in sorted(results) if coco.getAnnIds(imgIds=[i])][:n] or sorted(results)[:n]
    folder = Path(dataset.img_folder)
    ncols = max(len(image_ids), 1)
    fig = Figure(figsize=(2.6 * ncols, 5.6))
    axes = fig.subplots(2, ncols, squeeze=False)
    for col, image_id in enumerate(image_ids):
        info = coco.loadImgs([image_id])[0]
        image = np.asarray(Image.open(folder / info["file_name"]).convert("RGB"))
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])) if not a.get("iscrowd", 0)]
        gt = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        gt[:, 2:] += gt[:, :2]
        draw_boxes(axes[0, col], image, gt, labels=[a["category_id"] for a in anns], names=names,
                   title=f"ground truth: {len(anns)}")
        det = results[image_id]
        keep = (det["scores"] >= score_threshold).nonzero().flatten()[:max_boxes]
        title = f"predicted (score ≥ {score_threshold}): {len(keep)}"
        if len(keep) == 0:  # an early model: show its best guesses rather than an empty picture
            keep = det["scores"].argsort(descending=True)[:max(len(anns), 1)]
            title = f"top {len(keep)} (all scores < {score_threshold})"
        draw_boxes(axes[1, col], image, det["boxes"][keep], labels=det["labels"][keep].tolist(),
                   scores=det["scores"][keep].tolist(), names=names, title=title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
