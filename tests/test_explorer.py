"""Fig. 6 (sampling points of one query) and the interactive explorer, without a browser.

Positions are checked against numbers worked out by hand on a record built by hand (two
levels, a padded batch image), and against the model's own unpadded coordinates; the
explorer is driven by setting its widgets' values, as a user's clicks would.
"""
import datetime
import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ddetr_lib.config import get_config  # noqa: E402
from ddetr_lib.models import build_model, capture_deformable  # noqa: E402
from ddetr_lib.viz import explore_sampling  # noqa: E402
from ddetr_lib.viz.sampling import (encoder_cell_box, encoder_query_at, encoder_query_cell,  # noqa: E402
                                    encoder_query_index, plot_query_sampling, query_points,
                                    reference_points_to_pixels, valid_level_sizes)


def _points_collection(fig):
    found = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "sampling_points"]
    return found


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- a record built by hand
@pytest.fixture
def hand_record():
    """Two images, two levels (4x6 and 2x3 padded maps). Image 1 is padded: its valid part is
    3 rows x 4 columns of level 0 and 2 x 2 of level 1. One decoder query, two heads, one point
    per head and level."""
    masks0 = torch.zeros(2, 4, 6, dtype=torch.bool)
    masks0[1, 3:, :] = True
    masks0[1, :, 4:] = True
    masks1 = torch.zeros(2, 2, 3, dtype=torch.bool)
    masks1[1, :, 2:] = True
    valid_ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[4 / 6, 3 / 4], [2 / 3, 1.0]]])  # (N, L, 2) as (w, h)
    loc = torch.full((2, 1, 2, 2, 1, 2), 0.5)  # (N, Lq, M, L, P, 2)
    loc[1, 0, 0, 0, 0] = torch.tensor([0.5, 0.5])  # head 0, level 0
    loc[1, 0, 0, 1, 0] = torch.tensor([0.1, 0.9])  # head 0, level 1
    loc[1, 0, 1, 0, 0] = torch.tensor([0.25, 0.125])  # head 1, level 0
    loc[1, 0, 1, 1, 0] = torch.tensor([1 / 3, 0.25])  # head 1, level 1
    weights = torch.tensor([[0.7, 0.3], [0.4, 0.6]]).view(1, 1, 2, 2, 1).expand(2, 1, 2, 2, 1).clone()
    ref_valid = torch.tensor([0.375, 0.5])  # in the unpadded image
    ref = ref_valid * valid_ratios[:, None, :, :]  # (N, 1, L, 2) padded coordinates, as the model gives them
    layer = {"sampling_locations": loc, "attention_weights": weights, "reference_points": ref}
    return {"encoder": [layer], "decoder": [layer], "spatial_shapes": torch.tensor([[4, 6], [2, 3]]),
            "level_start_index": torch.tensor([0, 24]), "valid_ratios": valid_ratios, "masks": [masks0, masks1]}


def test_positions_of_a_padded_batch_image_worked_out_by_hand(hand_record):
    # Image 1 is 48 x 64 pixels (h x w). Level 0: 4 of 6 columns and 3 of 4 rows are image.
    #   (0.5, 0.5)    -> 0.5 * 6 = 3 of 4 columns = 0.75 * 64 = 48;  0.5 * 4 = 2 of 3 rows = 32
    #   (0.25, 0.125) -> 1.5 of 4 columns -> 24;                    0.5 of 3 rows -> 8
    # Level 1: 2 of 3 columns, 2 of 2 rows.
    #   (0.1, 0.9)    -> 0.3 of 2 columns -> 9.6;                   1.8 of 2 rows -> 43.2
    #   (1/3, 0.25)   -> 1 of 2 columns -> 32;                      0.5 of 2 rows -> 12
    pts = query_points(hand_record, "decoder", 0, 0, batch_index=1, size=(48, 64))
    expected = np.array([[[48.0, 32.0], [9.6, 43.2]], [[24.0, 8.0], [32.0, 12.0]]])  # (M, L, 2)
    np.testing.assert_allclose(pts.xy[:, :, 0], expected, atol=1e-4)  # (float32 record)
    # On the level maps: loc * (W_l, H_l).
    np.testing.assert_allclose(pts.level_xy[0, 0, 0], [3.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(pts.level_xy[1, 1, 0], [1.0, 0.5], atol=1e-6)
    # The reference point (0.375, 0.5) of the unpadded image: (24, 24).
    np.testing.assert_allclose(pts.reference, [24.0, 24.0], atol=1e-4)
    # Drawing on an image shown at twice the size (the original before a resize): all doubled.
    big = query_points(hand_record, "decoder", 0, 0, batch_index=1, size=(96, 128))
    np.testing.assert_allclose(big.xy, 2 * pts.xy, atol=1e-6)
    # Image 0 (not padded): a location is just loc * size.
    np.testing.assert_allclose(query_points(hand_record, "decoder", 0, 0, 0, (40, 60)).xy[0, 0, 0], [30.0, 20.0])


def test_figure_draws_the_mapped_points(hand_record):
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    fig = plot_query_sampling(image, hand_record, "decoder", 0, 0, batch_index=1)
    (sc,) = _points_collection(fig)
    # Lightest first: weights 0.3, 0.4, 0.6, 0.7.
    np.testing.assert_allclose(sc.get_offsets(), [[9.6, 43.2], [24.0, 8.0], [32.0, 12.0], [48.0, 32.0]], atol=1e-4)
    np.testing.assert_allclose(sc.get_array(), [0.3, 0.4, 0.6, 0.7], atol=1e-6)
    # The cross sits on the reference point.
    cross = [l for ax in fig.axes for l in ax.lines if l.get_gid() == "reference_point"]
    np.testing.assert_allclose(np.ravel(cross[0].get_xydata()), [24.0, 24.0], atol=1e-4)
    # Top-2 keeps the two heaviest (0.7 at (48, 32), 0.6 at (32, 12)), heaviest drawn last (on top).
    fig = plot_query_sampling(image, hand_record, "decoder", 0, 0, batch_index=1, top_k=2)
    (sc,) = _points_collection(fig)
    np.testing.assert_allclose(sc.get_offsets(), [[32.0, 12.0], [48.0, 32.0]], atol=1e-4)
    np.testing.assert_allclose(sc.get_array(), [0.6, 0.7], atol=1e-6)


def test_encoder_query_cells(hand_record):
    assert encoder_query_index(hand_record, 1, 1, 2) == 24 + 1 * 3 + 2
    assert encoder_query_cell(hand_record, 29) == (1, 1, 2)
    assert encoder_query_cell(hand_record, 7) == (0, 1, 1)
    # Image 1, 48 x 64 px: level 0 has 4 x 3 valid cells of 16 x 16 px; pixel (40, 20) is in cell (1, 2).
    q = encoder_query_at(hand_record, 40.0, 20.0, (48, 64), level=0, batch_index=1)
    assert encoder_query_cell(hand_record, q) == (0, 1, 2)
    np.testing.assert_allclose(encoder_cell_box(hand_record, q, (48, 64), batch_index=1), [32, 16, 48, 32], atol=1e-6)
    with pytest.raises(ValueError, match="index"):
        encoder_query_cell(hand_record, 30)


# ----------------------------------------------------------------------------- real models
def _model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(get_config(name, num_classes=5, **overrides)).eval()


@pytest.fixture(scope="module")
def padded_run():
    """The random toy model on a padded batch: image 1 (64 x 96) is padded to 128 x 160."""
    model = _model("toy_deformable_detr")
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 128, 160, generator=g), torch.randn(3, 64, 96, generator=g)]
    with torch.no_grad(), capture_deformable(model) as rec:
        out = model(images)
    return model, images, rec, out


def test_reference_points_land_where_the_model_says(padded_run):
    """The model keeps each decoder reference in unpadded coordinates too
    (``decoder_reference_boxes``): mapping the padded ones must give the same pixels."""
    _, images, rec, _ = padded_run
    for b, (h, w) in ((0, (128, 160)), (1, (64, 96))):
        centre, _ = reference_points_to_pixels(rec["decoder"][1]["reference_points"][b], rec["valid_ratios"][b], (h, w))
        valid = rec["decoder_reference_boxes"][1][b][:, :2].double()  # (Q, 2) normalised by the unpadded image
        torch.testing.assert_close(centre, valid * torch.tensor([w, h], dtype=torch.float64), atol=1e-4, rtol=0)
    # An encoder query's reference is the centre of its cell, also in the padded image.
    q = encoder_query_index(rec, 1, 2, 3)
    pts = query_points(rec, "encoder", 0, q, batch_index=1, size=(64, 96))
    x0, y0, x1, y1 = encoder_cell_box(rec, q, (64, 96), batch_index=1)
    np.testing.assert_allclose(pts.reference, [(x0 + x1) / 2, (y0 + y1) / 2], atol=1e-4)
    assert (x0, y0, x1, y1) == pytest.approx((48, 32, 64, 48))  # level 1: 16 x 16 px cells


@pytest.mark.parametrize("variant", ["toy_deformable_detr", "toy_deformable_detr_refine",
                                     "toy_deformable_detr_refine_two_stage"])
def test_marker_counts_and_views_for_every_variant(variant):
    model = _model(variant)
    image = torch.rand(3, 96, 112)
    with torch.no_grad(), capture_deformable(model) as rec:
        out = model([image])
    cfg = get_config(variant)
    m, l = cfg.nheads, cfg.num_feature_levels
    for stage in ("encoder", "decoder"):
        p = cfg.dec_n_points if stage == "decoder" else cfg.enc_n_points
        for layer in range(len(rec[stage])):
            fig = plot_query_sampling(image, rec, stage, layer, 3, outputs=out)
            (sc,) = _points_collection(fig)
            assert len(sc.get_offsets()) == m * l * p
            plt.close(fig)
        fig = plot_query_sampling(image, rec, stage, 0, 3, top_k=5)
        assert len(_points_collection(fig)[0].get_offsets()) == 5
        fig = plot_query_sampling(image, rec, stage, 0, 3, heads=[1], levels=[0, 2])
        assert len(_points_collection(fig)[0].get_offsets()) == 2 * p
        fig = plot_query_sampling(image, rec, stage, 0, 3, view="heads")
        assert [len(c.get_offsets()) for c in _points_collection(fig)] == [l * p] * m
        fig = plot_query_sampling(image, rec, stage, 0, 3, view="levels", top_k=2)
        assert [len(c.get_offsets()) for c in _points_collection(fig)] == [2] * l
        plt.close("all")
    if variant != "toy_deformable_detr":  # box references: drawn dashed when no prediction is given
        pts = query_points(rec, "decoder", 1, 3, size=(96, 112))
        assert pts.reference_box is not None and pts.reference_box.shape == (4,)


def test_colours_and_sizes_grow_with_the_weight():
    model, _ = _trained()
    image = _demo_images()[0]
    from ddetr_lib.viz.explorer import _model_tensor, _to_rgb

    rgb = _to_rgb(image, "image")
    with torch.no_grad(), capture_deformable(model) as rec:
        out = model([_model_tensor(rgb, None, None)])
    q = int(out["pred_logits"][0].sigmoid().max(-1).values.argmax())
    fig = plot_query_sampling(rgb, rec, "decoder", 1, q, outputs=out)
    fig.canvas.draw()  # colours are computed from the weights when drawn
    (sc,) = _points_collection(fig)
    weights = np.asarray(sc.get_array())
    assert np.all(np.diff(weights) >= 0)  # lightest first: heavy points on top
    lum = sc.get_facecolors()[:, :3] @ np.array([0.2126, 0.7152, 0.0722])  # viridis: lighter = heavier
    assert np.all(np.diff(lum) >= -1e-9) and lum[-1] > lum[0]
    sizes = sc.get_sizes()
    assert np.all(np.diff(sizes) >= 0) and sizes[-1] > sizes[0]
    # The colour is the colour map at the weight (scale 0 .. the heaviest shown).
    np.testing.assert_allclose(sc.get_facecolors(), sc.cmap(weights / weights.max()), atol=1e-6)


def test_a_decoder_layer_is_drawn_with_its_own_box():
    """Layer 0's points go with the box layer 0 predicts (its auxiliary output), not the final one."""
    from matplotlib.colors import to_rgba

    from ddetr_lib.viz.explorer import _model_tensor, _to_rgb

    model, _ = _trained()
    rgb = _to_rgb(_demo_images()[1], "image")
    with torch.no_grad(), capture_deformable(model) as rec:
        out = model([_model_tensor(rgb, None, None)])
    q = int(out["pred_logits"][0].sigmoid().max(-1).values.argmax())
    own, final = out["aux_outputs"][0]["pred_boxes"][0, q], out["pred_boxes"][0, q]
    assert (own - final).abs().max() > 1e-3  # the layers disagree, so the test can tell them apart
    h, w = rgb.shape[:2]
    for layer, (cx, cy, bw, bh) in ((0, own.tolist()), (1, final.tolist())):
        fig = plot_query_sampling(rgb, rec, "decoder", layer, q, outputs=out)
        boxes = [p for p in fig.axes[0].patches if p.get_visible() and p.get_edgecolor() == to_rgba("orange")]
        assert len(boxes) == 1
        np.testing.assert_allclose([boxes[0].get_x(), boxes[0].get_y(), boxes[0].get_width(), boxes[0].get_height()],
                                   [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h], rtol=1e-5)


def test_bad_arguments_are_named(hand_record):
    with pytest.raises(ValueError, match="stage"):
        query_points(hand_record, "middle", 0, 0, size=(4, 4))
    with pytest.raises(ValueError, match="layer"):
        query_points(hand_record, "decoder", 3, 0, size=(4, 4))
    with pytest.raises(ValueError, match="query"):
        query_points(hand_record, "decoder", 0, 5, size=(4, 4))
    with pytest.raises(ValueError, match="heads"):
        query_points(hand_record, "decoder", 0, 0, size=(4, 4)).select(heads=[2])
    with pytest.raises(ValueError, match="view"):
        plot_query_sampling(np.zeros((4, 4, 3), np.uint8), hand_record, "decoder", 0, 0, view="points")


# ----------------------------------------------------------------------------- the explorer
_CACHE = {}


def _trained():
    if "model" not in _CACHE:
        from ddetr_lib import course

        _CACHE["model"] = course.load_model("toy_deformable_detr_demo")
    return _CACHE["model"]


def _demo_images(n=3):
    """Small synthetic images drawn with the dataset's own renderer (no files needed)."""
    if "images" not in _CACHE:
        from ddetr_lib.data.synthetic import get_spec, render_image

        rng = np.random.default_rng(0)
        spec = get_spec("demo")
        _CACHE["images"] = [Image.fromarray(render_image(spec, rng)[0]) for _ in range(3)]
    return _CACHE["images"][:n]


@pytest.fixture
def explorer():
    model, cfg = _trained()
    widget = explore_sampling(model, _demo_images(), cfg=cfg)
    return widget


def _control(widget, description):
    """Find a control by its description, as an outside user would (case-insensitive, ':' allowed)."""
    import ipywidgets

    stack, found = [widget], []
    while stack:
        w = stack.pop()
        if isinstance(w, ipywidgets.Box):
            stack.extend(w.children)
        elif getattr(w, "description", None) is not None and \
                w.description.lower().rstrip(":").strip() == description:
            found.append(w)
    assert len(found) == 1, (description, found)
    return found[0]


def test_the_controls_named_in_the_brief_exist(explorer):
    import ipywidgets

    assert isinstance(explorer, ipywidgets.Widget)
    for name in ("image", "stage", "layer", "head", "levels", "top-k", "score", "query", "x", "y"):
        _control(explorer, name)
    assert set(_control(explorer, "stage").options) == {"encoder", "decoder"}
    assert _control(explorer, "head").options[0] == "all"


def test_every_control_redraws_without_a_new_forward_pass(explorer):
    ex = explorer.explorer
    assert ex.capture_count == 1 and ex.draw_count == 1
    picture = ex.png()

    def change(name, value):
        nonlocal picture
        w = _control(explorer, name)
        draws, captures = ex.draw_count, ex.capture_count
        w.value = value
        assert ex.draw_count == draws + 1, name  # exactly one redraw per change
        assert ex.capture_count == captures, name  # and no forward pass
        new = bytes(ex.image_widget.value)
        assert new != picture, f"{name}={value!r} did not change the picture"
        picture = new

    change("layer", 0)
    # The box drawn is layer 0's own prediction (its auxiliary output).
    q = _control(explorer, "query").value
    aux = ex.entry()["layer_outputs"][0]["pred_boxes"][0, q]  # (cx, cy, w, h) normalised
    assert (aux - ex.entry()["outputs"]["pred_boxes"][0, q]).abs().max() > 1e-3  # differs from the final box
    h, w = ex.entry()["size"]
    np.testing.assert_allclose(ex.artists.box.get_width(), float(aux[2]) * w, rtol=1e-5)
    np.testing.assert_allclose(ex.artists.box.get_x(), float(aux[0] - aux[2] / 2) * w, rtol=1e-5)
    change("head", 1)
    change("head", "all")
    change("levels", (0, 2))
    change("top-k", 4)
    change("score", 0.05)
    queries = [q for _, q in _control(explorer, "query").options]
    assert len(queries) >= 2
    change("query", queries[1])
    change("stage", "encoder")
    change("x", 10)
    change("y", 70)
    change("query level", 2)
    change("stage", "decoder")
    # A new image is one forward pass; coming back to it uses the cache.
    image = _control(explorer, "image")
    image.value = 1
    assert ex.capture_count == 2
    image.value = 0
    image.value = 1
    assert ex.capture_count == 2


def test_clicks_choose_the_query(explorer):
    from types import SimpleNamespace

    ex = explorer.explorer
    e = ex.entry()
    _control(explorer, "score").value = 0.0  # every query is in the list
    target = int(e["scores"].argsort()[-2])  # the second-best detection
    x0, y0, x1, y1 = e["boxes"][target]
    inside = (x0 + x1) / 2, (y0 + y1) / 2
    # The smallest box holding the click wins: pick a point inside the target box only if possible.
    ex._on_click(SimpleNamespace(inaxes=ex.ax, xdata=inside[0], ydata=inside[1]))
    boxes = e["boxes"]
    holding = [q for q in range(len(boxes)) if boxes[q, 0] <= inside[0] <= boxes[q, 2]
               and boxes[q, 1] <= inside[1] <= boxes[q, 3]]
    areas = {q: (boxes[q, 2] - boxes[q, 0]) * (boxes[q, 3] - boxes[q, 1]) for q in holding}
    assert ex.controls["query"].value == min(areas, key=areas.get)
    # Encoder: the clicked pixel becomes the query.
    _control(explorer, "stage").value = "encoder"
    draws = ex.draw_count
    ex._on_click(SimpleNamespace(inaxes=ex.ax, xdata=33.7, ydata=21.2))
    assert (_control(explorer, "x").value, _control(explorer, "y").value) == (33, 21)
    assert ex.draw_count == draws + 1  # one redraw for the two sliders
    level, row, col = encoder_query_cell(e["record"], ex.current_query())
    h, w = e["size"]
    vh, vw = (int(v) for v in valid_level_sizes(e["record"])[0])
    assert (level, row, col) == (0, int(21.5 / h * vh), int(33.5 / w * vw))


def test_upload_adds_an_image(explorer):
    ex = explorer.explorer
    buf = io.BytesIO()
    _demo_images()[2].save(buf, format="PNG")
    upload = _control(explorer, "upload")
    upload.value = ({"name": "mine.png", "type": "image/png", "size": len(buf.getvalue()),
                     "content": memoryview(buf.getvalue()),
                     "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)
    image = _control(explorer, "image")
    assert image.value == 3 and "mine.png" in image.label
    assert ex.capture_count == 2
    # Not an image: the explorer says so and keeps going.
    upload.value = ({"name": "notes.txt", "type": "text/plain", "size": 5, "content": memoryview(b"hello"),
                     "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)
    assert "upload: notes.txt is not an image" in ex.info.value
    assert len(image.options) == 4


def test_inputs_of_every_kind(tmp_path):
    model, cfg = _trained()
    pil = _demo_images(1)[0]
    path = tmp_path / "a.png"
    pil.save(path)
    rgb = np.asarray(pil)
    as_uint8 = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
    widget = explore_sampling(model, [pil, str(path), rgb, as_uint8, as_uint8.float() / 255], cfg=cfg)
    ex = widget.explorer
    for i in range(5):
        ex.controls["image"].value = i
    # The same picture in five forms: the same detections.
    scores = [ex.entry(i)["scores"] for i in range(5)]
    for s in scores[1:]:
        np.testing.assert_allclose(s, scores[0], atol=1e-5)


def test_a_dataset_gives_its_images_and_class_names(tmp_path):
    from ddetr_lib.data.coco import CocoDetection
    from ddetr_lib.data.synthetic import generate

    root = generate(tmp_path / "demo", setting="demo", num_train=1, num_val=2)
    ds = CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json")
    model, cfg = _trained()
    widget = explore_sampling(model, ds, cfg=cfg)
    ex = widget.explorer
    assert len(ex.controls["image"].options) == 2
    names = set(ex.class_names.values())
    assert ex.controls["query"].label.split(" ")[0] in names


def test_refusals_are_clear():
    model, _ = _trained()
    detr = build_model(get_config("toy_detr", num_classes=5))
    with pytest.raises(ValueError, match="model: this is a DETR model"):
        explore_sampling(detr, _demo_images(1))
    with pytest.raises(ValueError, match="model"):
        explore_sampling(torch.nn.Linear(2, 2), _demo_images(1))
    with pytest.raises(ValueError, match=r"images\[1\]: expected a \(3, H, W\) tensor"):
        explore_sampling(model, [_demo_images(1)[0], torch.zeros(64, 64)])
    with pytest.raises(ValueError, match=r"images\[0\]: no image file"):
        explore_sampling(model, ["/nonexistent/picture.jpg"])
    with pytest.raises(ValueError, match=r"images\[0\]: expected"):
        explore_sampling(model, [42])
    with pytest.raises(ValueError, match="images: empty"):
        explore_sampling(model, [])
    with pytest.raises(ValueError, match="stage"):
        explore_sampling(model, _demo_images(1), stage="middle")
