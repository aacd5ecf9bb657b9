"""Headless tests of the static figures in ``ddetr_lib.viz`` (Fig. 6 itself: tests of viz.sampling).

Every figure runs on a randomly initialised model and on the shipped trained toy model,
for DETR and the Deformable DETR variants (base / refine / two-stage) where it applies,
on a padded batch (two images of different sizes). Positions are checked against a hand
computation from the raw record (mask -> valid cells -> pixels), not against the
library's own mapping helpers.
"""
from __future__ import annotations

import importlib.util
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402

from ddetr_lib import course, viz  # noqa: E402
from ddetr_lib.config import get_config  # noqa: E402
from ddetr_lib.data import build_dataset  # noqa: E402
from ddetr_lib.data.synthetic import generate  # noqa: E402
from ddetr_lib.models import build_criterion, build_model  # noqa: E402

DEFORMABLE = ("trained", "toy_deformable_detr", "toy_deformable_detr_refine", "toy_deformable_detr_refine_two_stage")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two val images of different sizes (so the batch pads one of them), their targets, names."""
    root = generate(tmp_path_factory.mktemp("viz_demo"), "demo", seed=0, num_train=2, num_val=8)
    _, cfg = course.load_model("toy_deformable_detr_demo")
    ds = build_dataset("val", root, cfg)
    items = [ds[i] for i in range(len(ds))]
    # The pair whose sizes differ most in both directions (each image is then padded one way:
    # the taller one on the right, the wider one at the bottom).
    def spread(i, j):
        (a, ta), (b, tb) = items[i], items[j]
        if not (len(ta["boxes"]) and len(tb["boxes"])):
            return 0.0
        return min(abs(a.shape[1] - b.shape[1]) / max(a.shape[1], b.shape[1]),
                   abs(a.shape[2] - b.shape[2]) / max(a.shape[2], b.shape[2]))

    i, j = max(((i, j) for i in range(len(items)) for j in range(i + 1, len(items))), key=lambda ij: spread(*ij))
    if spread(i, j) > 0.05:
        names = {c["id"]: c["name"] for c in ds.coco.dataset["categories"]}
        return {"images": [items[i][0], items[j][0]], "targets": [items[i][1], items[j][1]], "names": names}
    raise AssertionError("no pair of differently sized val images")


@pytest.fixture(scope="module")
def models(data):
    torch.manual_seed(0)
    trained, cfg = course.load_model("toy_deformable_detr_demo")
    out = {"trained": (trained, cfg)}
    for name in DEFORMABLE[1:] + ("toy_detr",):
        c = get_config(name, num_classes=cfg.num_classes, pretrained_backbone=False)
        out[name] = (build_model(c).eval(), c)
    return out


@pytest.fixture(scope="module")
def runs(models, data):
    return {name: viz.run_with_capture(m, data["images"]) for name, (m, _) in models.items()}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def padded_index(run) -> int:
    """The batch image with the most padding on the (finest) feature map."""
    mask = run.record["mask"] if run.kind == "detr" else run.record["masks"][0]  # (B, H, W)
    b = int(mask.flatten(1).sum(1).argmax())
    assert mask[b].any(), "the test batch should pad one image on the feature map"
    return b


def valid_cells(mask_l: torch.Tensor, b: int) -> tuple[int, int]:
    return int((~mask_l[b, :, 0]).sum()), int((~mask_l[b, 0, :]).sum())


def hand_pixels(loc_xy: np.ndarray, level: int, record, b: int, size) -> np.ndarray:
    """Padded-map location (x, y) in [0, 1] on ``level`` -> pixels of the unpadded image of ``size``:
    x * W_l is a position on the padded level map; the valid part (vw cells) spans the image."""
    h_l, w_l = (int(v) for v in record["spatial_shapes"][level])
    vh, vw = valid_cells(record["masks"][level], b)
    h, w = size
    return np.stack([loc_xy[..., 0] * w_l / vw * w, loc_xy[..., 1] * h_l / vh * h], -1)


# ----------------------------------------------------------------------------- package
def test_old_modules_are_gone_and_the_package_exports_everything():
    assert importlib.util.find_spec("ddetr_lib.visualize") is None
    assert importlib.util.find_spec("ddetr_lib.report") is None
    for name in ("draw_boxes", "plot_dataset_examples", "save_prediction_figure", "run_with_capture",
                 "plot_initial_vs_trained", "plot_refinement", "plot_two_stage", "plot_sampling_density",
                 "plot_detr_encoder_attention", "plot_detr_decoder_attention", "plot_matching",
                 "plot_learning_curves"):
        assert callable(getattr(viz, name)), name


def test_run_with_capture_records_a_padded_batch(runs, models, data):
    run = runs["trained"]
    assert run.kind == "deformable" and runs["toy_detr"].kind == "detr"
    assert run.outputs["pred_logits"].shape[0] == 2
    b = padded_index(run)
    assert (run.record["valid_ratios"][b] < 1).any()
    assert runs["toy_deformable_detr_refine_two_stage"].record["proposals"] is not None
    with pytest.raises(ValueError, match="images"):
        viz.run_with_capture(models["toy_detr"][0], [])
    with pytest.raises(ValueError, match="model"):
        viz.run_with_capture(torch.nn.Linear(2, 2), data["images"])


# ----------------------------------------------------------------------------- initial pattern
@pytest.mark.parametrize("name", DEFORMABLE[1:])
def test_initial_sampling_locations_equal_a_freshly_initialised_model(runs, name):
    """A randomly initialised model has the official init: its captured locations are the pattern."""
    rec = runs[name].record
    for stage in ("encoder", "decoder"):
        for layer in rec[stage]:
            m, p = layer["sampling_locations"].shape[2], layer["sampling_locations"].shape[4]
            b = padded_index(runs[name])
            loc, w = viz.initial_sampling_locations(layer["reference_points"][b], rec["spatial_shapes"], m, p)
            torch.testing.assert_close(loc, layer["sampling_locations"][b].float(), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(w, layer["attention_weights"][b].float(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", DEFORMABLE)
@pytest.mark.parametrize("stage", ["encoder", "decoder"])
def test_initial_vs_trained_draws_every_point_where_it_falls(runs, data, name, stage):
    run = runs[name]
    rec = run.record
    b = padded_index(run)
    image = data["images"][b]
    size = tuple(image.shape[-2:])
    kw = dict(point=(size[1] * 0.3, size[0] * 0.6)) if stage == "encoder" else dict(outputs=run.outputs)
    fig = viz.plot_initial_vs_trained(rec, image, batch_index=b, stage=stage, layer=-1, **kw)
    layer = rec[stage][-1]
    n, lq, m, n_levels, p, _ = layer["sampling_locations"].shape
    if stage == "encoder":  # the level-0 cell under the point, by hand
        vh, vw = valid_cells(rec["masks"][0], b)
        row, col = int(0.6 * vh), int(0.3 * vw)
        query = row * int(rec["spatial_shapes"][0, 1]) + col
    else:
        query = int(run.outputs["pred_logits"][b].sigmoid().max(-1).values.argmax())
    init_ax, trained_ax = fig.axes[:2]
    ref = layer["reference_points"][b, query, 0].numpy()  # level 0, padded coordinates
    h0, w0 = (int(v) for v in rec["spatial_shapes"][0])
    vh0, vw0 = valid_cells(rec["masks"][0], b)
    ref_px = np.array([ref[0] * w0 / vw0 * size[1], ref[1] * h0 / vh0 * size[0]])
    for ax in (init_ax, trained_ax):
        pts = {c.get_gid(): c for c in ax.collections if isinstance(c, PathCollection)}
        assert len(pts) == m * n_levels  # one scatter per head and level ...
        assert sum(len(c.get_offsets()) for c in pts.values()) == m * n_levels * p  # ... P points each
        (cross,) = [ln for ln in ax.lines if ln.get_gid() == "reference_point"]
        np.testing.assert_allclose(np.r_[cross.get_xdata(), cross.get_ydata()], ref_px, rtol=1e-4, atol=1e-3)
    for lvl in range(n_levels):
        h_l, w_l = (int(v) for v in rec["spatial_shapes"][lvl])
        for head in range(m):
            # Trained panel: the record's locations, mapped by hand.
            want = hand_pixels(layer["sampling_locations"][b, query, head, lvl].numpy(), lvl, rec, b, size)
            got = {c.get_gid(): c for c in trained_ax.collections}[f"points_head{head}_level{lvl}"].get_offsets()
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-3)
            # Initial panel: head m's ray, point k at (k + 1) level-l pixels along angle 2 pi m / M
            # (a point reference), or (k + 1) / P half box sizes (a box reference).
            theta = 2 * math.pi * head / m
            step = np.array([math.cos(theta), math.sin(theta)])
            step = step / np.abs(step).max()
            full_ref = layer["reference_points"][b, query, lvl].numpy()
            k = np.arange(1, p + 1)[:, None]
            if full_ref.shape[0] == 2:
                loc = full_ref[None] + k * step[None] / np.array([w_l, h_l])
            else:
                loc = full_ref[None, :2] + k * step[None] / p * full_ref[None, 2:] * 0.5
            got = {c.get_gid(): c for c in init_ax.collections}[f"points_head{head}_level{lvl}"].get_offsets()
            np.testing.assert_allclose(np.asarray(got), hand_pixels(loc, lvl, rec, b, size), rtol=1e-4, atol=1e-3)


def test_initial_vs_trained_scales_with_the_picture_and_checks_arguments(runs, data):
    run = runs["trained"]
    b = padded_index(run)
    image = data["images"][b]
    big = torch.nn.functional.interpolate(image[None], scale_factor=2.0, mode="bilinear")[0]
    small_fig = viz.plot_initial_vs_trained(run.record, image, batch_index=b, query=5)
    big_fig = viz.plot_initial_vs_trained(run.record, big, batch_index=b, query=5)
    for gid in ("points_head0_level0", "points_head1_level2"):
        small = {c.get_gid(): c for c in small_fig.axes[1].collections}[gid].get_offsets()
        large = {c.get_gid(): c for c in big_fig.axes[1].collections}[gid].get_offsets()
        np.testing.assert_allclose(np.asarray(large), 2 * np.asarray(small), rtol=1e-5)
    with pytest.raises(ValueError, match="stage"):
        viz.plot_initial_vs_trained(run.record, image, stage="middle")
    with pytest.raises(ValueError, match="batch_index"):
        viz.plot_initial_vs_trained(run.record, image, batch_index=2)
    with pytest.raises(ValueError, match="query"):
        viz.plot_initial_vs_trained(run.record, image, stage="decoder")  # neither query nor outputs
    with pytest.raises(ValueError, match="record"):
        viz.plot_initial_vs_trained(runs["toy_detr"].record, image)


# ----------------------------------------------------------------------------- refinement
def _iou(a, b) -> float:
    """IoU of two cxcywh boxes, by hand."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _giou(a, b) -> float:
    """Generalised IoU of two cxcywh boxes, by hand: IoU - (hull - union) / hull."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _rect_xyxy(patch) -> np.ndarray:
    x, y = patch.get_xy()
    return np.array([x, y, x + patch.get_width(), y + patch.get_height()])


def _cxcywh_to_pixels(box, size) -> np.ndarray:
    h, w = size
    cx, cy, bw, bh = (float(v) for v in box)
    return np.array([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])


@pytest.mark.parametrize("name", DEFORMABLE)
def test_refinement_draws_each_layers_reference_and_the_ground_truth(runs, data, name):
    run = runs[name]
    b = padded_index(run)
    image, target = data["images"][b], data["targets"][b]
    size = tuple(image.shape[-2:])
    fig = viz.plot_refinement(run.record, run.outputs, image, batch_index=b, target=target, names=data["names"])
    ax, ax_iou = fig.axes[:2]
    patches = {p.get_gid(): p for p in ax.patches}
    # The default object is the largest; the query the one whose final box overlaps it most.
    gt = target["boxes"][(target["boxes"][:, 2] * target["boxes"][:, 3]).argmax()].tolist()
    final = run.outputs["pred_boxes"][b]
    ious = [_iou(final[q].tolist(), gt) for q in range(final.shape[0])]
    q = int(ax.get_title().split(":")[0].split()[-1])  # "query 7: circle 0.93"
    assert ious[q] == pytest.approx(max(ious), abs=1e-6)
    np.testing.assert_allclose(_rect_xyxy(patches["ground_truth"]), _cxcywh_to_pixels(gt, size), atol=1e-3)
    np.testing.assert_allclose(_rect_xyxy(patches["final_box"]), _cxcywh_to_pixels(final[q], size), atol=1e-3)
    refs = [r[b, q] for r in run.record["decoder_reference_boxes"]]
    n_layers = len(refs)
    for l, r in enumerate(refs):
        if len(r) == 4:
            np.testing.assert_allclose(_rect_xyxy(patches[f"reference_box_{l}"]), _cxcywh_to_pixels(r, size),
                                       atol=1e-3)
        else:
            (dot,) = [ln for ln in ax.lines if ln.get_gid() == f"reference_point_{l}"]
            np.testing.assert_allclose([dot.get_xdata()[0], dot.get_ydata()[0]],
                                       [float(r[0]) * size[1], float(r[1]) * size[0]], atol=1e-3)
    # Reference boxes: none without refinement; with it, every layer but the first (which gets
    # the query's reference point); two-stage: every layer (the proposals are boxes).
    want_boxes = {"trained": 0, "toy_deformable_detr": 0, "toy_deformable_detr_refine": n_layers - 1,
                  "toy_deformable_detr_refine_two_stage": n_layers}[name]
    assert sum(g.startswith("reference_box_") for g in patches) == want_boxes
    refine = want_boxes > 0
    # IoU panel: each layer's predicted box against the ground truth, by hand.
    preds = [a["pred_boxes"][b, q].tolist() for a in run.outputs["aux_outputs"]] + [final[q].tolist()]
    (line,) = [ln for ln in ax_iou.lines if ln.get_gid() == "iou_predictions"]
    np.testing.assert_allclose(line.get_ydata(), [_iou(p, gt) for p in preds], atol=1e-5)
    assert (len([ln for ln in ax_iou.lines if ln.get_gid() == "iou_references"]) == 1) == refine


def test_refinement_without_target_follows_the_best_query(runs, data):
    run = runs["trained"]
    fig = viz.plot_refinement(run.record, run.outputs, data["images"][0], batch_index=0)
    q = int(run.outputs["pred_logits"][0].sigmoid().max(-1).values.argmax())
    assert f"query {q}:" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="object_index"):
        viz.plot_refinement(run.record, run.outputs, data["images"][0], target=data["targets"][0], object_index=99)


# ----------------------------------------------------------------------------- two-stage
def test_two_stage_proposals_coloured_by_score(runs, data):
    run = runs["toy_deformable_detr_refine_two_stage"]
    b = padded_index(run)
    image = data["images"][b]
    size = tuple(image.shape[-2:])
    k = 12
    fig = viz.plot_two_stage(run.record, run.outputs, image, batch_index=b, k=k, names=data["names"])
    props = run.record["proposals"]
    idx = props["topk_indices"][b, :k]
    scores = props["logits"][b, idx, 0].sigmoid().numpy()
    boxes = props["boxes"][b, idx]
    drawn = [p for p in fig.axes[0].patches if p.get_gid() == "proposal"]
    assert len(drawn) == k
    # Drawn from the lowest score up (best on top); colours run along the colour map with the score.
    order = np.argsort(scores, kind="stable")
    for patch, i in zip(drawn, order):
        np.testing.assert_allclose(_rect_xyxy(patch), _cxcywh_to_pixels(boxes[i], size), atol=1e-3)
    cmap = plt.get_cmap("viridis")
    lo, hi = scores.min(), scores.max()
    positions = []
    for patch, i in zip(drawn, order):
        want = cmap((scores[i] - lo) / (hi - lo))
        np.testing.assert_allclose(patch.get_edgecolor(), want, atol=1e-6)
        positions.append((scores[i] - lo) / (hi - lo))
    assert np.all(np.diff(positions) >= 0)
    assert np.all(np.diff([p.get_linewidth() for p in drawn]) >= -1e-9)
    # The title counts the proposals per feature level (token index -> level, by hand).
    starts = run.record["level_start_index"].tolist() + [10**9]
    counts = [sum(starts[l] <= i < starts[l + 1] for i in idx.tolist()) for l in range(len(starts) - 1)]
    assert fig.axes[0].get_title().endswith(": " + "/".join(map(str, counts)))
    # The top proposals are the decoder's first reference boxes.
    torch.testing.assert_close(run.record["decoder_reference_boxes"][0][b, :k], boxes)
    keep = (run.outputs["pred_logits"][b].sigmoid().max(-1).values >= 0.3).sum()
    assert len(fig.axes[1].patches) == max(int(keep), 3)  # axes: proposals, detections, colour bar


@pytest.mark.parametrize("name", ["trained", "toy_deformable_detr_refine"])
def test_two_stage_refuses_a_single_stage_model(runs, data, name):
    with pytest.raises(ValueError, match="two-stage"):
        viz.plot_two_stage(runs[name].record, runs[name].outputs, data["images"][0])


# ----------------------------------------------------------------------------- density
@pytest.mark.parametrize("name", DEFORMABLE)
def test_sampling_density_is_the_weighted_histogram_of_the_points(runs, data, name):
    run = runs[name]
    rec = run.record
    b = padded_index(run)
    image = data["images"][b]
    size = tuple(image.shape[-2:])
    fig = viz.plot_sampling_density(rec, run.outputs, image, batch_index=b, score_threshold=0.3, bins=32)
    scores = run.outputs["pred_logits"][b].sigmoid().max(-1).values
    queries = torch.nonzero(scores >= 0.3).flatten()
    if len(queries) < 3:
        queries = scores.argsort(descending=True)[:3]
    layer = rec["decoder"][-1]
    xs, ys, ws = [], [], []
    for lvl in range(rec["spatial_shapes"].shape[0]):
        pix = hand_pixels(layer["sampling_locations"][b, queries, :, lvl].numpy(), lvl, rec, b, size)
        xs.append(pix[..., 0].ravel())
        ys.append(pix[..., 1].ravel())
        ws.append(layer["attention_weights"][b, queries, :, lvl].numpy().ravel())
    n_heads = layer["sampling_locations"].shape[2]
    x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws) / (len(queries) * n_heads)
    h_img, w_img = size
    bx, by = (32, round(32 * h_img / w_img)) if w_img >= h_img else (round(32 * w_img / h_img), 32)
    inside = (x >= 0) & (x <= w_img) & (y >= 0) & (y <= h_img)
    want = np.zeros((by, bx))
    for xi, yi, wi in zip(x[inside], y[inside], w[inside]):
        want[min(int(yi / h_img * by), by - 1), min(int(xi / w_img * bx), bx - 1)] += wi
    density, outside = viz.sampling_density(rec, queries, size, b, -1, bins=32)
    np.testing.assert_allclose(density, want, atol=1e-6)
    assert outside == int((~inside).sum())
    assert density.sum() + w[~inside].sum() == pytest.approx(1.0, abs=1e-5)  # each query-head's weights sum to 1
    (im,) = [a for a in fig.axes[0].get_images() if a.get_gid() == "density"]
    np.testing.assert_allclose(im.get_array(), gaussian_filter(want, 0.8), atol=1e-6)
    assert im.get_extent() == [0.0, float(w_img), float(h_img), 0.0]
    assert len([p for p in fig.axes[0].patches if p.get_gid() == "detection"]) == len(queries)


# ----------------------------------------------------------------------------- DETR
def test_detr_encoder_attention_at_a_pixel(runs, data):
    run = runs["toy_detr"]
    maps = run.record
    b = padded_index(run)
    image = data["images"][b]
    h, w = image.shape[-2:]
    points = [(w * 0.25, h * 0.5), (w - 1.0, h - 1.0)]
    fig = viz.plot_detr_encoder_attention(maps, image, points, batch_index=b, layer=1)
    hf, wf = maps["shape"]
    vh, vw = int((~maps["mask"][b, :, 0]).sum()), int((~maps["mask"][b, 0, :]).sum())
    assert vw < wf or vh < hf  # this image is padded in the feature map too
    for ax, (x, y) in zip(fig.axes[1:3], points):
        row, col = int(y / h * vh), int(x / w * vw)
        want = maps["encoder"][1][b, :, row * wf + col].mean(0).reshape(hf, wf)[:vh, :vw]
        (im,) = [a for a in ax.get_images() if a.get_gid() == "attention"]
        np.testing.assert_allclose(im.get_array(), want.numpy(), atol=1e-7)
        assert im.get_extent() == [0.0, float(w), float(h), 0.0]
    # One head instead of the mean.
    fig = viz.plot_detr_encoder_attention(maps, image, points[0], batch_index=b, head=2)
    row, col = int(points[0][1] / h * vh), int(points[0][0] / w * vw)
    (im,) = [a for a in fig.axes[1].get_images() if a.get_gid() == "attention"]
    np.testing.assert_allclose(im.get_array(), maps["encoder"][-1][b, 2, row * wf + col].reshape(hf, wf)[:vh, :vw])
    with pytest.raises(ValueError, match="points"):
        viz.plot_detr_encoder_attention(maps, image, (w + 5, 0), batch_index=b)
    with pytest.raises(ValueError, match="maps"):
        viz.plot_detr_encoder_attention(runs["trained"].record, image, points)


def test_detr_decoder_attention_per_detection_and_head(runs, data):
    run = runs["toy_detr"]
    maps = run.record
    b = padded_index(run)
    image = data["images"][b]
    fig = viz.plot_detr_decoder_attention(maps, run.outputs, image, batch_index=b, score_threshold=0.0,
                                          max_detections=3, names=data["names"])
    heads = maps["decoder_cross"][-1].shape[1]
    grid = np.asarray(fig.axes).reshape(3, 2 + heads)
    prob = run.outputs["pred_logits"][b].softmax(-1)[:, :-1].max(-1).values
    queries = prob.argsort(descending=True)[:3].tolist()
    hf, wf = maps["shape"]
    vh, vw = int((~maps["mask"][b, :, 0]).sum()), int((~maps["mask"][b, 0, :]).sum())
    for r, q in enumerate(queries):
        assert grid[r, 0].get_title().startswith(f"query {q}:")
        weights = maps["decoder_cross"][-1][b, :, q]  # (M, HW)
        maps_want = [weights.mean(0)] + [weights[m] for m in range(heads)]
        for c, want in enumerate(maps_want, start=1):
            (im,) = [a for a in grid[r, c].get_images() if a.get_gid() == "attention"]
            np.testing.assert_allclose(im.get_array(), want.reshape(hf, wf)[:vh, :vw].numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="maps"):
        viz.plot_detr_decoder_attention(runs["trained"].record, runs["trained"].outputs, image)
    with pytest.raises(ValueError, match="layer"):
        viz.plot_detr_decoder_attention(maps, run.outputs, image, layer=5)


# ----------------------------------------------------------------------------- matching
@pytest.mark.parametrize("name", ["toy_detr"] + list(DEFORMABLE))
def test_matching_costs_and_assignment(runs, models, data, name):
    run = runs[name]
    _, cfg = models[name]
    matcher = build_criterion(cfg).matcher
    targets = data["targets"]
    b = padded_index(run)
    costs = viz.matching_costs(run.outputs, targets, matcher, batch_index=b)
    pred, tgt = run.outputs["pred_boxes"][b].double(), targets[b]["boxes"].double()
    q, n = pred.shape[0], tgt.shape[0]
    # L1 and GIoU of every pair, by hand.
    for i in range(0, q, 7):
        for j in range(n):
            assert costs["bbox"][i, j].item() == pytest.approx((pred[i] - tgt[j]).abs().sum().item(), abs=1e-5)
            assert -costs["giou"][i, j].item() == pytest.approx(_giou(pred[i].tolist(), tgt[j].tolist()), abs=1e-5)
    wc, wb, wg = cfg.set_cost_class, cfg.set_cost_bbox, cfg.set_cost_giou
    torch.testing.assert_close(costs["total"], wc * costs["class"] + wb * costs["bbox"] + wg * costs["giou"])
    # The assignment is the optimal one for the total cost.
    rows, cols = linear_sum_assignment(costs["total"].numpy())
    got = sorted(zip(costs["queries"].tolist(), costs["targets"].tolist()))
    assert got == sorted(zip(rows.tolist(), cols.tolist()))

    image = data["images"][b]
    size = tuple(image.shape[-2:])
    fig = viz.plot_matching(image, run.outputs, targets, matcher, batch_index=b, names=data["names"])
    ax, tab = fig.axes[:2]
    lines = [ln for ln in ax.lines if ln.get_gid() == "assignment"]
    assert len(lines) == n == len([p for p in ax.patches if p.get_gid() == "ground_truth"])
    for line, qi, tj in zip(lines, costs["queries"].tolist(), costs["targets"].tolist()):
        pb, tb = _cxcywh_to_pixels(pred[qi], size), _cxcywh_to_pixels(tgt[tj], size)
        np.testing.assert_allclose(line.get_xdata(), [(pb[0] + pb[2]) / 2, (tb[0] + tb[2]) / 2], atol=1e-3)
        np.testing.assert_allclose(line.get_ydata(), [(pb[1] + pb[3]) / 2, (tb[1] + tb[3]) / 2], atol=1e-3)
    table = tab.tables[0]
    n_rows = 1 + max(r for r, _ in table.get_celld())
    assert n_rows == 1 + n + 1  # header, one row per pair, the sum
    total = sum(costs["total"][i, j].item() for i, j in zip(costs["queries"].tolist(), costs["targets"].tolist()))
    assert table[n_rows - 1, 6].get_text().get_text() == f"{total:+.2f}"


# ----------------------------------------------------------------------------- curves
def _write_log(path, entries):
    path.mkdir(parents=True, exist_ok=True)
    (path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_learning_curves_plot_every_run_by_epoch_and_wall_clock(tmp_path):
    def entry(epoch, secs, ap=None, small=None):
        e = {"epoch": epoch, "train_loss": 10.0 / (epoch + 1), "train_loss_ce": 1.0 / (epoch + 1),
             "train_loss_bbox": 0.5 / (epoch + 1), "train_loss_giou": 0.8 / (epoch + 1), "train_time_s": secs}
        if ap is not None:
            e.update(test_AP=ap, test_AP50=2 * ap, test_AP_small=small)
        return e

    a = _write_log(tmp_path / "run_a", [entry(0, 60, 0.1, -1.0), entry(1, 120), entry(2, 60, 0.3, 0.2)])
    b = _write_log(tmp_path / "run_b", [entry(0, 30, 0.05, 0.01), entry(1, 30, 0.07, 0.02)])
    fig = viz.plot_learning_curves([a, b / "log.jsonl"], lr_drop=1)
    axes = np.asarray(fig.axes).reshape(2, 4)
    loss_ax, ap_ax, ap50_ax, small_ax = axes[0]
    assert len(loss_ax.lines) == 2 * 4 + 1  # per run: total + 3 terms; the lr-drop line
    ap_a = ap_ax.lines[0]
    np.testing.assert_allclose(ap_a.get_xdata(), [1, 3])  # only evaluated epochs, 1-based
    np.testing.assert_allclose(ap_a.get_ydata(), [0.1, 0.3])
    np.testing.assert_allclose(ap50_ax.lines[1].get_ydata(), [0.1, 0.14])
    assert np.isnan(small_ax.lines[0].get_ydata()[0])  # -1 (no small objects) is not a value
    # By wall-clock: cumulative training minutes at each evaluation.
    np.testing.assert_allclose(axes[1, 1].lines[0].get_xdata(), [1.0, 4.0])
    np.testing.assert_allclose(axes[1, 1].lines[1].get_xdata(), [0.5, 1.0])
    assert [t.get_text() for t in ap_ax.get_legend().get_texts()] == ["run_a", "run_b"]
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [10, 5, 10 / 3])
    assert loss_ax.get_yscale() == "log"
    # Labels from a dict, and entries instead of files.
    fig = viz.plot_learning_curves({"mine": viz.read_log(a)}, xs=("epoch",))
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["mine"]
    with pytest.raises(ValueError, match="logs"):
        viz.plot_learning_curves(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "log.jsonl").write_text('{"epoch": 0}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        viz.read_log(tmp_path / "bad")


# ----------------------------------------------------------------------------- predictions (train.py)
def test_save_prediction_figure_draws_ground_truth_and_predictions(tmp_path):
    root = generate(tmp_path / "demo", "demo", seed=1, num_train=2, num_val=3)
    ds = build_dataset("val", root, get_config("toy_deformable_detr"))
    results = {}
    for image_id in sorted(ds.coco.imgs):
        anns = ds.coco.imgToAnns[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        results[image_id] = {"scores": torch.full((len(anns),), 0.9),
                             "labels": torch.tensor([a["category_id"] for a in anns]),
                             "boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)}
    path = viz.save_prediction_figure(ds, results, tmp_path / "pred.png", n=3)
    assert path.exists() and path.stat().st_size > 5_000
    assert plt.get_fignums() == []  # no pyplot figure left open by a training run
