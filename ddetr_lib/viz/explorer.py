"""The sampling-point explorer: the paper's Fig. 6, live, for any query of any layer.

    from ddetr_lib.viz import explore_sampling
    explore_sampling(model, images, class_names)      # display it (last line of a cell)

Pick an image (or upload your own), the stage (encoder or decoder), a layer, one head or
all, any subset of levels, how many points to show (top-k) and a score threshold for the
detections. In the decoder the query is a detection, chosen from the list or by clicking
near its box; in the encoder it is a pixel, chosen with the x / y sliders or by clicking
on it (clicks need the interactive backend: run ``%matplotlib widget`` first, which
``ipympl`` provides; without it the picture is a plain image and the sliders do the job).

Every image is run through the model once, with ``capture_deformable``; the record is
kept (a few images) and every other change only redraws the picture.
"""
from __future__ import annotations

import io
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ddetr_lib.viz.sampling import (SamplingArtists, decoder_detection, encoder_cell_box, encoder_query_at,
                                    encoder_query_cell, query_points, valid_level_sizes)

_IMAGE_KINDS = "a PIL image, an (H, W, 3) uint8 array, a (3, H, W) tensor or an image file path"


# ----------------------------------------------------------------------------- inputs
def _check_model(model):
    from ddetr_lib.models import DETR, DeformableTransformer

    if isinstance(model, DETR):
        raise ValueError("model: this is a DETR model, which has no sampling points (its attention looks at every "
                         "pixel); the explorer needs a Deformable DETR. For DETR use capture_attention and "
                         "ddetr_lib.viz.plot_detr_encoder_attention / plot_detr_decoder_attention")
    if not isinstance(model, torch.nn.Module) or not any(isinstance(m, DeformableTransformer) for m in model.modules()):
        raise ValueError(f"model: expected a Deformable DETR (any variant), got {type(model).__name__}")


class _ImageSource:
    """The images to explore, loaded lazily: a list (PIL, arrays, tensors, paths) or a dataset."""

    def __init__(self, images):
        self.dataset = None
        if isinstance(images, (str, os.PathLike, torch.Tensor, np.ndarray)) or hasattr(images, "convert"):
            images = [images]  # one image given on its own
        is_sequence = hasattr(images, "__getitem__") and hasattr(images, "__len__")
        if isinstance(images, torch.utils.data.Dataset) or (is_sequence and not isinstance(images, (list, tuple))):
            self.dataset = images
            self.items = None
            n = len(images)
        elif isinstance(images, (list, tuple)):
            self.items = list(images)
            n = len(self.items)
        else:
            raise ValueError(f"images: expected a list of images ({_IMAGE_KINDS}) or a dataset, "
                             f"got {type(images).__name__}")
        if n == 0:
            raise ValueError("images: empty; give at least one image")
        self.names = [self._name(i) for i in range(n)]
        # Check what is cheap to check now; a dataset's images are checked when first shown.
        if self.items is not None:
            for i, item in enumerate(self.items):
                _check_image(item, f"images[{i}]")
        else:
            self.load(0)

    def __len__(self):
        return len(self.names)

    def _name(self, i: int) -> str:
        if self.items is not None:
            item = self.items[i]
            if isinstance(item, (str, os.PathLike)):
                return f"{i}: {Path(item).name}"
            return f"image {i}"
        coco = getattr(self.dataset, "coco", None)
        ids = getattr(self.dataset, "ids", None)
        if coco is not None and ids is not None:
            return f"{i}: {coco.imgs[ids[i]].get('file_name', ids[i])}"
        return f"image {i}"

    def add(self, image, name: str) -> int:
        """Append an image (an upload); -> its index."""
        _check_image(image, "image")
        if self.items is None:  # a dataset: keep the uploads beside it
            self.items = [None] * len(self.names)
        self.items.append(image)
        self.names.append(f"{len(self.names)}: {name}")
        return len(self.names) - 1

    def load(self, i: int) -> np.ndarray:
        """Image ``i`` as an (H, W, 3) uint8 array."""
        if self.items is not None and i < len(self.items) and self.items[i] is not None:
            return _to_rgb(self.items[i], f"images[{i}]")
        ds = self.dataset
        item = ds.load_image(i) if hasattr(ds, "load_image") else ds[i]
        if isinstance(item, (tuple, list)):  # (image, target)
            item = item[0]
        _check_image(item, f"images[{i}]")
        return _to_rgb(item, f"images[{i}]")

    def class_names(self):
        coco = getattr(self.dataset, "coco", None)
        if coco is None:
            return None
        return {int(c["id"]): c["name"] for c in coco.dataset.get("categories", [])}


def _check_image(image, name: str) -> None:
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise ValueError(f"{name}: no image file {os.fspath(image)!r}")
        return
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3 or min(image.shape[1:]) < 1:
            raise ValueError(f"{name}: expected a (3, H, W) tensor, got shape {tuple(image.shape)}")
        return
    if hasattr(image, "convert") and hasattr(image, "size"):
        return
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{name}: expected an (H, W, 3) array, got shape {image.shape}")
        return
    raise ValueError(f"{name}: expected {_IMAGE_KINDS}, got {type(image).__name__}")


def _to_rgb(image, name: str) -> np.ndarray:
    """Any accepted image -> (H, W, 3) uint8. Float tensors: ImageNet-normalised if any value
    falls outside [0, 1] (what the datasets return), else RGB in [0, 1]."""
    from PIL import Image, UnidentifiedImageError

    from ddetr_lib.viz.images import to_numpy_image

    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise ValueError(f"{name}: cannot read {os.fspath(image)!r} as an image ({e})") from None
    if torch.is_tensor(image) and image.is_floating_point():
        normalized = bool(image.min() < 0 or image.max() > 1)
        return to_numpy_image(image, normalized=normalized)
    return np.ascontiguousarray(to_numpy_image(image))


def _model_tensor(rgb: np.ndarray, size: int | None, max_size: int | None) -> torch.Tensor:
    """(H, W, 3) uint8 -> the model's input (3, h, w): resized (short side ``size``, long side at
    most ``max_size``, the validation rule) when ``size`` is given, ImageNet-normalised."""
    from torchvision.transforms.v2 import functional as F

    from ddetr_lib.data.transforms import IMAGENET_MEAN, IMAGENET_STD, short_side_resize_size

    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # (3, H, W) uint8 (a writable copy)
    if size is not None:
        h, w = short_side_resize_size(x.shape[1], x.shape[2], int(size), max_size)
        x = F.resize(x, [h, w], antialias=True)
    x = x.float() / 255.0
    return F.normalize(x, IMAGENET_MEAN, IMAGENET_STD)


def _decode_upload(value):
    """ipywidgets FileUpload value (8.x: tuple of dicts; 7.x: dict of dicts) -> (PIL image, name) or None."""
    from PIL import Image, UnidentifiedImageError

    files = list(value.values()) if isinstance(value, Mapping) else list(value or ())
    if not files:
        return None
    f = files[-1]
    name = f.get("name") or f.get("metadata", {}).get("name", "upload")
    try:
        with Image.open(io.BytesIO(bytes(f["content"]))) as im:
            return im.convert("RGB"), name
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"upload: {name} is not an image this explorer can read ({e})") from None


# ----------------------------------------------------------------------------- the explorer
class SamplingExplorer:
    """State and drawing of the explorer; ``.widget`` is what ``explore_sampling`` returns.

    ``controls`` maps each description to its widget; ``capture_count`` / ``draw_count``
    count forward passes and redraws, ``capture_seconds`` / ``draw_seconds`` time them
    (wall clock; ``*_cpu_seconds``: this process's CPU time).
    """

    def __init__(self, model, images, class_names=None, *, cfg=None, size: int | None = None,
                 max_size: int | None = None, stage: str = "decoder", score: float = 0.3, top_k: int | None = None,
                 attention_backend: str | None = "torch", capture_threads: int | str | None = "auto",
                 cache_size: int = 8, cache_mb: float = 1024, figsize=(6.4, 4.8), dpi: int = 80,
                 interactive: bool | None = None):
        import ipywidgets as W

        _check_model(model)
        if stage not in ("encoder", "decoder"):
            raise ValueError(f"stage: expected 'encoder' or 'decoder', got {stage!r}")
        if not 0.0 <= float(score) <= 1.0:
            raise ValueError(f"score: expected a threshold in [0, 1], got {score}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k: expected a positive number of points or None, got {top_k!r}")
        self.model = model
        self.source = _ImageSource(images)
        self.class_names = class_names if class_names is not None else self.source.class_names()
        if cfg is not None and size is None:
            size, max_size = getattr(cfg, "val_size", None), getattr(cfg, "val_max_size", None)
        self.resize = (size, max_size)
        self.attention_backend = attention_backend
        if not (capture_threads in ("auto", None) or (isinstance(capture_threads, int) and capture_threads > 0)):
            raise ValueError(f"capture_threads: expected 'auto', None or a positive int, got {capture_threads!r}")
        self.capture_threads = capture_threads
        self.cache: OrderedDict[int, dict] = OrderedDict()
        self.cache_size = max(1, int(cache_size))
        self.cache_bytes = float(cache_mb) * 2**20
        self.capture_count = self.draw_count = 0
        self.capture_seconds: list[float] = []  # wall clock
        self.draw_seconds: list[float] = []
        self.capture_cpu_seconds: list[float] = []  # this process's CPU time (all its threads)
        self.draw_cpu_seconds: list[float] = []
        self._hold = False

        # The model's shape (layers, heads, levels, points), read off the first image's record.
        rec = self.entry(0)["record"]
        self.num_layers = {s: len(rec[s]) for s in ("encoder", "decoder")}
        _, _, self.num_heads, self.num_levels, _ = rec["encoder"][0]["attention_weights"].shape
        self.num_points = {s: rec[s][0]["attention_weights"].shape[-1] for s in ("encoder", "decoder")}

        # Controls (descriptions are a contract: image, stage, layer, head, levels, top-k, score, query, x, y).
        style = {"description_width": "80px"}
        wide = W.Layout(width="330px")
        c = {}
        c["image"] = W.Dropdown(options=self._image_options(), value=0, description="image", style=style, layout=wide)
        c["upload"] = W.FileUpload(accept="image/*", multiple=False, description="upload")
        c["stage"] = W.ToggleButtons(options=["encoder", "decoder"], value=stage, description="stage", style=style)
        c["layer"] = W.IntSlider(min=0, max=self.num_layers[stage] - 1, value=self.num_layers[stage] - 1,
                                 description="layer", style=style, layout=wide, continuous_update=False)
        c["head"] = W.Dropdown(options=["all"] + list(range(self.num_heads)), value="all", description="head",
                               style=style, layout=W.Layout(width="160px"))
        c["levels"] = W.SelectMultiple(options=list(range(self.num_levels)), value=tuple(range(self.num_levels)),
                                       rows=min(self.num_levels, 4), description="levels", style=style,
                                       layout=W.Layout(width="160px"))
        most = self.num_heads * self.num_levels * max(self.num_points.values())
        c["top-k"] = W.IntSlider(min=1, max=most, value=most if top_k is None else int(top_k), description="top-k",
                                 style=style, layout=wide, continuous_update=False)
        c["score"] = W.FloatSlider(min=0.0, max=1.0, step=0.05, value=float(score), description="score",
                                   style=style, layout=wide, continuous_update=False, readout_format=".2f")
        c["query"] = W.Dropdown(options=[], description="query", style=style, layout=wide)
        c["query level"] = W.Dropdown(options=list(range(self.num_levels)), value=0, description="query level",
                                      style=style, layout=W.Layout(width="160px"))
        c["x"] = W.IntSlider(min=0, max=1, value=0, description="x", style=style, layout=wide, continuous_update=False)
        c["y"] = W.IntSlider(min=0, max=1, value=0, description="y", style=style, layout=wide, continuous_update=False)
        self.controls = c
        self.info = W.HTML()

        # The picture: the ipympl canvas when that backend is active (clicks work), else a PNG.
        import matplotlib

        if interactive is None:
            interactive = "ipympl" in matplotlib.get_backend() or "widget" in matplotlib.get_backend()
        self.interactive = bool(interactive)
        if self.interactive:
            import matplotlib.pyplot as plt

            with plt.ioff():
                self.fig = plt.figure(figsize=figsize, dpi=dpi)
            canvas = self.fig.canvas
            for attr, val in (("header_visible", False), ("footer_visible", False), ("resizable", False),
                              ("toolbar_visible", False)):
                if hasattr(canvas, attr):
                    setattr(canvas, attr, val)
            self.view = canvas
            self.image_widget = None
        else:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure

            self.fig = Figure(figsize=figsize, dpi=dpi)
            FigureCanvasAgg(self.fig)
            self.image_widget = W.Image(format="png")
            self.view = self.image_widget
        self.ax = self.fig.add_axes([0.01, 0.02, 0.80, 0.90])
        self.cax = self.fig.add_axes([0.84, 0.1, 0.03, 0.75])
        self.artists = SamplingArtists(self.ax, colorbar=self.cax)
        self.fig.canvas.mpl_connect("button_press_event", self._on_click)

        for name, w in c.items():
            if name == "upload":
                w.observe(self._on_upload, names="value")
            elif name == "image":
                w.observe(self._on_image, names="value")
            elif name == "stage":
                w.observe(self._on_stage, names="value")
            elif name == "score":
                w.observe(self._on_score, names="value")
            else:
                w.observe(self._on_change, names="value")

        self.decoder_box = W.VBox([c["query"]])
        self.encoder_box = W.VBox([c["query level"], c["x"], c["y"]])
        left = W.VBox([W.HBox([c["image"], c["upload"]]), c["stage"], c["layer"], c["top-k"], c["score"],
                       self.decoder_box, self.encoder_box])
        right = W.VBox([c["head"], c["levels"]])
        self.widget = W.VBox([W.HBox([left, right]), self.view, self.info])
        self.widget.add_class("ddetr-explorer")  # for a browser (or a test) to find it on the page
        self.widget.explorer = self  # reach the state from the returned widget
        self._select_image(0)

    # --------------------------------------------------------------- capture (once per image)
    def _image_options(self):
        return [(name, i) for i, name in enumerate(self.source.names)]

    def entry(self, index: int | None = None) -> dict:
        """The cached forward pass of image ``index`` (default: the current one), captured if needed."""
        index = self.controls["image"].value if index is None else index
        if not 0 <= index < len(self.source):
            raise ValueError(f"index: no image {index} (there are {len(self.source)})")
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        from ddetr_lib.models import MSDeformAttn, capture_deformable

        rgb = self.source.load(index)
        t0, c0 = time.perf_counter(), time.process_time()
        x = _model_tensor(rgb, *self.resize)
        device = next(self.model.parameters()).device
        attn = [m for m in self.model.modules() if isinstance(m, MSDeformAttn)]
        saved = [m.backend for m in attn]
        was_training = self.model.training
        threads = torch.get_num_threads()
        use = self.capture_threads
        if use == "auto":
            # A small image: its ops are too small to split between threads, and on a busy
            # machine threads wait for each other (measured on 2 shared cores, toy model:
            # 70 ms with one thread, 6 s with two).
            use = 1 if x.shape[1] * x.shape[2] <= 256 * 256 else None
        try:
            if use:
                torch.set_num_threads(use)
            if self.attention_backend is not None:
                for m in attn:
                    m.backend = self.attention_backend
            self.model.eval()
            with torch.no_grad(), capture_deformable(self.model) as rec:
                out = self.model([x.to(device)])
        finally:
            torch.set_num_threads(threads)
            self.model.train(was_training)
            for m, b in zip(attn, saved):
                m.backend = b
        record = {
            "encoder": [{k: v.cpu() for k, v in layer.items()} for layer in rec["encoder"]],
            "decoder": [{k: v.cpu() for k, v in layer.items()} for layer in rec["decoder"]],
            "spatial_shapes": rec["spatial_shapes"].cpu(), "level_start_index": rec["level_start_index"].cpu(),
            "valid_ratios": rec["valid_ratios"].cpu(), "masks": [m.cpu() for m in rec["masks"]],
        }
        outputs = {"pred_logits": out["pred_logits"].cpu(), "pred_boxes": out["pred_boxes"].cpu()}
        # Every decoder layer's own prediction (auxiliary outputs, then the last layer's), so that a
        # layer's sampling points are shown with the box that layer predicts.
        per_layer = [*out.get("aux_outputs", []), outputs]
        if len(per_layer) != len(record["decoder"]):  # no auxiliary outputs: the final box everywhere
            per_layer = [outputs] * len(record["decoder"])
        layer_outputs = [{k: o[k].cpu() for k in ("pred_logits", "pred_boxes")} for o in per_layer]
        prob = outputs["pred_logits"][0].sigmoid()  # (Q, C)
        scores, labels = prob.max(-1)
        h, w = rgb.shape[:2]
        from ddetr_lib.viz.images import boxes_to_pixels

        entry = {"rgb": rgb, "size": (h, w), "input_size": tuple(x.shape[1:]), "record": record, "outputs": outputs,
                 "layer_outputs": layer_outputs,
                 "scores": scores.numpy(), "labels": labels.numpy(),  # best class per query (Q,)
                 "boxes": boxes_to_pixels(outputs["pred_boxes"][0], (h, w)).numpy(),  # (Q, 4) pixels of rgb
                 "capture_seconds": time.perf_counter() - t0}
        self.capture_seconds.append(entry["capture_seconds"])
        self.capture_cpu_seconds.append(time.process_time() - c0)
        self.capture_count += 1
        entry["nbytes"] = sum(t.numel() * t.element_size() for layer in record["encoder"] + record["decoder"]
                              for t in layer.values())
        self.cache[index] = entry
        # Keep the most recent images, within the image count and the memory budget (an official
        # model's record at 800 px is ~200 MB: mostly the encoder's points, one per pixel).
        while len(self.cache) > 1 and (len(self.cache) > self.cache_size
                                       or sum(e["nbytes"] for e in self.cache.values()) > self.cache_bytes):
            self.cache.popitem(last=False)
        return entry

    # --------------------------------------------------------------- events
    def _on_change(self, change=None):
        if not self._hold:
            self.redraw()

    def _on_image(self, change):
        if not self._hold:
            self._select_image(change["new"])

    def _select_image(self, index: int):
        """A new image: capture it (or take it from the cache), fit the sliders, redraw once."""
        c = self.controls
        e = self.entry(index)
        h, w = e["size"]
        self._hold = True
        try:
            for name, n in (("x", w), ("y", h)):
                s = c[name]
                v = min(s.value, n - 1) if s.max > 1 else n // 2
                s.max = max(n - 1, 1)
                s.value = v
            self._fill_queries(e)
        finally:
            self._hold = False
        self.redraw()

    def _on_stage(self, change):
        c = self.controls
        stage = change["new"]
        self._hold = True
        try:
            layer = c["layer"]
            n = self.num_layers[stage]
            layer.max = n - 1
            layer.value = min(layer.value, n - 1)
        finally:
            self._hold = False
        self.redraw()

    def _on_score(self, change):
        self._hold = True
        try:
            self._fill_queries(self.entry())
        finally:
            self._hold = False
        self.redraw()

    def _fill_queries(self, e):
        """The query list: detections scoring at least ``score``, best first (at least the best one)."""
        order = np.argsort(-e["scores"], kind="stable")
        keep = [int(q) for q in order if e["scores"][q] >= self.controls["score"].value] or [int(order[0])]
        names = self.class_names
        options = []
        for q in keep:
            label = int(e["labels"][q])
            if isinstance(names, Mapping):
                name = names.get(label, str(label))
            elif names is not None and 0 <= label < len(names):
                name = names[label]
            else:
                name = str(label)
            options.append((f"{name} {e['scores'][q]:.2f} (query {q})", q))
        query = self.controls["query"]
        current = query.value
        query.options = options
        query.value = current if current in keep else keep[0]

    def _on_upload(self, change):
        try:
            got = _decode_upload(change["new"])
        except ValueError as e:  # say it where the user looks, keep the explorer running
            self.info.value = f"<b style='color:#b00'>{e}</b>"
            return
        if got is None:
            return
        image, name = got
        index = self.source.add(image, name)
        self._hold = True
        try:
            self.controls["image"].options = self._image_options()
            self.controls["image"].value = index
        finally:
            self._hold = False
        self._select_image(index)

    def _on_click(self, event):
        """Encoder: the clicked pixel becomes the query. Decoder: the detection whose box is
        nearest to the click (inside a box counts as distance 0; the smallest box wins)."""
        if event.inaxes is not self.ax or event.xdata is None:
            return
        c = self.controls
        x, y = float(event.xdata), float(event.ydata)
        if c["stage"].value == "encoder":
            h, w = self.entry()["size"]
            self._hold = True
            try:
                c["x"].value = int(min(max(x, 0), w - 1))
                c["y"].value = int(min(max(y, 0), h - 1))
            finally:
                self._hold = False
            self.redraw()
            return
        e = self.entry()
        queries = [v for _, v in c["query"].options]
        if not queries:
            return
        boxes = e["boxes"][queries]  # (K, 4)
        dx = np.maximum(np.maximum(boxes[:, 0] - x, x - boxes[:, 2]), 0)
        dy = np.maximum(np.maximum(boxes[:, 1] - y, y - boxes[:, 3]), 0)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best = int(np.lexsort((area, np.hypot(dx, dy)))[0])
        c["query"].value = queries[best]

    # --------------------------------------------------------------- drawing
    def current_query(self) -> int:
        """The query index shown: a decoder query, or the encoder token under (x, y)."""
        c = self.controls
        if c["stage"].value == "decoder":
            return int(c["query"].value)
        e = self.entry()
        # the centre of pixel (x, y)
        return encoder_query_at(e["record"], c["x"].value + 0.5, c["y"].value + 0.5, e["size"],
                                level=c["query level"].value)

    def redraw(self):
        """Draw the current choice (no forward pass unless the image is new)."""
        t0, c0 = time.perf_counter(), time.process_time()
        c = self.controls
        e = self.entry()
        stage, layer = c["stage"].value, int(c["layer"].value)
        rec, size = e["record"], e["size"]
        self.decoder_box.layout.display = "" if stage == "decoder" else "none"
        self.encoder_box.layout.display = "" if stage == "encoder" else "none"
        query = self.current_query()
        pts = query_points(rec, stage, layer, query, 0, size)
        heads = None if c["head"].value == "all" else [int(c["head"].value)]
        levels = sorted(c["levels"].value)
        available = (1 if heads else self.num_heads) * len(levels) * pts.num_points
        top_k = int(c["top-k"].value)
        top_k = None if top_k >= available else top_k

        box = label = score = cell = others = None
        if stage == "decoder":
            box, label, score = decoder_detection(e["layer_outputs"][layer], query, 0, size)
            # The other detections above the threshold, faint, to click on.
            others = e["boxes"][[q for _, q in c["query"].options if q != query]]
        else:
            cell = encoder_cell_box(rec, query, size)
        self.artists.update(e["rgb"], pts, heads=heads, levels=levels, top_k=top_k, box=box, label=label,
                            score=score, class_names=self.class_names, encoder_cell=cell, other_boxes=others)
        shown = "all heads" if heads is None else f"head {heads[0]}"
        if stage == "encoder":
            lvl, row, col = encoder_query_cell(rec, query)
            where = f"pixel ({c['x'].value}, {c['y'].value}) = level {lvl} cell ({row}, {col})"
        else:
            where = f"query {query} (box and score of layer {layer})"
        k_text = "" if top_k is None else f", top {top_k}"
        lv_text = "no level chosen" if not levels else f"levels {levels}"
        self.ax.set_title(f"{stage} layer {layer}, {where}\n{shown}, {lv_text}{k_text}", fontsize=9)
        self._render()
        dt = time.perf_counter() - t0
        self.draw_seconds.append(dt)
        self.draw_cpu_seconds.append(time.process_time() - c0)
        self.draw_count += 1
        vh = valid_level_sizes(rec)
        maps = ", ".join(f"{int(w)}x{int(h)}" for h, w in vh.tolist())
        self.info.value = (f"<small>image {size[1]}x{size[0]} px, model input {e['input_size'][1]}x"
                           f"{e['input_size'][0]}; level maps (w x h): {maps}; capture "
                           f"{e['capture_seconds'] * 1000:.0f} ms, redraw {dt * 1000:.0f} ms</small>")

    def _render(self):
        if self.interactive:
            self.fig.canvas.draw_idle()
            return
        self.image_widget.value = self.png()

    def png(self) -> bytes:
        """The current picture as PNG bytes (fast, light compression: it is redrawn often)."""
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=self.fig.dpi, pil_kwargs={"compress_level": 1})
        return buf.getvalue()


def explore_sampling(model, images, class_names=None, **options):
    """An ipywidgets widget to explore where a Deformable DETR looks (Fig. 6 of the paper, live).

    model: a Deformable DETR of any variant (base, box refinement, two-stage), e.g. from
    ``ddetr_lib.course.load_model`` or with an official checkpoint loaded. It is run in
    eval mode, once per image (the record is cached).
    images: a list of PIL images, (H, W, 3) uint8 arrays, (3, H, W) tensors (uint8, RGB floats
    in [0, 1], or ImageNet-normalised as the datasets return them) or file paths; or a
    dataset (e.g. ``CocoDetection``: its images and class names are used).
    class_names: class id -> name (dict or list); default: the dataset's categories.

    options:
      ``cfg``           resize like its validation transform; or ``size`` / ``max_size`` (short
                        side, long-side cap; default: no resize)
      ``stage``         "decoder" (default) or "encoder" at the start
      ``score``         detections listed from this score (0.3)
      ``top_k``         heaviest points shown (default all)
      ``attention_backend``  "torch" (default: no Numba compile wait); None keeps the model's
      ``capture_threads``    "auto": one thread for images up to 256 x 256, where more only
                        wait for each other; None keeps torch's setting
      ``cache_size``, ``cache_mb``  records kept: 8 images, at most 1024 MB
      ``figsize``, ``dpi``   the picture (6.4 x 4.8 in at 80 dpi)
      ``interactive``   use the ipympl canvas (default: whether ``%matplotlib widget`` is on)

    Controls (``description``): image, upload, stage, layer, head, levels, top-k, score,
    query (decoder), query level, x, y (encoder). The returned widget's ``.explorer`` is
    the :class:`SamplingExplorer` behind it.
    """
    return SamplingExplorer(model, images, class_names, **options).widget
