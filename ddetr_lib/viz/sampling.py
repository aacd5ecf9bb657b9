"""Where deformable attention looks: sampling points on the image (the paper's Fig. 6).

Deformable attention (``capture_deformable``) records, for every layer,

    sampling_locations (N, Lq, M, L, P, 2)   (x, y) in [0, 1] of each level's PADDED map
    attention_weights  (N, Lq, M, L, P)      softmaxed over the L*P points of each head
    reference_points   (N, Lq, L, 2 or 4)    padded coordinates (a box for refine / two-stage)

Batches pad every image to the largest one (bottom and right), so "x = 1" is the right
edge of the *padded* map, not of the image. The model itself moves between the two
with the valid ratios ``record["valid_ratios"] (N, L, 2)`` as (w, h): the valid fraction
of level l's map. A point at padded position x on level l is at ``x / ratio_w`` of the
unpadded image, the same normalised coordinates in which boxes are predicted. Those do
not change when an image is resized, so one rule draws on the image the model saw and
on the original photo alike: give the size of the picture you draw on.

Pixel coordinates are those of the whole package (``ddetr_lib.viz.common``): an image
is drawn over the extent ``(0, W, H, 0)``, pixel (i, j) covers [j, j + 1] x [i, i + 1], so
a normalised coordinate u sits at ``u * W``. On a level's own map the same rule gives
``loc * size``; the kernel's bilinear pixel index is that minus 0.5 (its centre rule
``pixel = loc * size - 0.5``).

    points = query_points(record, "decoder", layer=1, query=7, batch_index=0, size=(h, w))
    points.xy         (M, L, P, 2)  image pixels (x, y)
    points.weights    (M, L, P)
    points.level_xy   (M, L, P, 2)  coordinates on each level's map (cell (i, j) = [j, j+1] x [i, i+1])
    fig = plot_query_sampling(image, record, "decoder", 1, 7, outputs=outputs)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

STAGES = ("encoder", "decoder")


# ----------------------------------------------------------------------------- coordinates
def padded_to_image_pixels(xy, valid_ratios, size) -> torch.Tensor:
    """(x, y) in [0, 1] of a padded level map -> pixels of the unpadded picture.

    xy: (..., 2); valid_ratios: (w, h) ratios of the level each point is on, broadcastable
    to ``xy`` (e.g. (L, 1, 2) for (L, P, 2) points); size: (h, w) of the picture drawn on
    (the image the model saw, or the original before resizing).
    -> (..., 2) pixel coordinates (x, y) on the extent (0, W, H, 0).
    """
    xy = torch.as_tensor(xy, dtype=torch.float64)
    ratios = torch.as_tensor(valid_ratios, dtype=torch.float64)
    h, w = (float(v) for v in size)
    scale = torch.tensor([w, h], dtype=torch.float64)
    return xy / ratios * scale


def sampling_locations_to_pixels(locations, valid_ratios, size) -> torch.Tensor:
    """Sampling locations (..., L, P, 2) of one batch image, valid_ratios (L, 2) of that image,
    size (h, w) -> (..., L, P, 2) image pixels (x, y)."""
    ratios = torch.as_tensor(valid_ratios)[:, None, :]  # (L, 1, 2)
    return padded_to_image_pixels(locations, ratios, size)


def reference_points_to_pixels(reference_points, valid_ratios, size):
    """Reference points (..., L, 2 or 4) of one batch image (padded coordinates, as given to
    the attention) -> (centre (..., 2) in image pixels (x, y), box (..., 4) as pixel
    (x0, y0, x1, y1) or ``None`` for a point reference).

    The model scales one valid-image reference by every level's ratio, so level 0 gives it back.
    """
    ref = torch.as_tensor(reference_points, dtype=torch.float64)[..., 0, :]  # (..., 2 or 4) level 0
    ratio = torch.as_tensor(valid_ratios, dtype=torch.float64)[0]  # (2,)
    centre = padded_to_image_pixels(ref[..., :2], ratio, size)
    if ref.shape[-1] == 2:
        return centre, None
    h, w = (float(v) for v in size)
    half = ref[..., 2:] / ratio * torch.tensor([w, h], dtype=torch.float64) / 2  # (..., 2)
    return centre, torch.cat([centre - half, centre + half], -1)


def to_level_coords(locations, spatial_shapes) -> torch.Tensor:
    """Sampling locations (..., L, P, 2) -> coordinates on each level's padded map,
    ``loc * (W_l, H_l)``: cell (i, j) covers [j, j + 1] x [i, i + 1]. (The kernel reads the
    bilinear pixel index ``loc * size - 0.5``: the same point, centres at integers.)"""
    shapes = torch.as_tensor(spatial_shapes, dtype=torch.float64)  # (L, 2) rows (H, W)
    wh = shapes.flip(-1)[:, None, :]  # (L, 1, 2) as (W, H)
    return torch.as_tensor(locations, dtype=torch.float64) * wh


def valid_level_sizes(record: Mapping, batch_index: int = 0) -> torch.Tensor:
    """(L, 2) int64: the unpadded (h, w) of every level's map for one batch image."""
    masks = record["masks"]
    return torch.tensor([[int((~m[batch_index, :, 0]).sum()), int((~m[batch_index, 0, :]).sum())]
                         for m in masks], dtype=torch.int64)


def image_size_of(image) -> tuple[int, int]:
    """(h, w) of an (H, W, 3) array, a PIL image or a (3, H, W) tensor."""
    if torch.is_tensor(image):
        return int(image.shape[-2]), int(image.shape[-1])
    if hasattr(image, "size") and not isinstance(image, np.ndarray):  # PIL: size is (w, h)
        return int(image.size[1]), int(image.size[0])
    arr = np.asarray(image)
    return int(arr.shape[0]), int(arr.shape[1])


# ----------------------------------------------------------------------------- encoder queries
def encoder_query_index(record: Mapping, level: int, row: int, col: int) -> int:
    """Token index of the encoder query at pixel (row, col) of level ``level``'s padded map."""
    h, w = (int(v) for v in record["spatial_shapes"][level])
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"row, col: ({row}, {col}) is outside level {level}'s {h}x{w} map")
    return int(record["level_start_index"][level]) + row * w + col


def encoder_query_cell(record: Mapping, index: int) -> tuple[int, int, int]:
    """Inverse of :func:`encoder_query_index`: token index -> (level, row, col)."""
    starts = [int(s) for s in record["level_start_index"]]
    shapes = [(int(h), int(w)) for h, w in record["spatial_shapes"]]
    total = starts[-1] + shapes[-1][0] * shapes[-1][1]
    if not 0 <= index < total:
        raise ValueError(f"index: {index} is not an encoder token (0 .. {total - 1})")
    level = max(l for l, s in enumerate(starts) if s <= index)
    row, col = divmod(index - starts[level], shapes[level][1])
    return level, row, col


def encoder_query_at(record: Mapping, x: float, y: float, size, level: int = 0, batch_index: int = 0) -> int:
    """Token index of the level-``level`` encoder query whose cell holds image pixel (x, y)
    (pixel coordinates of a picture of ``size`` (h, w)); clipped to the valid map."""
    vh, vw = (int(v) for v in valid_level_sizes(record, batch_index)[level])
    h, w = (float(v) for v in size)
    col = min(max(int(np.floor(x / w * vw)), 0), vw - 1)
    row = min(max(int(np.floor(y / h * vh)), 0), vh - 1)
    return encoder_query_index(record, level, row, col)


def encoder_cell_box(record: Mapping, index: int, size, batch_index: int = 0) -> np.ndarray:
    """Pixel box (x0, y0, x1, y1) on a picture of ``size`` (h, w) covered by encoder query ``index``'s cell."""
    level, row, col = encoder_query_cell(record, index)
    vh, vw = (int(v) for v in valid_level_sizes(record, batch_index)[level])
    h, w = (float(v) for v in size)
    return np.array([col / vw * w, row / vh * h, (col + 1) / vw * w, (row + 1) / vh * h])


# ----------------------------------------------------------------------------- one query
@dataclass
class QueryPoints:
    """The sampling points of one query of one layer, ready to draw.

    xy (M, L, P, 2) image pixels; weights (M, L, P); level_xy (M, L, P, 2) coordinates
    on each level's padded map; reference (2,) image pixel of the reference point;
    reference_box (4,) pixel (x0, y0, x1, y1) for a box reference, else None;
    level_sizes (L, 2) the valid (h, w) of each level's map; size (h, w) of the picture.
    """

    stage: str
    layer: int
    query: int
    xy: np.ndarray
    weights: np.ndarray
    level_xy: np.ndarray
    reference: np.ndarray
    reference_box: np.ndarray | None
    level_sizes: np.ndarray
    size: tuple[int, int]

    @property
    def num_heads(self) -> int:
        return self.weights.shape[0]

    @property
    def num_levels(self) -> int:
        return self.weights.shape[1]

    @property
    def num_points(self) -> int:
        return self.weights.shape[2]

    def select(self, heads=None, levels=None, top_k: int | None = None):
        """Flatten the chosen heads and levels, keep the ``top_k`` heaviest points.

        -> dict of arrays, one row per point, lightest first (so heavy points are
        drawn on top): ``xy`` (K, 2), ``level_xy`` (K, 2), ``weights`` (K,), ``head``,
        ``level``, ``point`` (K,) indices.
        """
        m, l, p = self.weights.shape
        heads = _check_subset("heads", heads, m)
        levels = _check_subset("levels", levels, l)
        hh, ll, pp = np.meshgrid(heads, levels, np.arange(p), indexing="ij")
        hh, ll, pp = hh.ravel(), ll.ravel(), pp.ravel()
        w = self.weights[hh, ll, pp]
        order = np.argsort(w, kind="stable")  # lightest first
        if top_k is not None:
            if int(top_k) < 1:
                raise ValueError(f"top_k: expected a positive number of points, got {top_k}")
            order = order[-int(top_k):]
        hh, ll, pp = hh[order], ll[order], pp[order]
        return {"xy": self.xy[hh, ll, pp], "level_xy": self.level_xy[hh, ll, pp], "weights": w[order],
                "head": hh, "level": ll, "point": pp}


def _check_subset(name: str, chosen, n: int) -> np.ndarray:
    if chosen is None or (isinstance(chosen, str) and chosen == "all"):
        return np.arange(n)
    if isinstance(chosen, (int, np.integer)):
        chosen = [int(chosen)]
    chosen = np.asarray(sorted({int(c) for c in chosen}), dtype=np.int64)
    if chosen.size == 0 or chosen.min() < 0 or chosen.max() >= n:
        raise ValueError(f"{name}: expected indices in 0 .. {n - 1} (or 'all'), got {chosen.tolist()}")
    return chosen


def _check_stage_layer(record: Mapping, stage: str, layer: int):
    if stage not in STAGES:
        raise ValueError(f"stage: expected 'encoder' or 'decoder', got {stage!r}")
    layers = record.get(stage) or []
    if not layers:
        raise ValueError("record: empty; run the model inside `with capture_deformable(model) as record:` first")
    if not 0 <= int(layer) < len(layers):
        raise ValueError(f"layer: {layer} is not a {stage} layer (0 .. {len(layers) - 1})")
    return layers[int(layer)]


def query_points(record: Mapping, stage: str, layer: int, query: int, batch_index: int = 0,
                 size=None) -> QueryPoints:
    """The sampling points of query ``query`` of ``stage`` layer ``layer`` for batch image
    ``batch_index``, mapped to a picture of ``size`` (h, w) (default: the image the model
    saw, if the record can tell — pass it)."""
    rec = _check_stage_layer(record, stage, layer)
    n, lq = rec["attention_weights"].shape[:2]
    if not 0 <= batch_index < n:
        raise ValueError(f"batch_index: {batch_index} is not in the batch of {n}")
    if not 0 <= int(query) < lq:
        raise ValueError(f"query: {query} is not a {stage} query (0 .. {lq - 1})")
    if size is None:
        raise ValueError("size: give the (h, w) of the picture to draw on")
    ratios = record["valid_ratios"][batch_index]  # (L, 2)
    loc = rec["sampling_locations"][batch_index, int(query)].double()  # (M, L, P, 2)
    centre, box = reference_points_to_pixels(rec["reference_points"][batch_index, int(query)], ratios, size)
    return QueryPoints(
        stage=stage, layer=int(layer), query=int(query),
        xy=sampling_locations_to_pixels(loc, ratios, size).numpy(),
        weights=rec["attention_weights"][batch_index, int(query)].double().numpy(),
        level_xy=to_level_coords(loc, record["spatial_shapes"]).numpy(),
        reference=centre.numpy(), reference_box=None if box is None else box.numpy(),
        level_sizes=valid_level_sizes(record, batch_index).numpy(),
        size=(int(size[0]), int(size[1])),
    )


# ----------------------------------------------------------------------------- drawing
POINT_CMAP = "viridis"  # perceptually ordered: lighter = heavier
SIZE_RANGE = (12.0, 110.0)  # marker area (points^2) for weight 0 .. the largest shown


def marker_sizes(weights, vmax: float) -> np.ndarray:
    lo, hi = SIZE_RANGE
    return lo + (hi - lo) * np.clip(np.asarray(weights) / max(vmax, 1e-12), 0, 1)


def _label_text(label, score, class_names) -> str:
    if label is None:
        return ""
    name = str(int(label))
    if class_names is not None:
        if isinstance(class_names, Mapping):
            name = str(class_names.get(int(label), int(label)))
        elif 0 <= int(label) < len(class_names):
            name = str(class_names[int(label)])
    return name if score is None else f"{name} {float(score):.2f}"


class SamplingArtists:
    """The artists of one Fig. 6 panel, made once and updated in place (the explorer redraws
    many times a second this way: no axes clearing, no new artists).

    level_grid: draw on level ``level_grid``'s own map (its valid cells as a grid, the
    image stretched under it) instead of on the image. The points are one scatter (gid
    ``"sampling_points"``) coloured and sized by attention weight, heavy points on top;
    the reference point is a red cross (gid ``"reference_point"``).
    """

    def __init__(self, ax, *, cmap: str = POINT_CMAP, colorbar: bool | object = True, level_grid: int | None = None):
        from matplotlib.collections import LineCollection
        from matplotlib.patches import Rectangle
        from matplotlib.ticker import MaxNLocator

        self.ax, self.level_grid = ax, level_grid
        self.image = None  # AxesImage, made on the first picture
        self._image_key = None
        ax.set_facecolor("0.85")  # where points fall outside the picture
        self.others = ax.add_collection(LineCollection([], colors="white", linewidths=0.8, linestyles="--",
                                                       alpha=0.75, zorder=2))
        self.points = ax.scatter(np.zeros(0), np.zeros(0), c=np.zeros(0), s=np.zeros(0), cmap=cmap, vmin=0.0,
                                 vmax=1.0, edgecolors="white", linewidths=0.4, zorder=3)
        self.points.set_gid("sampling_points")
        (self.reference,) = ax.plot([], [], marker="x", color="red", markersize=9, markeredgewidth=2.2,
                                    linestyle="none", zorder=4)
        self.reference.set_gid("reference_point")
        self.reference_box = ax.add_patch(Rectangle((0, 0), 0, 0, fill=False, edgecolor="red", linestyle="--",
                                                    linewidth=1, visible=False))
        self.box = ax.add_patch(Rectangle((0, 0), 0, 0, fill=False, edgecolor="orange", linewidth=1.8, zorder=2,
                                          visible=False))
        self.label = ax.text(0, 0, "", fontsize=8, color="black", va="bottom", ha="left", clip_on=True, zorder=5,
                             bbox=dict(facecolor="orange", edgecolor="none", alpha=0.85, pad=0.8), visible=False)
        self.cell = ax.add_patch(Rectangle((0, 0), 0, 0, fill=False, edgecolor="red", linewidth=1.5, zorder=4,
                                           visible=False))
        self.colorbar = None
        if colorbar is not False:
            cax = None if colorbar is True else colorbar  # an Axes for the bar
            kw = dict(cax=cax) if cax is not None else dict(ax=ax, fraction=0.046, pad=0.02)
            self.colorbar = ax.figure.colorbar(self.points, label="attention weight", **kw)
            self.colorbar.locator = MaxNLocator(nbins=5)  # few labels: quick to redraw
        if level_grid is None:  # no axes on a picture (and nothing to draw for them)
            ax.xaxis.set_visible(False)
            ax.yaxis.set_visible(False)

    def _show_image(self, image, w: float, h: float, alpha: float = 1.0):
        from ddetr_lib.viz.images import to_numpy_image

        if image is None:
            return
        key = (id(image), w, h)
        if key != self._image_key:  # a new picture (conversion is the slow part: only then)
            pixels = to_numpy_image(image)
            if self.image is None:
                self.image = self.ax.imshow(pixels, extent=(0, w, h, 0), alpha=alpha, zorder=1)
            else:
                self.image.set_data(pixels)
                self.image.set_extent((0, w, h, 0))
            self._image_key = key

    def update(self, image, points: QueryPoints, *, heads=None, levels=None, top_k: int | None = None, box=None,
               label=None, score=None, class_names=None, encoder_cell=None, other_boxes=None,
               vmax: float | None = None, frame_points=None, title: str | None = None):
        """Show ``points`` (see :func:`draw_query_sampling` for the arguments)."""
        ax, level = self.ax, self.level_grid
        h, w = points.size
        if level is not None:
            levels = [level]
        chosen = points.select(heads, levels, top_k) if levels is None or len(levels) else None
        weights = np.zeros(0) if chosen is None else chosen["weights"]
        if vmax is None:
            vmax = float(weights.max()) if weights.size else 1.0
        if level is None:
            xy = np.zeros((0, 2)) if chosen is None else chosen["xy"]
            self._show_image(image, w, h)
            _fit_limits(ax, xy if frame_points is None else np.asarray(frame_points), w, h)
            ref = points.reference
        else:
            xy = chosen["level_xy"]
            vh, vw = (int(v) for v in points.level_sizes[level])
            self._show_image(image, vw, vh, alpha=0.75)
            if self._grid_size != (vw, vh):
                self._draw_grid(vw, vh)
            _fit_limits(ax, xy, vw, vh)
            ref = points.reference / np.array([w, h]) * np.array([vw, vh])
        self.points.set_offsets(xy)
        self.points.set_array(weights)
        self.points.set_sizes(marker_sizes(weights, vmax))
        self.points.set_clim(0.0, max(vmax, 1e-12))
        self.reference.set_data([ref[0]], [ref[1]])
        on_image = level is None
        _set_rect(self.reference_box, points.reference_box if on_image and box is None else None)
        _set_rect(self.box, box if on_image else None)
        _set_rect(self.cell, encoder_cell if on_image else None)
        text = _label_text(label, score, class_names) if on_image and box is not None else ""
        self.label.set_visible(bool(text))
        if text:
            # Above the box, or just inside it when the box touches the top of the picture.
            inside = float(box[1]) < 0.08 * h
            self.label.set_text(text)
            self.label.set_verticalalignment("top" if inside else "bottom")
            self.label.set_position((float(box[0]), float(box[1])))
        segments = []
        for x0, y0, x1, y1 in ([] if other_boxes is None or not on_image else np.asarray(other_boxes)):
            segments.append([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)])
        self.others.set_segments(segments)
        if title is not None:
            ax.set_title(title, fontsize=9)
        return self

    _grid_size = None

    def _draw_grid(self, vw: int, vh: int):
        ax = self.ax
        ax.set_xticks(np.arange(0, vw + 1), minor=True)  # cell edges: the grid
        ax.set_yticks(np.arange(0, vh + 1), minor=True)
        cols, rows = np.arange(0, vw, max(1, vw // 8)), np.arange(0, vh, max(1, vh // 8))
        ax.set_xticks(cols + 0.5, [str(c) for c in cols])  # cell centres: the cell index
        ax.set_yticks(rows + 0.5, [str(r) for r in rows])
        ax.grid(which="minor", color="white", linewidth=0.4, alpha=0.6)
        ax.tick_params(which="both", length=0, labelsize=6)
        self._grid_size = (vw, vh)


def _set_rect(rect, xyxy):
    if xyxy is None:
        rect.set_visible(False)
        return
    x0, y0, x1, y1 = (float(v) for v in xyxy)
    rect.set_bounds(x0, y0, x1 - x0, y1 - y0)
    rect.set_visible(True)


def draw_query_sampling(ax, image, points: QueryPoints, *, heads=None, levels=None, top_k: int | None = None,
                        box=None, label=None, score=None, class_names=None, encoder_cell=None, other_boxes=None,
                        vmax: float | None = None, cmap: str = POINT_CMAP, colorbar: bool = True,
                        level_grid: int | None = None, frame_points=None, title: str | None = None) -> SamplingArtists:
    """Draw one query's sampling points on ``ax`` (Fig. 6 of the paper).

    image: the picture (array, PIL, tensor) whose size ``points`` was mapped to; or ``None``.
    heads / levels: subsets to show (default all); top_k: only the heaviest k points.
    box: pixel (x0, y0, x1, y1) predicted box (decoder query) with ``label`` / ``score``
    (names from ``class_names``); a box reference (refine / two-stage) is drawn dashed
    when no box is given. encoder_cell: pixel box of the feature cell an encoder query
    sits on. other_boxes: (K, 4) further boxes, drawn faint (other detections).
    vmax: the weight at the top of the colour scale (default: the largest shown).
    level_grid: draw on level ``level_grid``'s own grid instead of the image (that level's
    points only). frame_points: (K, 2) points the view must include (default: those shown;
    panels side by side pass the union to share one frame).
    Returns the :class:`SamplingArtists` (``.points`` is the scatter, ``.reference`` the cross).
    """
    artists = SamplingArtists(ax, cmap=cmap, colorbar=colorbar, level_grid=level_grid)
    return artists.update(image, points, heads=heads, levels=levels, top_k=top_k, box=box, label=label, score=score,
                          class_names=class_names, encoder_cell=encoder_cell, other_boxes=other_boxes, vmax=vmax,
                          frame_points=frame_points, title=title)


def _fit_limits(ax, xy: np.ndarray, w: float, h: float, margin: float = 0.02, outside: float = 0.25):
    """The picture (w x h pixels) plus the points that fall outside it (grey background there),
    at most ``outside`` of its size beyond each edge (so that the picture stays large)."""
    x0, y0, x1, y1 = 0.0, 0.0, float(w), float(h)
    if len(xy):
        pad = margin * max(w, h)
        x0, x1 = min(x0, xy[:, 0].min() - pad), max(x1, xy[:, 0].max() + pad)
        y0, y1 = min(y0, xy[:, 1].min() - pad), max(y1, xy[:, 1].max() + pad)
        x0, x1 = max(x0, -outside * w), min(x1, (1 + outside) * w)
        y0, y1 = max(y0, -outside * h), min(y1, (1 + outside) * h)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)


def query_title(points: QueryPoints, heads=None, levels=None, top_k=None) -> str:
    head_text = "all heads" if heads is None or heads == "all" else f"head {heads}"
    level_text = "" if levels is None else f", levels {list(levels)}"
    k_text = "" if top_k is None else f", top {top_k}"
    return f"{points.stage} layer {points.layer}, query {points.query}: {head_text}{level_text}{k_text}"


def decoder_detection(outputs: Mapping, query: int, batch_index: int, size):
    """(pixel box (4,), label, score) of decoder query ``query`` from the model outputs:
    the best class (sigmoid) and its box on a picture of ``size`` (h, w)."""
    from ddetr_lib.viz.images import boxes_to_pixels

    prob = outputs["pred_logits"][batch_index, query].sigmoid()
    score, label = prob.max(-1)
    box = boxes_to_pixels(outputs["pred_boxes"][batch_index, query], size)[0].numpy()
    return box, int(label), float(score)


def plot_query_sampling(image, record: Mapping, stage: str, layer: int, query: int, *, batch_index: int = 0,
                        size=None, outputs: Mapping | None = None, class_names=None, heads=None, levels=None,
                        top_k: int | None = None, view: str = "all", cmap: str = POINT_CMAP, panel_size: float = 3.6):
    """Fig. 6 for one query, as a new figure.

    image: the picture to draw on (the image the model saw, or the original photo);
    ``size`` defaults to its size. outputs: the model outputs of the same forward pass,
    for a decoder query's box and label (those ``layer`` predicts: its ``aux_outputs``).
    view: ``"all"`` (one panel, every chosen head and level), ``"heads"`` (one panel per
    head) or ``"levels"`` (one panel per level, on that level's pixel grid). Colours
    share one scale across panels.
    """
    import matplotlib.pyplot as plt

    if view not in ("all", "heads", "levels"):
        raise ValueError(f"view: expected 'all', 'heads' or 'levels', got {view!r}")
    size = image_size_of(image) if size is None else size
    pts = query_points(record, stage, layer, query, batch_index, size)
    box = label = score = cell = None
    if stage == "decoder" and outputs is not None:
        # The box this layer predicts: its auxiliary output (the final one for the last layer).
        aux = outputs.get("aux_outputs") or []
        own = aux[layer] if len(aux) == len(record["decoder"]) - 1 and layer < len(aux) else outputs
        box, label, score = decoder_detection(own, query, batch_index, size)
    if stage == "encoder":
        cell = encoder_cell_box(record, query, size, batch_index)
    vmax = float(pts.select(heads, levels, top_k)["weights"].max())
    common = dict(box=box, label=label, score=score, class_names=class_names, encoder_cell=cell, vmax=vmax,
                  cmap=cmap, colorbar=False)
    if view == "all":
        panels = [dict(heads=heads, levels=levels, title=query_title(pts, heads, levels, top_k))]
    elif view == "heads":
        frame = pts.select(heads, levels)["xy"]  # one frame for all panels
        panels = [dict(heads=[m], levels=levels, title=f"head {m}", frame_points=frame)
                  for m in _check_subset("heads", heads, pts.num_heads)]
    else:
        panels = [dict(heads=heads, level_grid=int(l),
                       title=f"level {l}: {pts.level_sizes[l][1]} x {pts.level_sizes[l][0]} cells (w x h)")
                  for l in _check_subset("levels", levels, pts.num_levels)]
    n = len(panels)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    h, w = size
    aspect = h / max(w, 1)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols + 0.8, panel_size * aspect * rows + 0.5),
                             squeeze=False, layout="constrained")
    last = None
    for ax, panel in zip(axes.flat, panels):
        last = draw_query_sampling(ax, image, pts, top_k=top_k, **common, **panel)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.colorbar(last.points, ax=axes, fraction=0.03, pad=0.01, label="attention weight")
    if view != "all":
        fig.suptitle(f"{stage} layer {layer}, query {query}" + ("" if top_k is None else f", top {top_k} per panel"),
                     fontsize=10)
    return fig
