"""Figures of Deformable DETR beyond one query's sampling points (for those: ``viz.sampling``).

All take the record of ``ddetr_lib.models.capture_deformable`` (and the model outputs of
the same forward pass) and draw on image ``batch_index`` of the batch, unpadded, at any size:

    run = run_with_capture(model, [image])
    plot_initial_vs_trained(run.record, image)                  # rays of the initialisation vs learned points
    plot_refinement(run.record, run.outputs, image, target=t)   # one object's box, layer by layer
    plot_two_stage(run.record, run.outputs, image)              # encoder proposals vs final detections
    plot_sampling_density(run.record, run.outputs, image)       # where the confident queries look

Sampling locations are mapped to image pixels by ``viz.sampling.sampling_locations_to_pixels``
(through the valid ratios: the record's locations are in coordinates of the padded maps).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ddetr_lib.box_ops import box_cxcywh_to_xyxy, box_iou
from ddetr_lib.viz.common import confident_queries, query_scores
from ddetr_lib.viz.images import _name, box_patch, boxes_to_pixels, class_colour, draw_boxes, image_extent, show_image
from ddetr_lib.viz.sampling import (encoder_cell_box, encoder_query_at, reference_points_to_pixels,
                                    sampling_locations_to_pixels)

LEVEL_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "X")


def _image_size(image) -> tuple[int, int]:
    from ddetr_lib.viz.images import to_numpy_image

    return tuple(to_numpy_image(image).shape[:2])


def _check_record(record: Mapping, batch_index: int, stage: str | None = None, layer: int | None = None):
    if not isinstance(record, Mapping) or "valid_ratios" not in record or "decoder" not in record:
        raise ValueError("record: expected the record of capture_deformable (a Deformable DETR model)")
    if not record["decoder"]:
        raise ValueError("record: empty; run the model inside `with capture_deformable(model) as record:`")
    n = record["valid_ratios"].shape[0]
    if not 0 <= batch_index < n:
        raise ValueError(f"batch_index: image {batch_index} is not in a batch of {n}")
    if stage is None:
        return None
    if stage not in ("encoder", "decoder"):
        raise ValueError(f"stage: expected 'encoder' or 'decoder', got {stage!r}")
    layers = record[stage]
    if not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer: {layer} is not a {stage} layer (0 .. {len(layers) - 1})")
    return layers[layer]


# ----------------------------------------------------------------------------- initial pattern
@torch.no_grad()
def initial_offsets(n_heads: int, n_levels: int, n_points: int) -> torch.Tensor:
    """The sampling offsets of a freshly initialised ``MSDeformAttn`` (the official initialisation):
    (M, L, P, 2) as (x, y). They do not depend on the query (the offset layer's weight starts at 0,
    only its bias counts): head m points along angle 2*pi*m/M, point k at k+1 steps."""
    from ddetr_lib.models import MSDeformAttn

    attn = MSDeformAttn(2 * n_heads, n_levels, n_heads, n_points)  # d_model, levels, heads, points
    if attn.sampling_offsets.weight.any():
        raise RuntimeError("MSDeformAttn's initialisation changed: its offsets now depend on the query")
    return attn.sampling_offsets.bias.detach().view(n_heads, n_levels, n_points, 2)


def initial_sampling_locations(reference_points: torch.Tensor, spatial_shapes: torch.Tensor, n_heads: int,
                               n_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a freshly initialised deformable attention samples around given reference points.

    reference_points: (Lq, L, 2 or 4) padded coordinates, as the record holds them.
    The offsets of :func:`initial_offsets` are in pixels of each level for a point reference
    (divided by the level's (W_l, H_l)) and in units of the half box for a box reference
    (divided by P, times (w, h) / 2), as in ``MSDeformAttn``. Weights start uniform.
    -> sampling_locations (Lq, M, L, P, 2), attention_weights (Lq, M, L, P).
    """
    refs = reference_points.double()  # (Lq, L, 2 or 4)
    lq, n_levels = refs.shape[:2]
    offsets = initial_offsets(n_heads, n_levels, n_points).double()[None]  # (1, M, L, P, 2)
    if refs.shape[-1] == 2:
        wh = torch.as_tensor(spatial_shapes, dtype=torch.float64).flip(-1)  # (L, 2) as (W_l, H_l)
        loc = refs[:, None, :, None, :] + offsets / wh[None, None, :, None, :]
    else:
        loc = refs[:, None, :, None, :2] + offsets / n_points * refs[:, None, :, None, 2:] * 0.5
    weights = torch.full((lq, n_heads, n_levels, n_points), 1.0 / (n_levels * n_points), dtype=torch.float64)
    return loc.float(), weights.float()


def _pick_query(record, outputs, stage: str, layer: int, batch_index: int, query, point, size, level: int):
    """(query index, title text) for plot_initial_vs_trained."""
    if stage == "encoder":
        if query is None:
            h, w = size
            x, y = point if point is not None else (w / 2, h / 2)
            query = encoder_query_at(record, x, y, size, level=level, batch_index=batch_index)
        return int(query), f"encoder query {int(query)}"
    if query is None:
        if outputs is None:
            raise ValueError("query: give a decoder query, or the outputs to pick the best-scoring one")
        query = int(confident_queries(outputs, batch_index, focal_loss=True, min_queries=1)[0])
    return int(query), f"decoder query {int(query)}"


def _draw_pattern(ax, image, xy: np.ndarray, weights: np.ndarray, ref_xy: np.ndarray, title: str,
                  head_colours, frame: np.ndarray, wmax: float):
    """Points (M, L, P, 2) as per-head rays: colour = head, marker = level, area = weight."""
    h, w = show_image(ax, image)
    n_heads, n_levels, n_points = weights.shape
    for m in range(n_heads):
        for lvl in range(n_levels):
            ray = np.concatenate([ref_xy[None], xy[m, lvl]], 0)  # (1 + P, 2): from the reference outwards
            ax.plot(ray[:, 0], ray[:, 1], color=head_colours[m], linewidth=0.8, alpha=0.55, zorder=2)
            ax.scatter(xy[m, lvl, :, 0], xy[m, lvl, :, 1], s=12 + 90 * weights[m, lvl] / wmax,
                       color=head_colours[m], marker=LEVEL_MARKERS[lvl % len(LEVEL_MARKERS)],
                       edgecolors="white", linewidths=0.5, zorder=3, gid=f"points_head{m}_level{lvl}")
    ax.plot(*ref_xy, marker="x", color="red", markersize=10, markeredgewidth=2.5, zorder=4, gid="reference_point")
    pad = 0.03 * max(h, w)
    x0, y0 = min(0.0, frame[:, 0].min() - pad), min(0.0, frame[:, 1].min() - pad)
    x1, y1 = max(float(w), frame[:, 0].max() + pad), max(float(h), frame[:, 1].max() + pad)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_axis_on()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("0.85")  # outside the image: grey
    ax.set_title(title, fontsize=9)


def plot_initial_vs_trained(record: Mapping, image, batch_index: int = 0, stage: str = "encoder", layer: int = 0,
                            query: int | None = None, point=None, level: int = 0, outputs: Mapping | None = None,
                            axes=None):
    """The official initial sampling pattern next to the trained one, for the same query.

    Left: where the query would sample with the initialisation (per head a ray of P points
    at angle 2*pi*m/M, the same direction on every level, so rays on coarse levels reach
    farther); right: where the trained layer samples. Colour = head, marker = level,
    marker area = attention weight (uniform at initialisation).
    Encoder: the query on level ``level`` under ``point`` (x, y pixels; default the image
    centre), or ``query`` (token index). Decoder: ``query``, or the best-scoring query of
    ``outputs``. axes: two Axes. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    layer_rec = _check_record(record, batch_index, stage, layer)
    size = _image_size(image)
    query, qtext = _pick_query(record, outputs, stage, layer, batch_index, query, point, size, level)
    n_queries = layer_rec["sampling_locations"].shape[1]
    if not 0 <= query < n_queries:
        raise ValueError(f"query: {query} is not a {stage} query (0 .. {n_queries - 1})")
    ratios = record["valid_ratios"][batch_index]  # (L, 2)
    ref = layer_rec["reference_points"][batch_index, query]  # (L, 2 or 4)
    init_loc, init_w = initial_sampling_locations(ref[None], record["spatial_shapes"],
                                                  n_heads=layer_rec["sampling_locations"].shape[2],
                                                  n_points=layer_rec["sampling_locations"].shape[4])
    patterns = [
        (sampling_locations_to_pixels(init_loc[0], ratios, size).numpy(), init_w[0].numpy(),
         "official initialisation"),
        (sampling_locations_to_pixels(layer_rec["sampling_locations"][batch_index, query], ratios, size).numpy(),
         layer_rec["attention_weights"][batch_index, query].double().numpy(),
         f"trained: {stage} layer {layer % len(record[stage])}"),
    ]
    ref_xy = reference_points_to_pixels(ref, ratios, size)[0].numpy()
    n_heads, n_levels = patterns[0][1].shape[:2]
    head_colours = [plt.get_cmap("tab10")(m % 10) for m in range(n_heads)]
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 5.0), constrained_layout=True)
    fig = axes[0].figure
    frame = np.concatenate([p[0].reshape(-1, 2) for p in patterns] + [ref_xy[None]], 0)
    wmax = max(float(p[1].max()) for p in patterns)
    for ax, (xy, weights, title) in zip(axes, patterns):
        _draw_pattern(ax, image, xy, weights, ref_xy, f"{title}\n{qtext}", head_colours, frame, wmax)
        if stage == "encoder":
            ax.add_patch(box_patch(encoder_cell_box(record, query, size, batch_index), edgecolor="red",
                                   linewidth=1.2))
    handles = [Line2D([], [], color=c, marker="o", linestyle="-", label=f"head {m}")
               for m, c in enumerate(head_colours)]
    handles += [Line2D([], [], color="gray", marker=LEVEL_MARKERS[l % len(LEVEL_MARKERS)], linestyle="none",
                       label=f"level {l}") for l in range(n_levels)]
    handles += [Line2D([], [], color="red", marker="x", linestyle="none", label="reference point")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 8), fontsize=8, frameon=False)
    return fig


# ----------------------------------------------------------------------------- refinement
def _xyxy(box_cxcywh: torch.Tensor) -> torch.Tensor:
    return box_cxcywh_to_xyxy(box_cxcywh.float().reshape(-1, 4))


def refinement_track(record: Mapping, outputs: Mapping, batch_index: int, query: int) -> dict:
    """One decoder query, layer by layer (normalised, valid-image coordinates):
    ``references``: list over decoder layers of the reference each layer was given, a point
    (2,) or a box (4,) cxcywh (with refinement the first layer gets a point and the others the
    previous layer's box; two-stage: boxes throughout; without refinement the same point);
    ``predictions`` (L_dec, 4): the box each layer predicts (cxcywh)."""
    refs = [r[batch_index, query].float() for r in record["decoder_reference_boxes"]]
    preds = [a["pred_boxes"][batch_index, query] for a in outputs.get("aux_outputs", [])]
    preds.append(outputs["pred_boxes"][batch_index, query])
    return {"references": refs, "predictions": torch.stack(preds).float()}


def plot_refinement(record: Mapping, outputs: Mapping, image, batch_index: int = 0, query: int | None = None,
                    target: Mapping | None = None, object_index: int | None = None,
                    names: Mapping[int, str] | Sequence[str] | None = None, zoom: bool = True, axes=None):
    """Iterative refinement: one object's reference box at every decoder layer, with the ground truth.

    The query: ``query``, or the one whose final box best overlaps ground-truth object
    ``object_index`` of ``target`` (default: its largest object), or the best-scoring one.
    Left: the reference of each decoder layer (a box with box refinement / two-stage, a
    point without: then each layer's predicted box, dashed), coloured from the first layer
    (light) to the last (dark), the final box thick, the ground truth white.
    Right: IoU with the ground truth (or with the final box) layer by layer.
    target: dict with ``boxes`` (N, 4) cxcywh normalised and ``labels``. Returns the figure.
    """
    import matplotlib.pyplot as plt

    _check_record(record, batch_index)
    h, w = _image_size(image)
    gt_box = gt_label = None
    if target is not None and len(target["boxes"]):
        tb = target["boxes"].float()
        if object_index is None:
            object_index = int((tb[:, 2] * tb[:, 3]).argmax())
        if not 0 <= object_index < len(tb):
            raise ValueError(f"object_index: {object_index} is not one of the {len(tb)} objects")
        gt_box = tb[object_index]
        gt_label = int(target["labels"][object_index])
    if query is None:
        if gt_box is not None:
            query = int(box_iou(_xyxy(outputs["pred_boxes"][batch_index]), _xyxy(gt_box))[:, 0].argmax())
        else:
            query = int(confident_queries(outputs, batch_index, focal_loss=True)[0])
    n_queries = outputs["pred_boxes"].shape[1]
    if not 0 <= query < n_queries:
        raise ValueError(f"query: {query} is not a decoder query (0 .. {n_queries - 1})")
    track = refinement_track(record, outputs, batch_index, query)
    refs, preds = track["references"], track["predictions"]
    n_layers = len(refs)
    boxes_as_refs = any(len(r) == 4 for r in refs)
    colours = [plt.get_cmap("viridis")(0.85 - 0.75 * l / max(n_layers - 1, 1)) for l in range(n_layers)]
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), gridspec_kw={"width_ratios": [1.3, 1]},
                                 constrained_layout=True)
    fig = axes[0].figure
    ax, ax_iou = axes
    show_image(ax, image)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    drawn = []
    if gt_box is not None:
        g = (_xyxy(gt_box) * scale)[0]
        ax.add_patch(box_patch(g, edgecolor="white", linewidth=3, label=f"ground truth ({_name(gt_label, names)})",
                               gid="ground_truth"))
        drawn.append(g)
    for l in range(n_layers):
        if len(refs[l]) == 4:
            b = (_xyxy(refs[l]) * scale)[0]
            ax.add_patch(box_patch(b, edgecolor=colours[l], linewidth=1.4, label=f"reference box, layer {l}",
                                   gid=f"reference_box_{l}"))
            drawn.append(b)
        else:
            cx, cy = refs[l][0].item() * w, refs[l][1].item() * h
            same = l > 0 and torch.equal(refs[l], refs[0])
            ax.plot(cx, cy, marker="o", color=colours[l], markeredgecolor="white", markersize=7, linestyle="none",
                    label=None if same else f"reference point, layer {l}", zorder=5, gid=f"reference_point_{l}")
            if not boxes_as_refs and l < n_layers - 1:
                b = (_xyxy(preds[l]) * scale)[0]
                ax.add_patch(box_patch(b, edgecolor=colours[l], linewidth=1.2, linestyle="--",
                                       label=f"prediction, layer {l}", gid=f"prediction_{l}"))
                drawn.append(b)
    final = (_xyxy(preds[-1]) * scale)[0]
    ax.add_patch(box_patch(final, edgecolor="orangered", linewidth=2.4, label=f"final box (layer {n_layers - 1})",
                           gid="final_box"))
    drawn.append(final)
    scores, labels = query_scores(outputs, batch_index, focal_loss=True)
    ax.set_title(f"query {query}: {_name(int(labels[query]), names)} {scores[query]:.2f}", fontsize=9)
    if zoom:
        boxes = torch.stack(drawn)
        x0, y0 = boxes[:, 0].min().item(), boxes[:, 1].min().item()
        x1, y1 = boxes[:, 2].max().item(), boxes[:, 3].max().item()
        side = max(x1 - x0, y1 - y0) * 1.4 + 8
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ax.set_xlim(cx - side / 2, cx + side / 2)
        ax.set_ylim(cy + side / 2, cy - side / 2)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_facecolor("0.85")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, framealpha=0.9)

    reference = gt_box if gt_box is not None else preds[-1]
    ref_name = "ground truth" if gt_box is not None else "final box"
    layers = np.arange(n_layers)
    ax_iou.plot(layers, box_iou(_xyxy(preds), _xyxy(reference))[:, 0].numpy(), marker="o", color="orangered",
                label="predicted box of the layer", gid="iou_predictions")
    if boxes_as_refs:
        ious = [box_iou(_xyxy(r), _xyxy(reference))[0, 0].item() if len(r) == 4 else np.nan for r in refs]
        ax_iou.plot(layers, ious, marker="s", color="tab:green", label="reference box given to the layer",
                    gid="iou_references")
    ax_iou.set_xticks(layers)
    ax_iou.set_xlabel("decoder layer")
    ax_iou.set_ylabel(f"IoU with the {ref_name}")
    ax_iou.set_ylim(0, 1.02)
    ax_iou.grid(alpha=0.3)
    ax_iou.legend(fontsize=8, loc="lower right")
    ax_iou.set_title("box refinement" if boxes_as_refs else "no box refinement: the reference point stays",
                     fontsize=9)
    return fig


# ----------------------------------------------------------------------------- two-stage
def two_stage_proposals(record: Mapping, batch_index: int = 0, k: int | None = None) -> dict:
    """The encoder's top proposals (the boxes that became the decoder's reference boxes), best first:
    ``indices`` (K,) token indices, ``boxes`` (K, 4) cxcywh normalised to the valid image,
    ``scores`` (K,) sigmoid of the ranking logit (the first class logit, as in the official code),
    ``levels`` (K,) the feature level of each token."""
    _check_record(record, batch_index)
    props = record.get("proposals")
    if props is None:
        raise ValueError("record: no two-stage proposals; this figure needs a two-stage model (cfg.two_stage)")
    idx = props["topk_indices"][batch_index]
    if k is not None:
        idx = idx[:k]
    starts = torch.as_tensor(record["level_start_index"])
    levels = torch.bucketize(idx, starts, right=True) - 1
    return {"indices": idx, "boxes": props["boxes"][batch_index, idx].float(),
            "scores": props["logits"][batch_index, idx, 0].float().sigmoid(), "levels": levels}


def plot_two_stage(record: Mapping, outputs: Mapping, image, batch_index: int = 0, k: int = 30,
                   score_threshold: float = 0.3, names: Mapping[int, str] | Sequence[str] | None = None,
                   cmap: str = "viridis", axes=None):
    """Two-stage Deformable DETR: the encoder's top-``k`` proposals coloured by score (left),
    next to the final detections (right, score >= ``score_threshold``, or the best few).
    Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    props = two_stage_proposals(record, batch_index, k)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), constrained_layout=True)
    fig = axes[0].figure
    h, w = show_image(axes[0], image)
    scores = props["scores"]
    norm = Normalize(vmin=float(scores.min()), vmax=float(scores.max()) if len(scores) else 1.0)
    colours = plt.get_cmap(cmap)
    boxes = boxes_to_pixels(props["boxes"], (h, w))
    for i in scores.argsort().tolist():  # best on top
        axes[0].add_patch(box_patch(boxes[i], edgecolor=colours(norm(scores[i].item())),
                                    linewidth=0.6 + 1.6 * norm(scores[i].item()), gid="proposal"))
    fig.colorbar(ScalarMappable(norm=norm, cmap=colours), ax=axes[0], fraction=0.046, pad=0.02,
                 label="proposal score")
    per_level = torch.bincount(props["levels"], minlength=len(record["spatial_shapes"])).tolist()
    axes[0].set_title(f"encoder: top {len(scores)} proposals (the decoder's reference boxes)\n"
                      f"from levels {'/'.join(map(str, range(len(per_level))))}: "
                      f"{'/'.join(map(str, per_level))}", fontsize=9)
    keep = confident_queries(outputs, batch_index, focal_loss=True, score_threshold=score_threshold, min_queries=3)
    det_scores, det_labels = query_scores(outputs, batch_index, focal_loss=True)
    draw_boxes(axes[1], image, boxes_to_pixels(outputs["pred_boxes"][batch_index, keep].detach().cpu(), (h, w)),
               det_labels[keep].tolist(), det_scores[keep].tolist(), names=names)
    passed = int((det_scores >= score_threshold).sum())
    axes[1].set_title(f"decoder: final detections\n({passed} with score ≥ {score_threshold}"
                      + ("" if passed >= len(keep) else f"; showing the best {len(keep)}") + ")", fontsize=9)
    return fig


# ----------------------------------------------------------------------------- density
def sampling_density(record: Mapping, queries: torch.Tensor, size, batch_index: int = 0, layer: int = -1,
                     bins: int = 64) -> tuple[np.ndarray, int]:
    """Histogram of where decoder ``queries`` sample in layer ``layer``, weighted by attention.

    -> (density (by, bx) over the image, each query's heads summing to 1 / n_queries so the
    whole map sums to 1 minus what falls outside the image; number of points outside).
    ``bins`` cells across the longer side.
    """
    layer_rec = _check_record(record, batch_index, "decoder", layer)
    h, w = size
    bx, by = (bins, max(1, round(bins * h / w))) if w >= h else (max(1, round(bins * w / h)), bins)
    loc = layer_rec["sampling_locations"][batch_index, queries]  # (K, M, L, P, 2)
    xy = sampling_locations_to_pixels(loc, record["valid_ratios"][batch_index], size).reshape(-1, 2).numpy()
    weights = layer_rec["attention_weights"][batch_index, queries].double()  # (K, M, L, P)
    weights = (weights / (weights.shape[0] * weights.shape[1])).reshape(-1).numpy()
    density, _, _ = np.histogram2d(xy[:, 1], xy[:, 0], bins=(by, bx), range=((0, h), (0, w)),
                                   weights=weights)
    outside = int(((xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)).sum())
    return density, outside


def _fading(cmap: str):
    """``cmap`` made transparent at its low end, so that the image shows where nothing is sampled."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    colours = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))
    colours[:, 3] = np.linspace(0, 1, 256) ** 0.5 * 0.9
    return ListedColormap(colours, name=f"{cmap}_fading")


def plot_sampling_density(record: Mapping, outputs: Mapping, image, batch_index: int = 0, layer: int = -1,
                          score_threshold: float = 0.3, bins: int = 48, sigma: float = 0.8,
                          names: Mapping[int, str] | Sequence[str] | None = None, cmap: str = "magma", ax=None):
    """Where the model looks: the sampling points of all confident decoder queries (score >=
    ``score_threshold``, or the best 3) of decoder layer ``layer``, as a density weighted by
    attention and smoothed by a Gaussian of ``sigma`` cells, over the image with their boxes.
    Returns the figure."""
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    _check_record(record, batch_index, "decoder", layer)
    size = _image_size(image)
    queries = confident_queries(outputs, batch_index, focal_loss=True, score_threshold=score_threshold, min_queries=3)
    density, outside = sampling_density(record, queries, size, batch_index, layer, bins)
    if sigma > 0:
        density = gaussian_filter(density, sigma)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
    fig = ax.figure
    h, w = show_image(ax, image)
    im = ax.imshow(density, extent=image_extent(h, w), cmap=_fading(cmap), interpolation="bilinear", vmin=0)
    im.set_gid("density")
    scores, labels = query_scores(outputs, batch_index, focal_loss=True)
    for q in queries.tolist():
        box = boxes_to_pixels(outputs["pred_boxes"][batch_index, q:q + 1].detach().cpu(), (h, w))[0]
        colour = class_colour(int(labels[q]))
        ax.add_patch(box_patch(box, edgecolor=colour, linewidth=1.4, gid="detection"))
        ax.text(float(box[0]), float(box[1]), f"{_name(int(labels[q]), names)} {scores[q]:.2f}", fontsize=7,
                va="bottom", ha="left", clip_on=True, bbox=dict(facecolor=colour, edgecolor="none", alpha=0.8, pad=0.5))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="share of attention per cell")
    n_layers = len(record["decoder"])
    note = f"\n({outside} of their points fall outside the image)" if outside else ""
    ax.set_title(f"decoder layer {layer % n_layers}: where {len(queries)} confident queries look{note}",
                 fontsize=9)
    return fig
