"""A synthetic object-detection dataset in the COCO layout, drawn from a seed.

Why a synthetic set?  COCO is 20 GB and takes days of GPU time; the course needs
data that a laptop generates in seconds and a toy model learns in minutes, yet
that walks every code path a COCO user walks.  So the generator writes exactly
what COCO looks like on disk::

    DIR/train2017/000000000001.jpg ...
    DIR/val2017/000000000001.jpg ...
    DIR/annotations/instances_train2017.json
    DIR/annotations/instances_val2017.json
    DIR/synthetic.json            (manifest: spec + seed; lets `generate` skip work)

Each image is a background (flat, gradient, smooth noise or stripes) with
clutter (thin strokes, arcs and dots that are *not* objects), then a few filled
shapes (circle, square, triangle, cross, star, ring, ellipse, hexagon) of
random colour, size and rotation, then pixel noise and JPEG compression.

Design choices (they matter when you read the AP numbers):

* **Box = full extent of the drawn shape, clipped to the image.**  Shapes may
  overlap, but placement is rejected if any earlier object would keep less than
  ``1 - max_occlusion`` of its pixels visible, so every object stays partly
  visible.  The box of a partly hidden object still covers the whole shape (as
  a person would draw it), not only its visible pixels.
* **area = pixel area of the shape inside the image** (anti-aliased coverage),
  which is what COCO stores (the segment area) and what COCOeval uses to split
  AP into small (< 32^2), medium and large (> 96^2).
* **segmentation** is the shape's outline polygon clipped to the image (for the
  ring the outer outline; COCO polygons cannot express holes).
* Category ids start at 1 (id 0 is unused, as in COCO); ``classes`` gives them
  in order, so the ``demo`` classes keep the same ids in ``default``.
* Determinism: image ``i`` of split ``s`` is drawn with its own generator
  ``numpy.random.default_rng([seed, s, i])``, so the result does not depend on
  how the work is split across processes: same seed -> byte-identical json and
  identical pixels.

Command line::

    python -m ddetr_lib.data.synthetic --out data/synthetic_demo --setting demo
    python -m ddetr_lib.data.synthetic --out data/synthetic --setting default --seed 0
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Bump when the drawing code changes, so that old datasets are regenerated.
GENERATOR_VERSION = 1

#: Every shape the generator knows, in the order that fixes category ids (1-based).
SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "ellipse", "hexagon")
BACKGROUNDS = ("flat", "gradient", "noise", "stripes")

#: COCO area ranges (in pixels of the image), as used by COCOeval.
SMALL_AREA = 32**2
LARGE_AREA = 96**2

_SUPERSAMPLE = 4  # each pixel's coverage is sampled on a 4 x 4 grid: anti-aliased edges


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic dataset (together with the seed).

    Sizes are in pixels.  An object's *size* is the diameter of the circle
    around the shape, so a square of size ``s`` has side ``s / sqrt(2)`` and a
    triangle of size ``s`` is ``0.75 s`` to ``0.87 s`` across.
    """

    num_train: int
    num_val: int
    short_side: tuple[int, int]  # image short side, uniform in [lo, hi]
    aspect_ratio: tuple[float, float]  # width / height, log-uniform in [lo, hi]
    classes: tuple[str, ...]  # names from SHAPES; category id = position + 1
    objects_per_image: tuple[int, int]  # uniform in [lo, hi] (objects that cannot be placed are skipped)
    object_size: tuple[float, float]  # size range, log-uniform
    # Fraction of objects whose size is drawn from [object_size[0], 32) (all of them
    # COCO-small); the rest from [32, object_size[1]].  None: one log-uniform range.
    small_fraction: float | None
    max_occlusion: float  # an object may lose at most this fraction of its pixels to later objects
    edge_cut: float  # a shape may hang off the image by up to this fraction of its size
    clutter: tuple[int, int]  # number of distractor strokes / arcs / dot clusters per image
    noise_std: tuple[float, float]  # std of Gaussian pixel noise (0..255 scale), uniform in [lo, hi]
    min_contrast: float  # min RGB distance between an object's colour and the pixels it covers
    backgrounds: tuple[str, ...] = BACKGROUNDS
    jpeg_quality: int = 90

    def __post_init__(self):
        unknown = [c for c in self.classes if c not in SHAPES]
        if unknown or not self.classes:
            raise ValueError(f"classes: unknown shape(s) {unknown}; choose from {SHAPES}")
        bad_bg = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if bad_bg or not self.backgrounds:
            raise ValueError(f"backgrounds: unknown {bad_bg}; choose from {BACKGROUNDS}")
        for name in ("short_side", "aspect_ratio", "objects_per_image", "object_size", "clutter", "noise_std"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < 0:
                raise ValueError(f"{name}: expected 0 <= lo <= hi, got {(lo, hi)}")
        if self.object_size[0] <= 0:
            raise ValueError("object_size: sizes must be positive")
        if self.small_fraction is not None and not 0.0 <= self.small_fraction <= 1.0:
            raise ValueError("small_fraction must be in [0, 1] or None")
        if not 0.0 <= self.max_occlusion < 1.0:
            raise ValueError("max_occlusion must be in [0, 1)")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


SETTINGS: dict[str, SyntheticSpec] = {
    # Easy: small images, 4 clearly different shapes, 1-4 objects, nothing under 8 px,
    # mild overlap and clutter.  A toy model learns it within the 10-minute CPU demo.
    "demo": SyntheticSpec(
        num_train=2000,
        num_val=200,
        short_side=(96, 128),
        aspect_ratio=(0.75, 1.33),
        classes=("circle", "square", "triangle", "cross"),
        objects_per_image=(1, 4),
        object_size=(12.0, 64.0),
        small_fraction=0.4,
        max_occlusion=0.2,
        edge_cut=0.0,
        clutter=(0, 2),
        noise_std=(0.0, 3.0),
        min_contrast=110.0,
    ),
    # Harder, for the convergence study: 8 shapes (some look alike when tiny), 2-12
    # objects from 4 px to 180 px (clipped to 0.9 x the short side) with many small ones, more overlap, objects cut by the
    # image border, more clutter and noise, wider range of image sizes and shapes.
    "default": SyntheticSpec(
        num_train=4000,
        num_val=500,
        short_side=(128, 256),
        aspect_ratio=(0.6, 1.67),
        classes=SHAPES,
        objects_per_image=(2, 12),
        object_size=(4.0, 180.0),
        small_fraction=0.4,
        max_occlusion=0.5,
        edge_cut=0.3,
        clutter=(2, 10),
        noise_std=(0.0, 8.0),
        min_contrast=70.0,
    ),
}


def get_spec(setting: str = "default", **overrides: Any) -> SyntheticSpec:
    """The named preset with some fields replaced (lists are accepted for tuples)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {sorted(SETTINGS)}")
    valid = {f.name for f in dataclasses.fields(SyntheticSpec)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown SyntheticSpec field(s) {unknown}; valid: {sorted(valid)}")
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(SETTINGS[setting], **overrides)


# --------------------------------------------------------------------------- geometry
def _regular(n: int, start: float = math.pi / 2) -> np.ndarray:
    """(n, 2) vertices of a regular n-gon on the unit circle."""
    t = start + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _unit_shape(name: str, rng: np.random.Generator) -> list[np.ndarray]:
    """The shape as polygons (each (N, 2)) inside the unit circle.

    Filled with the even-odd rule, so a polygon inside another one is a hole
    (the ring is two circles).
    """
    if name == "circle":
        return [_regular(64)]
    if name == "square":
        return [_regular(4, math.pi / 4)]
    if name == "triangle":
        return [_regular(3)]
    if name == "hexagon":
        return [_regular(6)]
    if name == "star":  # 5 points, inner radius 0.45
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return [_regular(10) * radii[:, None]]
    if name == "ring":
        return [_regular(64), _regular(64) * 0.55]
    if name == "cross":  # a plus sign with arms 0.34 thick, scaled into the unit circle
        a, b = 1.0, 0.34
        pts = np.array(
            [(b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b), (-b, -a), (b, -a), (b, -b), (a, -b), (a, b)]
        )
        return [pts / np.hypot(a, b)]
    if name == "ellipse":  # elongated enough to tell from a circle
        ratio = rng.uniform(0.4, 0.65)
        return [_regular(64) * np.array([1.0, ratio])]
    raise ValueError(f"unknown shape {name!r}")


def _clip_polygon(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """Clip a polygon (N, 2) to the rectangle [0, width] x [0, height].

    Sutherland-Hodgman: clip against each of the four border lines in turn,
    keeping the inside vertices and adding the crossing point of every edge
    that crosses the line.  Returns (M, 2), possibly empty.
    """
    pts = [tuple(p) for p in poly]
    for axis, limit, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if not pts:
            break

        def inside(p):
            return p[axis] <= limit if keep_below else p[axis] >= limit

        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            if inside(cur) != inside(prev):  # the edge prev -> cur crosses the line
                t = (limit - prev[axis]) / (cur[axis] - prev[axis])
                out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
            if inside(cur):
                out.append(cur)
        pts = out
    return np.array(pts, dtype=np.float64).reshape(-1, 2)


def _rasterize(polys: list[np.ndarray], width: int, height: int):
    """Anti-aliased coverage of polygons (image pixel coordinates, even-odd rule) inside the image.

    Pixel ``(i, j)`` is the square [j, j+1) x [i, i+1).  Each pixel is split into
    ``s x s`` sub-pixels; a sub-pixel is inside if its centre is, and a pixel's
    coverage is the fraction of its sub-pixels inside.  The inside test is a
    scanline fill: for each sub-pixel row, every polygon edge that crosses the
    row's centre line toggles "inside" for all sub-pixels right of the
    crossing; a cumulative sum of the toggles, mod 2, gives inside/outside.

    Returns ``(alpha (h, w) float32 in [0, 1], (x0, y0))``: the coverage of the
    window of the image at offset ``(x0, y0)`` that holds the shape, or
    ``(None, None)`` if the shape misses the image.
    """
    allpts = np.concatenate(polys)
    x0 = max(int(math.floor(allpts[:, 0].min())) - 1, 0)
    y0 = max(int(math.floor(allpts[:, 1].min())) - 1, 0)
    x1 = min(int(math.ceil(allpts[:, 0].max())) + 1, width)
    y1 = min(int(math.ceil(allpts[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return None, None
    s = _SUPERSAMPLE
    rows, cols = (y1 - y0) * s, (x1 - x0) * s
    flat = []  # flat indices row * (cols + 1) + col of the toggles
    for pts in polys:
        p = (pts - np.array([x0, y0])) * s  # sub-pixel units: sub-pixel (r, c) has centre (c + 0.5, r + 0.5)
        q = np.roll(p, -1, axis=0)  # edge k goes p[k] -> q[k]
        ylo, yhi = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
        # Rows whose centre r + 0.5 lies in [ylo, yhi) (half-open: a vertex counts once).
        r0 = np.clip(np.ceil(ylo - 0.5), 0, rows).astype(np.int64)
        r1 = np.clip(np.ceil(yhi - 0.5), 0, rows).astype(np.int64)
        n = r1 - r0  # (E,) rows crossed by each edge (0 for horizontal edges)
        edge = np.repeat(np.arange(len(p)), n)  # (M,) one entry per (edge, row) crossing
        row = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(r0, n)
        t = (row + 0.5 - p[edge, 1]) / (q[edge, 1] - p[edge, 1])
        x = p[edge, 0] + t * (q[edge, 0] - p[edge, 0])  # (M,) where the edge crosses the row
        col = np.clip(np.floor(x - 0.5).astype(np.int64) + 1, 0, cols)  # first sub-pixel centre right of it
        flat.append(row * (cols + 1) + col)
    toggles = np.bincount(np.concatenate(flat), minlength=rows * (cols + 1)).astype(np.uint8)
    inside = np.cumsum(toggles.reshape(rows, cols + 1), axis=1, dtype=np.uint8)[:, :cols] & 1  # (rows, cols)
    count = sum(inside[:, k::s] for k in range(s))  # (rows, w): sub-pixels inside, per sub-row
    count = sum(count[k::s] for k in range(s))  # (h, w): at most s * s
    return count.astype(np.float32) / (s * s), (x0, y0)


# --------------------------------------------------------------------------- drawing
def _random_colour(rng: np.random.Generator, sat=(0.35, 1.0), val=(0.3, 1.0)) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _background(rng: np.random.Generator, kind: str, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 background in [0, 255]."""
    c1 = _random_colour(rng, sat=(0.0, 0.8), val=(0.1, 1.0))
    if kind == "flat":
        return np.broadcast_to(c1, (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "gradient":
        c2 = _random_colour(rng, sat=(0.0, 0.8), val=(0.1, 1.0))
        theta = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    if kind == "stripes":
        c2 = _random_colour(rng, sat=(0.0, 0.8), val=(0.1, 1.0))
        c2 = c1 + (c2 - c1) * rng.uniform(0.2, 0.6)  # keep stripes lower contrast than objects
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        phase = xx * math.cos(theta) + yy * math.sin(theta)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * phase / period)
        if rng.uniform() < 0.5:
            t = (t > 0.5).astype(np.float32)  # hard stripes
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    if kind == "noise":
        # Smooth "value noise": a coarse random grid, bilinearly upsampled, plus a finer octave.
        out = np.broadcast_to(c1, (height, width, 3)).astype(np.float32)
        for cell, amp in ((rng.uniform(16, 48), 70.0), (rng.uniform(4, 10), 25.0)):
            gh, gw = max(2, int(height / cell) + 2), max(2, int(width / cell) + 2)
            grid = rng.uniform(-1, 1, size=(gh, gw, 3)).astype(np.float32)
            layers = [np.asarray(Image.fromarray(grid[..., c]).resize((width, height), Image.BILINEAR)) for c in range(3)]
            out = out + amp * np.stack(layers, axis=-1)
        return np.clip(out, 0, 255)
    raise ValueError(f"unknown background {kind!r}")


def _draw_clutter(rng: np.random.Generator, canvas: Image.Image, count: int) -> None:
    """Distractors that are not objects: thin strokes, polylines, arcs and dot clusters."""
    w, h = canvas.size
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        colour = tuple(int(c) for c in _random_colour(rng, sat=(0.0, 1.0), val=(0.2, 1.0)))
        kind = rng.integers(4)
        width = int(rng.integers(1, 3))
        if kind == 0:  # straight line across part of the image
            pts = rng.uniform([0, 0], [w, h], size=(2, 2))
            draw.line([tuple(p) for p in pts.tolist()], fill=colour, width=width)
        elif kind == 1:  # a scribble
            start = rng.uniform([0, 0], [w, h])
            steps = rng.normal(0, min(w, h) / 6, size=(int(rng.integers(2, 6)), 2))
            pts = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])
            draw.line([tuple(p) for p in pts.tolist()], fill=colour, width=width, joint="curve")
        elif kind == 2:  # an open arc (never a closed circle: rings are objects)
            cx, cy = rng.uniform([0, 0], [w, h])
            r = rng.uniform(6, min(w, h) / 2)
            a0 = rng.uniform(0, 360)
            draw.arc([cx - r, cy - r, cx + r, cy + r], start=a0, end=a0 + rng.uniform(40, 200), fill=colour, width=width)
        else:  # a cluster of 1-2 px dots
            cx, cy = rng.uniform([0, 0], [w, h])
            for dx, dy in rng.normal(0, 6, size=(int(rng.integers(3, 10)), 2)):
                x, y = cx + dx, cy + dy
                draw.rectangle([x, y, x + rng.integers(0, 2), y + rng.integers(0, 2)], fill=colour)


def _sample_size(rng: np.random.Generator, spec: SyntheticSpec) -> float:
    lo, hi = spec.object_size
    if spec.small_fraction is not None and lo < 32.0 < hi:
        if rng.uniform() < spec.small_fraction:
            hi = 32.0
        else:
            lo = 32.0
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def render_image(spec: SyntheticSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Draw one image.  Returns (uint8 array (H, W, 3), objects).

    Each object is a dict with ``category_id``, ``bbox`` [x, y, w, h], ``area``
    and ``segmentation`` (list of one flat polygon), all in image pixels.
    """
    # --- image size: short side and aspect ratio (width / height)
    short = int(rng.integers(spec.short_side[0], spec.short_side[1] + 1))
    aspect = math.exp(rng.uniform(math.log(spec.aspect_ratio[0]), math.log(spec.aspect_ratio[1])))
    if aspect >= 1:
        height, width = short, int(round(short * aspect))
    else:
        height, width = int(round(short / aspect)), short

    # --- background and clutter (behind the objects)
    kind = spec.backgrounds[int(rng.integers(len(spec.backgrounds)))]
    bg = _background(rng, kind, width, height)
    canvas = Image.fromarray(np.clip(bg, 0, 255).round().astype(np.uint8))
    _draw_clutter(rng, canvas, int(rng.integers(spec.clutter[0], spec.clutter[1] + 1)))
    img = np.asarray(canvas, dtype=np.float32).copy()  # (H, W, 3)

    # --- objects, drawn back to front.  owner[i, j] = index of the object that shows at
    # pixel (i, j) (coverage >= 0.5), -1 for background; full[k] = object k's pixel count,
    # visible[k] = how many of them still show.
    owner = np.full((height, width), -1, dtype=np.int32)
    full: list[int] = []
    visible: list[int] = []
    objects: list[dict] = []
    n_objects = int(rng.integers(spec.objects_per_image[0], spec.objects_per_image[1] + 1))
    for _ in range(n_objects):
        cls = int(rng.integers(len(spec.classes)))
        size = min(_sample_size(rng, spec), 0.9 * min(width, height))
        unit = _unit_shape(spec.classes[cls], rng)
        for _attempt in range(20):
            r = size / 2
            theta = rng.uniform(0, 2 * math.pi)
            rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
            # Centre: the shape may stick out of the image by edge_cut * size at most.
            margin = r - spec.edge_cut * size
            cx = rng.uniform(margin, width - margin) if width > 2 * margin else width / 2
            cy = rng.uniform(margin, height - margin) if height > 2 * margin else height / 2
            polys = [p @ rot.T * r + np.array([cx, cy]) for p in unit]
            alpha, origin = _rasterize(polys, width, height)
            if alpha is None:
                continue
            x0, y0 = origin
            h, w = alpha.shape
            solid = alpha >= 0.5
            if solid.sum() == 0:
                continue
            # Occlusion cap: every earlier object must keep (1 - max_occlusion) of its pixels.
            win = owner[y0 : y0 + h, x0 : x0 + w]
            hidden = np.bincount(win[solid & (win >= 0)], minlength=len(full))  # (K,) pixels the new shape covers
            if any(visible[k] - hidden[k] < (1 - spec.max_occlusion) * full[k] for k in range(len(full))):
                continue
            # Colour with enough contrast against what it covers.
            under = (img[y0 : y0 + h, x0 : x0 + w] * alpha[..., None]).sum((0, 1)) / max(alpha.sum(), 1e-6)
            for _c in range(12):
                colour = _random_colour(rng)
                if np.linalg.norm(colour - under) >= spec.min_contrast:
                    break
            else:
                colour = 255.0 - under  # the complementary colour always contrasts
            break
        else:
            continue  # could not place this object: skip it

        region = img[y0 : y0 + h, x0 : x0 + w]
        region[...] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        for k in range(len(full)):
            visible[k] -= int(hidden[k])
        win[solid] = len(full)
        full.append(int(solid.sum()))
        visible.append(full[-1])

        # --- annotation: box = full extent of the outline clipped to the image
        outline = _clip_polygon(polys[0], width, height)
        bx0, by0 = (round(float(v), 2) for v in outline.min(axis=0))  # round the corners, so that
        bx1, by1 = (round(float(v), 2) for v in outline.max(axis=0))  # x + w stays inside the image
        objects.append(
            {
                "category_id": cls + 1,
                "bbox": [bx0, by0, round(bx1 - bx0, 2), round(by1 - by0, 2)],
                "area": round(float(alpha.sum()), 2),
                "segmentation": [[round(float(v), 2) for v in outline.reshape(-1)]],
            }
        )

    # --- sensor noise, then quantise
    std = rng.uniform(*spec.noise_std)
    if std > 0:
        img = img + rng.normal(0, std, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8), objects


# --------------------------------------------------------------------------- dataset writing
def _render_and_save(job: tuple) -> tuple[int, int, list[dict]]:
    """Worker: draw image ``index`` of split ``split_id`` and save it.  Returns (w, h, objects)."""
    spec, seed, split_id, index, path, quality = job
    rng = np.random.default_rng([seed, split_id, index])
    pixels, objects = render_image(spec, rng)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)
    return pixels.shape[1], pixels.shape[0], objects


def _write_split(
    out_dir: Path, split: str, split_id: int, count: int, spec: SyntheticSpec, seed: int, workers: int, progress: bool
) -> dict:
    img_dir = out_dir / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (spec, seed, split_id, i, str(img_dir / f"{i + 1:012d}.jpg"), spec.jpeg_quality) for i in range(count)
    ]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, desc=f"{split}2017", unit="img", file=sys.stderr)
    results = []
    if workers > 1 and count > 1:
        # fork: workers inherit the imported modules, so start-up is instant.
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(workers) as pool:
            for r in pool.imap(_render_and_save, jobs, chunksize=16):  # imap keeps the order
                results.append(r)
                if bar:
                    bar.update()
    else:
        for job in jobs:
            results.append(_render_and_save(job))
            if bar:
                bar.update()
    if bar:
        bar.close()

    images, annotations = [], []
    for i, (w, h, objects) in enumerate(results):
        image_id = i + 1
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h})
        for obj in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj, "iscrowd": 0})
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(spec.classes)]
    return {
        "info": {"description": f"ddetr_lib synthetic shapes ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _manifest(setting: str, seed: int, spec: SyntheticSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "setting": setting, "seed": seed, "spec": spec.to_dict()}


def _is_complete(out_dir: Path, manifest: dict) -> bool:
    """True if out_dir holds a finished dataset generated with exactly these parameters."""
    try:
        old = json.loads((out_dir / "synthetic.json").read_text())
    except (OSError, ValueError):
        return False
    if old != manifest:
        return False
    for split, n in (("train", manifest["spec"]["num_train"]), ("val", manifest["spec"]["num_val"])):
        if not (out_dir / "annotations" / f"instances_{split}2017.json").is_file():
            return False
        if sum(1 for _ in (out_dir / f"{split}2017").glob("*.jpg")) != n:
            return False
    return True


def generate(
    out_dir: str | os.PathLike,
    setting: str = "default",
    seed: int = 0,
    num_train: int | None = None,
    num_val: int | None = None,
    *,
    force: bool = False,
    workers: int | None = None,
    progress: bool = False,
    **spec_overrides: Any,
) -> Path:
    """Generate the synthetic dataset ``setting`` into ``out_dir`` (COCO layout); return the path.

    Returns at once if ``out_dir/synthetic.json`` says the directory already holds
    a complete dataset made with the same setting, spec, seed and generator
    version (pass ``force=True`` to redo it).  Otherwise the images and
    annotation files are (re)written; the manifest is written last, so an
    interrupted run is redone next time.  ``spec_overrides`` replace fields of
    :class:`SyntheticSpec` (e.g. ``objects_per_image=(1, 2)``).  ``workers``:
    processes (default: 2 if there are over 200 images and 2 cores, else 1); the
    result does not depend on it.
    """
    out_dir = Path(out_dir)
    overrides = dict(spec_overrides)
    if num_train is not None:
        overrides["num_train"] = int(num_train)
    if num_val is not None:
        overrides["num_val"] = int(num_val)
    spec = get_spec(setting, **overrides)
    manifest = _manifest(setting, seed, spec)
    if not force and _is_complete(out_dir, manifest):
        return out_dir

    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "synthetic.json").exists():
        # Never overwrite a directory that we did not make (a real COCO copy, say).
        raise FileExistsError(f"{out_dir} is not empty and holds no synthetic.json; choose an empty or new directory")
    # Clear what an earlier generation left, so no stale images linger.
    (out_dir / "synthetic.json").unlink(missing_ok=True)
    for sub in ("train2017", "val2017"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)

    total = spec.num_train + spec.num_val
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total > 200 else 1
    for split_id, (split, count) in enumerate((("train", spec.num_train), ("val", spec.num_val))):
        coco = _write_split(out_dir, split, split_id, count, spec, seed, workers, progress)
        with open(out_dir / "annotations" / f"instances_{split}2017.json", "w") as f:
            json.dump(coco, f, separators=(",", ":"))
    (out_dir / "synthetic.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


# --------------------------------------------------------------------------- statistics
def object_size_stats(annotations: str | os.PathLike | dict) -> dict:
    """Counts and fractions of objects by COCO area range (small < 32^2 <= medium < 96^2 <= large).

    ``annotations``: a COCO annotation file or its loaded dict.  Uses the ``area``
    field, as COCOeval does, and skips crowd annotations.
    """
    if not isinstance(annotations, dict):
        with open(annotations) as f:
            annotations = json.load(f)
    areas = np.array([a["area"] for a in annotations["annotations"] if not a.get("iscrowd", 0)], dtype=np.float64)
    n = len(areas)
    counts = {
        "small": int((areas < SMALL_AREA).sum()),
        "medium": int(((areas >= SMALL_AREA) & (areas < LARGE_AREA)).sum()),
        "large": int((areas >= LARGE_AREA).sum()),
    }
    out = {"num_objects": n, "num_images": len(annotations["images"])}
    out.update({f"num_{k}": v for k, v in counts.items()})
    out.update({f"frac_{k}": (v / n if n else 0.0) for k, v in counts.items()})
    return out


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ddetr_lib.data.synthetic",
        description="Generate the synthetic shapes dataset in the COCO layout.",
    )
    parser.add_argument("--out", required=True, help="output directory (DIR/train2017, DIR/val2017, DIR/annotations)")
    parser.add_argument("--setting", default="default", choices=sorted(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=None)
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: 2 for big sets)")
    parser.add_argument("--force", action="store_true", help="regenerate even if an identical dataset exists")
    args = parser.parse_args(argv)

    spec = get_spec(args.setting, **{k: v for k, v in (("num_train", args.num_train), ("num_val", args.num_val)) if v is not None})
    out = Path(args.out)
    if not args.force and _is_complete(out, _manifest(args.setting, args.seed, spec)):
        print(f"{out}: up to date ({args.setting}, seed {args.seed}); use --force to regenerate")
        return 0
    start = time.perf_counter()
    try:
        generate(out, args.setting, args.seed, args.num_train, args.num_val, force=args.force, workers=args.workers, progress=True)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"wrote {out} ({args.setting}, seed {args.seed}) in {elapsed:.1f} s")
    for split in ("train", "val"):
        s = object_size_stats(out / "annotations" / f"instances_{split}2017.json")
        print(
            f"  {split}: {s['num_images']} images, {s['num_objects']} objects; "
            f"small {s['frac_small']:.0%}, medium {s['frac_medium']:.0%}, large {s['frac_large']:.0%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
