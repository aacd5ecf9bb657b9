"""Deformable DETR: official parameter names, deformable attention against a naive
implementation, reference points and valid ratios by hand, forward of every variant,
Numba vs PyTorch backend, capture, criterion, post-processing, and (when installed)
equivalence with ``transformers``' independent implementation."""
import math

import pytest
import torch

from ddetr_lib.config import get_config
from ddetr_lib.models import (build_criterion, build_model, build_postprocessor, capture_deformable,
                              set_attention_backend)
from ddetr_lib.models.deformable_detr import PostProcessDeformable
from ddetr_lib.models.deformable_transformer import encoder_proposals, encoder_reference_points, get_valid_ratio
from ddetr_lib.models.ms_deform_attn import MSDeformAttn
from ddetr_lib.utils import nested_tensor_from_tensor_list

from _official_keys import REFERENCE, key_lines, read_reference


VARIANTS = {
    "base": {},
    "refine": {"with_box_refine": True},
    "refine_two_stage": {"with_box_refine": True, "two_stage": True},
}


# ----------------------------------------------------------------------------- parameter names
@pytest.mark.parametrize("name,ref", [("deformable_detr_r50", "base"), ("deformable_detr_r50_refine", "refine"),
                                      ("deformable_detr_r50_refine_two_stage", "refine_two_stage")])
def test_state_dict_matches_official(name, ref):
    model = build_model(get_config(name, pretrained_backbone=False))
    # Same names, shapes AND order as the official checkpoints.
    assert key_lines(model.state_dict()) == read_reference(REFERENCE / f"official_keys_{ref}.txt")


def test_single_scale_builds():
    model = build_model(get_config("deformable_detr_r50_single_scale", pretrained_backbone=False))
    sd = model.state_dict()
    assert sd["transformer.level_embed"].shape == (1, 256)
    assert sd["input_proj.0.0.weight"].shape == (256, 2048, 1, 1)
    assert "input_proj.1.0.weight" not in sd
    assert sd["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape == (8 * 1 * 4 * 2, 256)


def test_heads_shared_or_cloned():
    base = build_model(get_config("toy_deformable_detr"))
    assert all(h is base.class_embed[0] for h in base.class_embed)
    assert base.transformer.decoder.bbox_embed is None
    refine = build_model(get_config("toy_deformable_detr", with_box_refine=True))
    assert refine.class_embed[0] is not refine.class_embed[1]
    assert refine.transformer.decoder.bbox_embed is refine.bbox_embed
    # Initial box bias: only the first head starts with w = h = sigmoid(-2).
    assert torch.equal(refine.bbox_embed[0].layers[-1].bias, torch.tensor([0.0, 0.0, -2.0, -2.0]))
    assert torch.equal(refine.bbox_embed[1].layers[-1].bias, torch.zeros(4))
    bias = -math.log(0.99 / 0.01)
    assert torch.allclose(base.class_embed[0].bias, torch.full((91,), bias))


# ----------------------------------------------------------------------------- MSDeformAttn
def test_initial_sampling_offsets_grid():
    attn = MSDeformAttn(d_model=32, num_feature_levels=3, nheads=8, n_points=2)
    # The 8 heads point at the 8 neighbours, counter-clockwise from +x (y points down
    # in the image, so "counter-clockwise" in (x, y) maths coordinates).
    directions = torch.tensor([[1, 0], [1, 1], [0, 1], [-1, 1], [-1, 0], [-1, -1], [0, -1], [1, -1]],
                              dtype=torch.float32)
    bias = attn.sampling_offsets.bias.view(8, 3, 2, 2)  # (M, L, P, 2)
    for m in range(8):
        for lvl in range(3):
            for k in range(2):
                assert torch.allclose(bias[m, lvl, k], directions[m] * (k + 1), atol=1e-6)
    assert torch.all(attn.sampling_offsets.weight == 0)
    assert torch.all(attn.attention_weights.weight == 0) and torch.all(attn.attention_weights.bias == 0)
    assert torch.all(attn.value_proj.bias == 0) and torch.all(attn.output_proj.bias == 0)
    four = MSDeformAttn(d_model=16, num_feature_levels=1, nheads=4, n_points=1).sampling_offsets.bias.view(4, 2)
    assert torch.allclose(four, torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), atol=1e-6)


def test_sampling_points_at_initialisation_by_hand():
    # At initialisation the offsets are the bias rays (in pixels of each level) and the
    # weights are uniform over the L*P points of a head, whatever the query.
    attn = MSDeformAttn(d_model=16, num_feature_levels=2, nheads=4, n_points=2)
    shapes = torch.tensor([[4, 8], [2, 4]])  # (H_l, W_l)
    query = torch.randn(1, 1, 16)
    ref = torch.tensor([0.5, 0.25]).view(1, 1, 1, 2).expand(1, 1, 2, 2)  # (N, Lq, L, 2)
    locations, weights = attn.sampling_points(query, ref, shapes)
    assert locations.shape == (1, 1, 4, 2, 2, 2) and weights.shape == (1, 1, 4, 2, 2)
    assert torch.allclose(weights, torch.full_like(weights, 1 / 4))
    directions = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)]  # head m, as (dx, dy) in pixels
    for m, (dx, dy) in enumerate(directions):
        for lvl, (h, w) in enumerate(shapes.tolist()):
            for k in range(2):
                expected = torch.tensor([0.5 + dx * (k + 1) / w, 0.25 + dy * (k + 1) / h])
                assert torch.allclose(locations[0, 0, m, lvl, k], expected, atol=1e-6)
    # A box reference: offsets in units of the box half-size / P, around the box centre.
    box = torch.tensor([0.5, 0.25, 0.4, 0.2]).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    locations, _ = attn.sampling_points(query, box, shapes)
    assert torch.allclose(locations[0, 0, 0, 1, 1], torch.tensor([0.5 + 1.0 * 2 / 2 * 0.4 * 0.5, 0.25]), atol=1e-6)
    with pytest.raises(ValueError, match="reference_points"):
        attn.sampling_points(query, ref[..., :1, :], shapes)


def bilinear(feat, x, y):
    """feat (H, W, D) read at pixel coordinates (x, y), zero outside; plain Python."""
    h, w, _ = feat.shape
    x0, y0 = math.floor(x), math.floor(y)
    out = torch.zeros(feat.shape[-1], dtype=feat.dtype)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out = out + wx * wy * feat[yy, xx]
    return out


def naive_ms_deform_attn(attn: MSDeformAttn, query, ref, inp, shapes, padding_mask):
    """Eq. 3 of the paper with explicit loops over batch, query, head, level, point."""
    n, len_q, c = query.shape
    M, L, P = attn.nheads, attn.num_feature_levels, attn.n_points
    d = c // M
    value = inp @ attn.value_proj.weight.T + attn.value_proj.bias  # (N, S, C)
    value = value * (~padding_mask)[..., None]
    off_all = query @ attn.sampling_offsets.weight.T + attn.sampling_offsets.bias  # (N, Lq, M*L*P*2)
    logit_all = query @ attn.attention_weights.weight.T + attn.attention_weights.bias  # (N, Lq, M*L*P)
    out = torch.zeros(n, len_q, c, dtype=query.dtype)
    for b in range(n):
        for q in range(len_q):
            for m in range(M):
                logits = torch.stack([logit_all[b, q, (m * L + lvl) * P + k] for lvl in range(L) for k in range(P)])
                a = torch.exp(logits - logits.max())
                a = a / a.sum()
                start = 0
                for lvl, (h, w) in enumerate(shapes):
                    feat = value[b, start:start + h * w, m * d:(m + 1) * d].reshape(h, w, d)
                    for k in range(P):
                        row = ((m * L + lvl) * P + k) * 2
                        dx, dy = off_all[b, q, row], off_all[b, q, row + 1]
                        r = ref[b, q, lvl]
                        if r.numel() == 2:
                            lx, ly = r[0] + dx / w, r[1] + dy / h
                        else:
                            lx, ly = r[0] + dx / P * r[2] * 0.5, r[1] + dy / P * r[3] * 0.5
                        px, py = float(lx) * w - 0.5, float(ly) * h - 0.5
                        out[b, q, m * d:(m + 1) * d] += a[lvl * P + k] * bilinear(feat, px, py)
                    start += h * w
    return out @ attn.output_proj.weight.T + attn.output_proj.bias


@pytest.mark.parametrize("ref_dim", [2, 4])
@pytest.mark.parametrize("backend", ["torch", "numba_cpu"])
def test_ms_deform_attn_against_naive(ref_dim, backend):
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (2, 3)]
    n, len_q, c, M, L, P = 2, 3, 8, 2, 2, 3
    attn = MSDeformAttn(c, L, M, P, backend=backend).double()
    with torch.no_grad():  # make offsets and weights depend on the query
        attn.sampling_offsets.weight.normal_(0, 0.5, generator=g)
        attn.attention_weights.weight.normal_(0, 1.0, generator=g)
    s = sum(h * w for h, w in shapes)
    query = torch.randn(n, len_q, c, generator=g, dtype=torch.float64)
    inp = torch.randn(n, s, c, generator=g, dtype=torch.float64)
    ref = torch.rand(n, len_q, L, ref_dim, generator=g, dtype=torch.float64)
    if ref_dim == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    mask = torch.zeros(n, s, dtype=torch.bool)
    mask[1, 2:4] = True  # some padding in level 0 of image 1
    mask[1, 12 + 4:] = True
    spatial = torch.tensor(shapes, dtype=torch.long)
    start = torch.tensor([0, 12], dtype=torch.long)
    with torch.no_grad():
        out = attn(query, ref, inp, spatial, start, mask)
        expected = naive_ms_deform_attn(attn, query, ref, inp, shapes, mask)
    assert out.shape == (n, len_q, c)
    assert torch.allclose(out, expected, atol=1e-10), (out - expected).abs().max()


def test_ms_deform_attn_rejects_bad_reference_points():
    attn = MSDeformAttn(8, 2, 2, 2)
    spatial = torch.tensor([[2, 2], [1, 1]])
    start = torch.tensor([0, 4])
    with pytest.raises(ValueError, match="reference_points"):
        attn(torch.rand(1, 3, 8), torch.rand(1, 3, 2, 3), torch.rand(1, 5, 8), spatial, start)
    with pytest.raises(ValueError, match="reference_points"):
        attn(torch.rand(1, 3, 8), torch.rand(1, 3, 1, 2), torch.rand(1, 5, 8), spatial, start)


# ----------------------------------------------------------------------------- reference points
def test_valid_ratio_by_hand():
    mask = torch.zeros(2, 4, 6, dtype=torch.bool)
    mask[1, 3:, :] = True  # image 1: 3 valid rows of 4
    mask[1, :, 2:] = True  # and 2 valid columns of 6
    assert torch.allclose(get_valid_ratio(mask), torch.tensor([[1.0, 1.0], [2 / 6, 3 / 4]]))


def test_encoder_reference_points_by_hand():
    # Two levels: 2x4 and 1x2. Image 1 is valid on the left half of level 0 (2x2)
    # and on the left half of level 1 (1x1).
    shapes = torch.tensor([[2, 4], [1, 2]])
    valid = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 1.0], [0.5, 1.0]]])  # (B, L, 2) as (w, h)
    ref = encoder_reference_points(shapes, valid)
    assert ref.shape == (2, 8 + 2, 2, 2)
    # Image 0 (no padding): pixel centres over the full map, the same on every level.
    assert torch.allclose(ref[0, 1, 0], torch.tensor([1.5 / 4, 0.5 / 2]))
    assert torch.allclose(ref[0, 9, 1], torch.tensor([1.5 / 2, 0.5]))
    # Image 1, level-0 pixel (row 0, col 1): (1.5 / 2 valid cols, 0.5 / 2 rows) = (0.75, 0.25)
    # in the valid image, times the valid ratio (0.5, 1) of each level.
    assert torch.allclose(ref[1, 1, 0], torch.tensor([0.375, 0.25]))
    assert torch.allclose(ref[1, 1, 1], torch.tensor([0.375, 0.25]))
    # Image 1, level-1 pixel (0, 0): (0.5 / 1, 0.5 / 1) -> (0.25, 0.5) on each level.
    assert torch.allclose(ref[1, 8, 0], torch.tensor([0.25, 0.5]))
    # A padded pixel (level 0, row 1, col 3) lies outside the valid image: x > 1 before scaling.
    assert torch.allclose(ref[1, 7, 0], torch.tensor([3.5 / 2 * 0.5, 1.5 / 2]))


def test_encoder_proposals_by_hand():
    shapes = torch.tensor([[2, 2], [1, 1]])
    mask = torch.zeros(1, 5, dtype=torch.bool)
    mask[0, 1] = True  # level 0, pixel (0, 1) is padding... so the valid width is
    mask[0, 3] = True  # 1 column (pixel (1, 1) too)
    proposals, valid = encoder_proposals(mask, shapes)
    expected = torch.tensor([0.5, 0.25, 0.05, 0.05])  # pixel (0, 0): centre (0.5/1, 0.5/2)
    assert torch.allclose(proposals[0, 0].sigmoid(), expected, atol=1e-6)
    assert torch.isinf(proposals[0, 1]).all() and not valid[0, 1]
    assert valid[0, 0] and valid[0, 2]
    assert torch.allclose(proposals[0, 4].sigmoid(), torch.tensor([0.5, 0.5, 0.1, 0.1]), atol=1e-6)


# ----------------------------------------------------------------------------- full model
def padded_batch():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 72, generator=g)]


TARGETS = [
    {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.4, 0.1, 0.1]])},
    {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])},
]


@pytest.fixture(scope="module", params=list(VARIANTS) + ["single_scale"])
def toy_variant(request):
    overrides = {"num_feature_levels": 1} if request.param == "single_scale" else VARIANTS[request.param]
    cfg = get_config("toy_deformable_detr", **overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # spread the sampling so the backends are compared on real work
        for m in model.modules():
            if isinstance(m, MSDeformAttn):
                m.sampling_offsets.weight.normal_(0, 0.1)
                m.attention_weights.weight.normal_(0, 0.1)
        for head in model.bbox_embed:  # boxes that depend on the decoder output, not only the references
            head.layers[-1].weight.normal_(0, 0.1)
    return request.param, cfg, model


def test_forward_shapes_and_backends(toy_variant):
    name, cfg, model = toy_variant
    model.eval()
    with torch.no_grad():
        set_attention_backend(model, "torch")
        out_torch = model(padded_batch())
        set_attention_backend(model, "numba_cpu")
        out = model(padded_batch())
        set_attention_backend(model, "auto")
    q, c = cfg.num_queries, cfg.num_classes
    assert out["pred_logits"].shape == (2, q, c) and out["pred_boxes"].shape == (2, q, 4)
    assert (out["pred_boxes"] >= 0).all() and (out["pred_boxes"] <= 1).all()
    assert len(out["aux_outputs"]) == cfg.dec_layers - 1
    if cfg.two_stage:
        s = out["enc_outputs"]["pred_logits"].shape[1]
        assert out["enc_outputs"]["pred_logits"].shape == (2, s, c)
        assert out["enc_outputs"]["pred_boxes"].shape == (2, s, 4)
    else:
        assert "enc_outputs" not in out
    for key in ("pred_logits", "pred_boxes"):
        assert torch.allclose(out[key], out_torch[key], atol=1e-4), (name, key)
        for a, b in zip(out["aux_outputs"], out_torch["aux_outputs"]):
            assert torch.allclose(a[key], b[key], atol=1e-4)


def test_accepts_tensor_and_nested(toy_variant):
    _, _, model = toy_variant
    model.eval()
    images = padded_batch()
    with torch.no_grad():
        a = model(images)
        b = model(nested_tensor_from_tensor_list(images))
        c = model(torch.stack([images[0][:, :, :72], images[1][:, :96, :]]))
    assert torch.equal(a["pred_boxes"], b["pred_boxes"])
    assert c["pred_boxes"].shape == (2, model.num_queries, 4)


def test_capture(toy_variant):
    name, cfg, model = toy_variant
    model.eval()
    with torch.no_grad():
        plain = model(padded_batch())
        with capture_deformable(model) as rec:
            captured = model(padded_batch())
        after = model(padded_batch())
    for key in ("pred_logits", "pred_boxes"):
        assert torch.equal(plain[key], captured[key]) and torch.equal(plain[key], after[key])
    L, M, P = cfg.num_feature_levels, cfg.nheads, cfg.enc_n_points
    s = int(rec["spatial_shapes"].prod(1).sum())
    assert rec["spatial_shapes"].shape == (L, 2) and len(rec["masks"]) == L
    assert len(rec["encoder"]) == cfg.enc_layers and len(rec["decoder"]) == cfg.dec_layers
    enc = rec["encoder"][0]
    assert enc["sampling_locations"].shape == (2, s, M, L, P, 2)
    assert enc["attention_weights"].shape == (2, s, M, L, P)
    assert torch.allclose(enc["attention_weights"].sum((-1, -2)), torch.ones(2, s, M))
    assert enc["reference_points"].shape == (2, s, L, 2)
    dec = rec["decoder"][-1]
    assert dec["sampling_locations"].shape == (2, cfg.num_queries, M, L, cfg.dec_n_points, 2)
    ref_dim = 4 if (cfg.with_box_refine or cfg.two_stage) else 2
    assert dec["reference_points"].shape == (2, cfg.num_queries, L, ref_dim)
    assert len(rec["decoder_reference_boxes"]) == cfg.dec_layers
    if cfg.two_stage:
        assert rec["proposals"]["boxes"].shape == (2, s, 4)
        assert rec["proposals"]["topk_indices"].shape == (2, cfg.num_queries)
    else:
        assert rec["proposals"] is None
    # Hooks are gone after the block.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_criterion_and_gradients(toy_variant):
    name, cfg, model = toy_variant
    model.train()
    criterion = build_criterion(cfg)
    model.zero_grad()
    losses = criterion(model(padded_batch()), TARGETS)
    expected = {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"}
    if cfg.two_stage:
        expected |= {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"}
    assert expected <= set(losses) and set(criterion.weight_dict) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    loss = sum(losses[k] * w for k, w in criterion.weight_dict.items())
    loss.backward()
    grad = model.backbone[0].body.layer2[0].conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    offsets = model.transformer.encoder.layers[0].self_attn.sampling_offsets.weight.grad
    assert offsets is not None and offsets.abs().sum() > 0


def test_enc_loss_is_class_agnostic():
    cfg = get_config("toy_deformable_detr", with_box_refine=True, two_stage=True)
    criterion = build_criterion(cfg)
    g = torch.Generator().manual_seed(0)
    enc = {"pred_logits": torch.randn(2, 30, 91, generator=g), "pred_boxes": torch.rand(2, 30, 4, generator=g)}
    out = {"pred_logits": torch.randn(2, 5, 91, generator=g), "pred_boxes": torch.rand(2, 5, 4, generator=g),
           "enc_outputs": enc}
    losses = criterion(out, TARGETS)
    zero_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in TARGETS]
    direct = criterion(enc, zero_targets)
    for k in ("loss_ce", "loss_bbox", "loss_giou"):
        assert torch.allclose(losses[f"{k}_enc"], direct[k])


# ----------------------------------------------------------------------------- post-processing
def test_postprocess_topk_by_hand():
    logits = torch.tensor([[[0.0, 2.0, -1.0], [3.0, -2.0, 1.0]]])  # (1, Q=2, C=3)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    out = PostProcessDeformable(num_select=3)({"pred_logits": logits, "pred_boxes": boxes},
                                              torch.tensor([[10, 20]]))[0]
    # The best (query, class) pairs: (1, 0) logit 3, (0, 1) logit 2, (1, 2) logit 1.
    assert torch.allclose(out["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])))
    assert out["labels"].tolist() == [0, 1, 2]
    q1 = [0.0 * 20, 0.5 * 10, 0.5 * 20, 1.0 * 10]  # query 1 in xyxy pixels (w=20, h=10)
    q0 = [0.4 * 20, 0.3 * 10, 0.6 * 20, 0.7 * 10]
    assert torch.allclose(out["boxes"], torch.tensor([q1, q0, q1]))
    assert isinstance(build_postprocessor(get_config("toy_deformable_detr")), PostProcessDeformable)
    assert build_postprocessor(get_config("toy_deformable_detr", num_select=7)).num_select == 7


# ----------------------------------------------------------------------------- transformers oracle
def hf_to_ours(hf_state: dict) -> dict:
    """Rename ``transformers``' DeformableDetrForObjectDetection weights to the official names."""
    out = {}
    for k, v in hf_state.items():
        n = k
        if n.startswith("model.backbone.model."):
            n = "backbone.0.body." + n[len("model.backbone.model."):]
        elif n == "model.query_position_embeddings.weight":
            n = "query_embed.weight"
        elif n.startswith("model."):
            n = "transformer." + n[len("model."):]
            if n.startswith("transformer.input_proj."):
                n = n[len("transformer."):]
        if ".encoder.layers." in n:
            n = (n.replace("self_attn_layer_norm", "norm1").replace("final_layer_norm", "norm2")
                 .replace("mlp.fc1", "linear1").replace("mlp.fc2", "linear2"))
        if ".decoder.layers." in n:
            n = (n.replace("self_attn_layer_norm", "norm2").replace("encoder_attn_layer_norm", "norm1")
                 .replace("final_layer_norm", "norm3").replace("encoder_attn.", "cross_attn.")
                 .replace("mlp.fc1", "linear1").replace("mlp.fc2", "linear2")
                 .replace("self_attn.o_proj", "self_attn.out_proj"))
        out[n] = v
    # nn.MultiheadAttention keeps q, k, v projections stacked in one matrix.
    for k in [k for k in out if k.endswith("self_attn.q_proj.weight")]:
        base = k[: -len("q_proj.weight")]
        for kind in ("weight", "bias"):
            out[f"{base}in_proj_{kind}"] = torch.cat([out.pop(f"{base}{p}_proj.{kind}") for p in "qkv"])
    return out


@pytest.mark.parametrize("variant", list(VARIANTS) + ["single_scale"])
def test_equivalent_to_transformers(variant):
    transformers = pytest.importorskip("transformers", reason="transformers is a test-only oracle")
    pytest.importorskip("timm", reason="the oracle's ResNet-50 comes from timm")
    overrides = dict(VARIANTS.get(variant, {}))
    levels = 1 if variant == "single_scale" else 4
    hf_cfg = transformers.DeformableDetrConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=20, num_feature_levels=levels,
        two_stage=overrides.get("two_stage", False), with_box_refine=overrides.get("with_box_refine", False),
        two_stage_num_proposals=20, use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False,
        num_labels=91, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    torch.manual_seed(0)
    hf = transformers.DeformableDetrForObjectDetection(hf_cfg).eval()
    # Perturb every weight so that nothing is at its (often zero) initial value.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for k, v in hf.state_dict().items():
            if not v.is_floating_point():
                continue
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:
                v.add_(torch.randn(v.shape, generator=g) * 0.05)
    cfg = get_config("deformable_detr_r50", pretrained_backbone=False, hidden_dim=64, nheads=4, enc_layers=2,
                     dec_layers=2, dim_feedforward=128, num_queries=20, num_feature_levels=levels, dropout=0.0,
                     **overrides)
    ours = build_model(cfg).eval()
    ours.load_state_dict(hf_to_ours(hf.state_dict()), strict=True)

    samples = nested_tensor_from_tensor_list(padded_batch())
    with torch.no_grad():
        ref = hf(pixel_values=samples.tensors, pixel_mask=(~samples.mask).long())
        set_attention_backend(ours, "torch")
        out = ours(samples)
    print(f"{variant}: max |logits diff| {(out['pred_logits'] - ref.logits).abs().max():.2e}, "
          f"max |boxes diff| {(out['pred_boxes'] - ref.pred_boxes).abs().max():.2e}, "
          f"logits std {ref.logits.std():.2f}, boxes std {ref.pred_boxes.std():.3f}")
    assert torch.allclose(out["pred_logits"], ref.logits, atol=1e-4), (out["pred_logits"] - ref.logits).abs().max()
    assert torch.allclose(out["pred_boxes"], ref.pred_boxes, atol=1e-4), \
        (out["pred_boxes"] - ref.pred_boxes).abs().max()
