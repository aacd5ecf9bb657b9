"""Hungarian matching, drawn: which query answers for which object, and what each pair cost.

    costs = matching_costs(outputs, targets, matcher)       # the three cost terms per pair
    fig = plot_matching(image, outputs, targets, matcher)   # boxes, assignment lines, cost table
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from ddetr_lib.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from ddetr_lib.viz.images import _name, box_patch, show_image


@torch.no_grad()
def matching_costs(outputs: dict, targets: Sequence[dict], matcher, batch_index: int = 0) -> dict:
    """The matching cost of image ``batch_index``, term by term, and the matcher's assignment.

    outputs: the model's ``pred_logits`` (B, Q, C), ``pred_boxes`` (B, Q, 4);
    targets: B dicts with ``labels`` (N,) and ``boxes`` (N, 4) cxcywh normalised;
    matcher: a :class:`~ddetr_lib.models.HungarianMatcher` (e.g. ``criterion.matcher``).
    Returns ``class``, ``bbox`` (L1), ``giou`` (-GIoU): unweighted (Q, N) tensors;
    ``weights`` (cost_class, cost_bbox, cost_giou); ``total`` (Q, N), the weighted sum the
    matcher minimises; ``queries``, ``targets``: the matched pairs, ``queries[k]`` <-> ``targets[k]``.
    """
    if not 0 <= batch_index < len(targets):
        raise ValueError(f"batch_index: image {batch_index} is not among the {len(targets)} targets")
    logits = outputs["pred_logits"][batch_index].float()  # (Q, C)
    boxes = outputs["pred_boxes"][batch_index].float()  # (Q, 4)
    labels = targets[batch_index]["labels"].long().to(logits.device)  # (N,)
    tgt = targets[batch_index]["boxes"].float().to(boxes.device)  # (N, 4)
    cost_class = matcher.class_cost(logits, labels)  # (Q, N)
    cost_bbox = torch.cdist(boxes, tgt, p=1)  # (Q, N)
    cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt))  # (Q, N)
    weights = (float(matcher.cost_class), float(matcher.cost_bbox), float(matcher.cost_giou))
    total = weights[0] * cost_class + weights[1] * cost_bbox + weights[2] * cost_giou
    single = {k: (v[batch_index:batch_index + 1] if torch.is_tensor(v) and k.startswith("pred_") else v)
              for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
    queries, matched = matcher(single, [targets[batch_index]])[0]
    order = matched.argsort()  # list the pairs in target order
    return {"class": cost_class.cpu(), "bbox": cost_bbox.cpu(), "giou": cost_giou.cpu(), "weights": weights,
            "total": total.cpu(), "queries": queries[order], "targets": matched[order]}


def plot_matching(image, outputs: dict, targets: Sequence[dict], matcher, batch_index: int = 0,
                  names: Mapping[int, str] | Sequence[str] | None = None, show_unmatched: bool = True,
                  axes=None):
    """Predictions, ground truth and the Hungarian assignment of image ``batch_index``, with the cost of each pair.

    Left: the image with the ground-truth boxes (white, solid), every matched prediction
    (dashed, one colour per pair) joined to its object by a line, and (``show_unmatched``)
    the other queries' boxes faint. Right: a table of the pairs, with the weighted cost
    terms (class, L1, GIoU) and their sum. ``image``: image ``batch_index`` unpadded (any size:
    boxes are normalised). axes: two Axes to draw into. Returns the figure.
    """
    import matplotlib.pyplot as plt

    costs = matching_costs(outputs, targets, matcher, batch_index)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1, 1.15]},
                                 constrained_layout=True)
    fig = axes[0].figure
    ax, tab = axes
    h, w = show_image(ax, image)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    pred = box_cxcywh_to_xyxy(outputs["pred_boxes"][batch_index].detach().float().cpu()) * scale  # (Q, 4) pixels
    gt = box_cxcywh_to_xyxy(targets[batch_index]["boxes"].float().cpu()) * scale  # (N, 4)
    labels = targets[batch_index]["labels"].cpu().tolist()
    queries, matched = costs["queries"].tolist(), costs["targets"].tolist()
    palette = plt.get_cmap("tab10")

    if show_unmatched:
        for q in sorted(set(range(len(pred))) - set(queries)):
            ax.add_patch(box_patch(pred[q], edgecolor=(1, 1, 1, 0.35), linewidth=0.6, linestyle=":"))
    for box in gt:
        ax.add_patch(box_patch(box, edgecolor="white", linewidth=2.2, gid="ground_truth"))
    for k, (q, j) in enumerate(zip(queries, matched)):
        c = palette(k % 10)
        ax.add_patch(box_patch(pred[q], edgecolor=c, linewidth=1.6, linestyle="--", gid="matched_prediction"))
        x0, y0, x1, y1 = pred[q].tolist()
        pc = ((x0 + x1) / 2, (y0 + y1) / 2)  # box centres
        gc = ((gt[j, 0] + gt[j, 2]).item() / 2, (gt[j, 1] + gt[j, 3]).item() / 2)
        ax.plot([pc[0], gc[0]], [pc[1], gc[1]], color=c, linewidth=1.8, gid="assignment")
        ax.plot(*gc, marker="o", color="white", markeredgecolor=c, markersize=5)
        ax.text(pc[0], pc[1], str(k), color="black", fontsize=7, ha="center", va="center",
                bbox=dict(boxstyle="circle,pad=0.15", facecolor=c, edgecolor="none"))
    ax.set_title(f"{len(queries)} of {len(pred)} queries matched to {len(gt)} objects\n"
                 "white: ground truth, dashed: matched prediction", fontsize=9)

    wc, wb, wg = costs["weights"]
    header = ["pair", "query", "object", f"class x{wc:g}", f"L1 x{wb:g}", f"GIoU x{wg:g}", "total"]
    rows = []
    for k, (q, j) in enumerate(zip(queries, matched)):
        rows.append([str(k), str(q), _name(labels[j], names), f"{wc * costs['class'][q, j].item():+.2f}",
                     f"{wb * costs['bbox'][q, j].item():.2f}", f"{wg * costs['giou'][q, j].item():+.2f}",
                     f"{costs['total'][q, j].item():+.2f}"])
    tab.set_axis_off()
    tab.set_title("cost of each matched pair (lower is better; the assignment minimises the sum)",
                  fontsize=9)
    if rows:
        total = sum(costs["total"][q, j].item() for q, j in zip(queries, matched))
        rows.append(["", "", "", "", "", "sum", f"{total:+.2f}"])
        table = tab.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
        table.scale(1, 1.3)
        for k in range(len(rows) - 1):
            table[k + 1, 0].set_facecolor(palette(k % 10))
        for c in range(len(header)):
            table[len(rows), c].set_edgecolor("none")
            table[0, c].set_facecolor("#e8e8e8")
    else:
        tab.text(0.5, 0.5, "no objects: every query is 'no object'", ha="center", va="center",
                 transform=tab.transAxes)
    return fig

