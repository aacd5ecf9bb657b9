"""DETR's attention, for contrast with Deformable DETR: dense maps over one feature map.

Takes the maps of ``ddetr_lib.models.capture_attention``: ``encoder[l]`` (B, M, HW, HW),
``decoder_cross[l]`` (B, M, Q, HW), ``shape`` (H, W) of the padded feature map and ``mask``
(B, H, W). A map is cropped to the image's valid cells and stretched over the unpadded image.

    run = run_with_capture(detr_model, [image])
    plot_detr_encoder_attention(run.record, image, points=[(40, 60), (100, 30)])
    plot_detr_decoder_attention(run.record, run.outputs, image)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ddetr_lib.viz.common import confident_queries, query_scores
from ddetr_lib.viz.images import _name, box_patch, boxes_to_pixels, class_colour, image_extent, show_image


def _valid_cells(maps: dict, batch_index: int) -> tuple[int, int]:
    mask = maps["mask"][batch_index]  # (H, W) True on padding
    return int((~mask[:, 0]).sum()), int((~mask[0, :]).sum())


def _check_maps(maps: dict, key: str, batch_index: int, layer: int) -> torch.Tensor:
    if key not in maps or maps.get("mask") is None:
        raise ValueError("maps: expected the record of capture_attention (a DETR model); "
                         "for Deformable DETR use the sampling figures")
    if not maps[key]:
        raise ValueError("maps: empty; run the model inside `with capture_attention(model) as maps:`")
    if not -len(maps[key]) <= layer < len(maps[key]):
        raise ValueError(f"layer: {layer} is not one of the {len(maps[key])} layers")
    attn = maps[key][layer]
    if not 0 <= batch_index < attn.shape[0]:
        raise ValueError(f"batch_index: image {batch_index} is not in a batch of {attn.shape[0]}")
    return attn


def attention_image(weights: torch.Tensor, maps: dict, batch_index: int) -> np.ndarray:
    """Attention over the flattened padded map (HW,) -> (valid_h, valid_w) array of the valid cells."""
    h, w = maps["shape"]
    vh, vw = _valid_cells(maps, batch_index)
    return weights.reshape(h, w)[:vh, :vw].float().cpu().numpy()


def _overlay(ax, heat: np.ndarray, size_hw, cmap="inferno", alpha=0.6, vmax=None):
    h, w = size_hw
    return ax.imshow(heat, extent=image_extent(h, w), cmap=cmap, alpha=alpha, vmin=0, vmax=vmax,
                     interpolation="nearest", gid="attention")


def pixel_to_cell(point_xy, size_hw, valid_hw) -> tuple[int, int]:
    """The feature cell (row, column) under point (x, y) of an image of size (H, W)
    (pixel coordinates: the image spans [0, W] x [0, H])."""
    (x, y), (h, w), (vh, vw) = point_xy, size_hw, valid_hw
    if not (0 <= x <= w and 0 <= y <= h):
        raise ValueError(f"points: ({x}, {y}) is outside the {w}x{h} image")
    return min(int(y / h * vh), vh - 1), min(int(x / w * vw), vw - 1)


def plot_detr_encoder_attention(maps: dict, image, points, batch_index: int = 0, layer: int = -1,
                                head: int | None = None, axes=None):
    """Encoder self-attention of the feature cells under ``points``: where does a pixel look?

    points: one (x, y) or a list of them, in pixels of ``image`` (image ``batch_index`` of the
    batch, unpadded, any size). Panels: the image with the points, then one attention map
    per point (head ``head``, or the mean over heads), over the image. Returns the figure.
    """
    import matplotlib.pyplot as plt

    attn = _check_maps(maps, "encoder", batch_index, layer)  # (B, M, HW, HW)
    if head is not None and not 0 <= head < attn.shape[1]:
        raise ValueError(f"head: {head} is not one of the {attn.shape[1]} heads")
    points = [tuple(points)] if np.ndim(points) == 1 else [tuple(p) for p in points]
    if axes is None:
        n = len(points) + 1
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), constrained_layout=True, squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    h, w = show_image(axes[0], image)
    vh, vw = _valid_cells(maps, batch_index)
    cell_w, cell_h = w / vw, h / vh
    colours = plt.get_cmap("tab10")
    axes[0].set_title(f"{len(points)} query pixel(s)", fontsize=9)
    fw = maps["shape"][1]
    for k, (pt, ax) in enumerate(zip(points, axes[1:])):
        i, j = pixel_to_cell(pt, (h, w), (vh, vw))
        row = attn[batch_index, :, i * fw + j]  # (M, HW)
        weights = row.mean(0) if head is None else row[head]
        heat = attention_image(weights, maps, batch_index)
        show_image(ax, image)
        im = _overlay(ax, heat, (h, w))
        for a in (axes[0], ax):
            a.add_patch(box_patch((j * cell_w, i * cell_h, (j + 1) * cell_w, (i + 1) * cell_h),
                                  edgecolor=colours(k % 10), linewidth=2))
            a.plot(*pt, marker="+", color=colours(k % 10), markersize=10, markeredgewidth=2)
        which = "mean of heads" if head is None else f"head {head}"
        ax.set_title(f"layer {layer % len(maps['encoder'])}, {which}\nfrom ({pt[0]:.0f}, {pt[1]:.0f})",
                     fontsize=9)
    fig.colorbar(im, ax=list(axes[1:]) if len(axes) > 1 else axes[0], shrink=0.8, label="attention weight")
    return fig


def plot_detr_decoder_attention(maps: dict, outputs: dict, image, batch_index: int = 0, layer: int = -1,
                                score_threshold: float = 0.5, max_detections: int = 4, per_head: bool = True,
                                names: Mapping[int, str] | Sequence[str] | None = None, axes=None):
    """Decoder cross-attention of each detection: which pixels a query reads to find its object.

    Rows: the confident queries of image ``batch_index`` (score >= ``score_threshold``, at most
    ``max_detections``; the best one if none passes). Columns: the image with the box,
    the attention map averaged over heads, and (``per_head``) one map per head. Each
    map has its own colour scale. axes: a (rows, columns) array of Axes to draw into (as many
    rows as detections shown). Returns the figure.
    """
    import matplotlib.pyplot as plt

    attn = _check_maps(maps, "decoder_cross", batch_index, layer)  # (B, M, Q, HW)
    queries = confident_queries(outputs, batch_index, focal_loss=False, score_threshold=score_threshold,
                                max_queries=max_detections)
    scores, labels = query_scores(outputs, batch_index, focal_loss=False)
    n_heads = attn.shape[1]
    ncols = 2 + (n_heads if per_head else 0)
    if axes is None:
        fig, axes = plt.subplots(len(queries), ncols, figsize=(2.3 * ncols, 2.4 * len(queries)), squeeze=False,
                                 constrained_layout=True)
    axes = np.asarray(axes, dtype=object).reshape(-1, ncols)
    if len(axes) < len(queries):
        raise ValueError(f"axes: {len(axes)} rows for {len(queries)} detections")
    fig = axes[0, 0].figure
    for r, q in enumerate(queries.tolist()):
        h, w = show_image(axes[r, 0], image)
        box = boxes_to_pixels(outputs["pred_boxes"][batch_index, q:q + 1].detach().cpu(), (h, w))[0].tolist()
        colour = class_colour(int(labels[q]))
        axes[r, 0].add_patch(box_patch(box, edgecolor=colour, linewidth=2))
        axes[r, 0].set_title(f"query {q}: {_name(int(labels[q]), names)} {scores[q]:.2f}", fontsize=8)
        panels = [("mean of heads", attn[batch_index, :, q].mean(0))]
        if per_head:
            panels += [(f"head {m}", attn[batch_index, m, q]) for m in range(n_heads)]
        for c, (title, weights) in enumerate(panels, start=1):
            ax = axes[r, c]
            show_image(ax, image)
            _overlay(ax, attention_image(weights, maps, batch_index), (h, w), alpha=0.65)
            ax.add_patch(box_patch(box, edgecolor="white", linewidth=0.8, linestyle="--"))
            ax.set_title(title, fontsize=8)
    fig.suptitle(f"DETR decoder cross-attention, layer {layer % len(maps['decoder_cross'])}: "
                 "each query reads the whole feature map", fontsize=10)
    return fig
