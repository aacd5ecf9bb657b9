"""DETR model: official parameter names, backbone, position encoding, forward, attention
capture, post-processing and the official-checkpoint loader."""
import argparse
import math
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ddetr_lib.config import get_config
from ddetr_lib.models import build_criterion, build_model, build_postprocessor, capture_attention
from ddetr_lib.models.backbone import build_backbone
from ddetr_lib.models.checkpoint import load_official_checkpoint
from ddetr_lib.models.position_encoding import PositionEmbeddingLearned, PositionEmbeddingSine
from ddetr_lib.utils import NestedTensor, nested_tensor_from_tensor_list

from _official_keys import REFERENCE, key_lines, read_reference

SHARED_REFERENCE = Path(__file__).parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="module")
def detr_r50():
    torch.manual_seed(0)
    return build_model(get_config("detr_r50", pretrained_backbone=False, dropout=0.0))


@pytest.fixture(scope="module")
def toy_cfg():
    return get_config("toy_detr", num_classes=5)


@pytest.fixture
def toy_model(toy_cfg):
    torch.manual_seed(0)
    return build_model(toy_cfg)


@pytest.fixture
def padded_batch():
    g = torch.Generator().manual_seed(0)
    return [torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 80, generator=g)]


# ----------------------------------------------------------------------------- official names
def test_detr_r50_state_dict_equals_official_keys(detr_r50):
    expected = read_reference(REFERENCE / "official_keys_detr_r50.txt")
    ours = key_lines(detr_r50.state_dict())
    assert sorted(set(ours) - set(expected)) == [] and sorted(set(expected) - set(ours)) == []
    assert ours == expected  # same order too
    assert not any("num_batches_tracked" in k for k in detr_r50.state_dict())


def test_reference_copies_match_shared():
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"{SHARED_REFERENCE} not present (only in the team workspace); tests use the copies in tests/reference")
    for path in sorted(SHARED_REFERENCE.glob("official_keys_*.txt")):
        assert read_reference(path) == read_reference(REFERENCE / path.name), path.name


def test_deformable_builds():
    # (Was test_deformable_not_yet; the model family now exists: see tests/test_deformable.py.)
    model = build_model(get_config("toy_deformable_detr"))
    assert type(model).__name__ == "DeformableDETR"


# ----------------------------------------------------------------------------- backbone
def test_r50_backbone_frozen_batchnorm_and_frozen_stages(detr_r50):
    body = detr_r50.backbone[0].body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    for name, p in body.named_parameters():
        trainable = name.startswith(("layer2", "layer3", "layer4"))
        assert p.requires_grad == trainable, name
    assert detr_r50.backbone.num_channels == [2048] and detr_r50.backbone.strides == [32]
    assert all(p.requires_grad for n, p in detr_r50.named_parameters() if not n.startswith("backbone"))


def test_toy_backbone_trains_everything(toy_model, toy_cfg):
    body = toy_model.backbone[0].body
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in body.modules()) > 0
    assert all(p.requires_grad for p in toy_model.parameters())
    assert toy_model.backbone.num_channels == [toy_cfg.toy_widths[-1]]


def test_train_backbone_false_freezes_the_whole_backbone():
    model = build_model(get_config("toy_detr", train_backbone=False))
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("backbone"))


@pytest.mark.parametrize("name, channels", [("toy", [32, 64, 128]), ("resnet18", [128, 256, 512])])
def test_intermediate_layers_strides_and_channels(name, channels):
    cfg = get_config("toy_detr", backbone=name, toy_widths=(16, 32, 64, 128), dilation=False,
                     frozen_batchnorm=name != "toy")
    joiner = build_backbone(cfg, return_interm_layers=True)
    assert joiner.strides == [8, 16, 32] and joiner.num_channels == channels
    x = nested_tensor_from_tensor_list([torch.rand(3, 64, 96), torch.rand(3, 32, 64)])
    features, pos = joiner(x)
    assert len(features) == len(pos) == 3
    for f, p, s, c in zip(features, pos, joiner.strides, channels):
        assert f.tensors.shape == (2, c, 64 // s, 96 // s)
        assert f.mask.shape == (2, 64 // s, 96 // s) and f.mask.dtype == torch.bool
        assert p.shape == (2, cfg.hidden_dim, 64 // s, 96 // s)
    # Image 1 is 32x64 in a 64x96 canvas: at stride 32 its valid part is 1x2 of 2x3.
    expected = torch.tensor([[False, False, True], [True, True, True]])
    assert torch.equal(features[2].mask[1], expected)
    assert not features[2].mask[0].any()


def test_r50_intermediate_channels():
    joiner = build_backbone(get_config("detr_r50", pretrained_backbone=False), return_interm_layers=True)
    assert joiner.num_channels == [512, 1024, 2048] and joiner.strides == [8, 16, 32]


# ----------------------------------------------------------------------------- position encoding
def sine_ref(y, x, h_valid, w_valid, num_pos_feats, temperature=10000.0):
    """The encoding of pixel (y, x) (0-based) written out with math.sin / math.cos."""
    scale, eps = 2 * math.pi, 1e-6
    ye = (y + 1) / (h_valid + eps) * scale
    xe = (x + 1) / (w_valid + eps) * scale
    out = []
    for v in (ye, xe):  # y first, then x
        for k in range(num_pos_feats):
            d = temperature ** (2 * (k // 2) / num_pos_feats)
            out.append(math.sin(v / d) if k % 2 == 0 else math.cos(v / d))
    return out


def test_sine_position_encoding_against_formula():
    f = 6
    enc = PositionEmbeddingSine(num_pos_feats=f)
    mask = torch.ones(2, 4, 5, dtype=torch.bool)
    mask[0] = False  # image 0 fills the canvas
    mask[1, :3, :2] = False  # image 1 is 3 x 2
    pos = enc(NestedTensor(torch.zeros(2, 3, 4, 5), mask))
    assert pos.shape == (2, 2 * f, 4, 5)
    for y, x in [(0, 0), (1, 3), (3, 4), (2, 2)]:
        torch.testing.assert_close(pos[0, :, y, x], torch.tensor(sine_ref(y, x, 4, 5, f)), atol=1e-5, rtol=0)
    for y, x in [(0, 0), (2, 1), (1, 0)]:  # inside image 1: normalised by ITS size (3, 2)
        torch.testing.assert_close(pos[1, :, y, x], torch.tensor(sine_ref(y, x, 3, 2, f)), atol=1e-5, rtol=0)


def test_sine_position_encoding_ignores_padding():
    enc = PositionEmbeddingSine(num_pos_feats=8)
    alone = enc(NestedTensor(torch.zeros(1, 3, 3, 2), torch.zeros(1, 3, 2, dtype=torch.bool)))
    mask = torch.ones(1, 6, 7, dtype=torch.bool)
    mask[0, :3, :2] = False
    padded = enc(NestedTensor(torch.zeros(1, 3, 6, 7), mask))
    torch.testing.assert_close(padded[:, :, :3, :2], alone)


def test_learned_position_encoding_layout():
    enc = PositionEmbeddingLearned(num_pos_feats=4)
    assert enc.row_embed.weight.shape == (50, 4) and enc.col_embed.weight.shape == (50, 4)
    pos = enc(NestedTensor(torch.zeros(2, 3, 3, 5), torch.zeros(2, 3, 5, dtype=torch.bool)))
    assert pos.shape == (2, 8, 3, 5)
    # Official layout: column (x) embedding first, then row (y).
    torch.testing.assert_close(pos[1, :4, 2, 3], enc.col_embed.weight[3])
    torch.testing.assert_close(pos[1, 4:, 2, 3], enc.row_embed.weight[2])


# ----------------------------------------------------------------------------- transformer layers
def mha_ref(attn, q_in, k_in, v_in, key_padding_mask=None):
    """Multi-head attention written out: per head softmax(q k^T / sqrt(d)) v, then out_proj."""
    c = q_in.shape[-1]
    heads = attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(c)
    bq, bk, bv = attn.in_proj_bias.split(c)
    q, k, v = q_in @ wq.T + bq, k_in @ wk.T + bk, v_in @ wv.T + bv  # (B, L, C)
    b, lq, lk, d = q.shape[0], q.shape[1], k.shape[1], c // heads
    q = q.view(b, lq, heads, d).transpose(1, 2)
    k = k.view(b, lk, heads, d).transpose(1, 2)
    v = v.view(b, lk, heads, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, heads, Lq, Lk)
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, c)
    return attn.out_proj(out)


def test_encoder_and_decoder_layers_against_formula():
    from ddetr_lib.models.transformer import TransformerDecoderLayer, TransformerEncoderLayer

    torch.manual_seed(0)
    b, hw, q, c = 2, 6, 3, 8
    src, pos = torch.randn(b, hw, c), torch.randn(b, hw, c)
    tgt, query_pos = torch.randn(b, q, c), torch.randn(b, q, c)
    mask = torch.zeros(b, hw, dtype=torch.bool)
    mask[1, 4:] = True

    enc = TransformerEncoderLayer(c, 2, 16, dropout=0.0).eval()
    # post-norm: positions go into queries and keys only, never into the values
    x = enc.norm1(src + mha_ref(enc.self_attn, src + pos, src + pos, src, mask))
    expected = enc.norm2(x + enc.linear2(torch.relu(enc.linear1(x))))
    torch.testing.assert_close(enc(src, src_key_padding_mask=mask, pos=pos), expected, rtol=1e-5, atol=1e-5)

    dec = TransformerDecoderLayer(c, 2, 16, dropout=0.0).eval()
    t = dec.norm1(tgt + mha_ref(dec.self_attn, tgt + query_pos, tgt + query_pos, tgt))
    t = dec.norm2(t + mha_ref(dec.multihead_attn, t + query_pos, src + pos, src, mask))
    expected = dec.norm3(t + dec.linear2(torch.relu(dec.linear1(t))))
    out = dec(tgt, src, memory_key_padding_mask=mask, pos=pos, query_pos=query_pos)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)

    pre = TransformerEncoderLayer(c, 2, 16, dropout=0.0, pre_norm=True).eval()
    n = pre.norm1(src)
    x = src + mha_ref(pre.self_attn, n + pos, n + pos, n, mask)
    expected = x + pre.linear2(torch.relu(pre.linear1(pre.norm2(x))))
    torch.testing.assert_close(pre(src, src_key_padding_mask=mask, pos=pos), expected, rtol=1e-5, atol=1e-5)


def test_transformer_decoder_starts_from_zeros_and_returns_normed_layers():
    from ddetr_lib.models.transformer import Transformer

    torch.manual_seed(0)
    tr = Transformer(d_model=8, nheads=2, num_encoder_layers=1, num_decoder_layers=2, dim_feedforward=16,
                     dropout=0.0, return_intermediate_dec=True).eval()
    src, pos = torch.randn(2, 8, 2, 3), torch.randn(2, 8, 2, 3)
    mask = torch.zeros(2, 2, 3, dtype=torch.bool)
    mask[0, :, 2] = True
    query = torch.randn(4, 8)
    hs, memory = tr(src, mask, query, pos)
    assert hs.shape == (2, 2, 4, 8) and memory.shape == (2, 8, 2, 3)
    seq, pseq, m = src.flatten(2).transpose(1, 2), pos.flatten(2).transpose(1, 2), mask.flatten(1)
    mem = tr.encoder.layers[0](seq, src_key_padding_mask=m, pos=pseq)
    torch.testing.assert_close(memory, mem.transpose(1, 2).reshape(2, 8, 2, 3))
    qpos = query.expand(2, -1, -1)
    out = torch.zeros(2, 4, 8)
    for i, layer in enumerate(tr.decoder.layers):
        out = layer(out, mem, memory_key_padding_mask=m, pos=pseq, query_pos=qpos)
        torch.testing.assert_close(hs[i], tr.decoder.norm(out))
    # xavier-uniform init of every matrix: |w| <= sqrt(6 / (fan_in + fan_out))
    w = tr.encoder.layers[0].linear1.weight
    assert w.abs().max() <= math.sqrt(6 / (8 + 16))


# ----------------------------------------------------------------------------- forward
def test_toy_forward_on_padded_batch(toy_model, toy_cfg, padded_batch):
    toy_model.eval()
    with torch.no_grad():
        out = toy_model(padded_batch)
        out_nested = toy_model(nested_tensor_from_tensor_list(padded_batch))
    q, c = toy_cfg.num_queries, toy_cfg.num_classes
    assert out["pred_logits"].shape == (2, q, c + 1)
    assert out["pred_boxes"].shape == (2, q, 4)
    assert (out["pred_boxes"] >= 0).all() and (out["pred_boxes"] <= 1).all()
    assert len(out["aux_outputs"]) == toy_cfg.dec_layers - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, q, c + 1) and aux["pred_boxes"].shape == (2, q, 4)
    for k in ("pred_logits", "pred_boxes"):
        assert torch.equal(out[k], out_nested[k])
    # A (B, 3, H, W) tensor is a batch without padding.
    same_size = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    with torch.no_grad():
        torch.testing.assert_close(toy_model(torch.stack(same_size))["pred_logits"], toy_model(same_size)["pred_logits"])


def test_toy_training_step_reaches_every_parameter(toy_model, toy_cfg, padded_batch):
    toy_model.train()
    criterion = build_criterion(toy_cfg)
    targets = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.2], [0.2, 0.3, 0.1, 0.1]])},
               {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.6, 0.4, 0.5, 0.5]])}]
    losses = criterion(toy_model(padded_batch), targets)
    loss = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
    loss.backward()
    missing = [n for n, p in toy_model.named_parameters() if p.grad is None]
    assert missing == []


def test_r50_frozen_batchnorm_same_in_train_and_eval(detr_r50):
    x = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    bn = detr_r50.backbone[0].body.bn1
    before = bn.running_mean.clone()
    with torch.no_grad():
        detr_r50.train()
        out_train = detr_r50(x)
        detr_r50.eval()
        out_eval = detr_r50(x)
    assert torch.equal(bn.running_mean, before)  # frozen statistics never move
    assert out_eval["pred_logits"].shape == (2, 100, 92)
    assert len(out_eval["aux_outputs"]) == 5
    # dropout is 0 in this fixture and FrozenBatchNorm ignores the mode: same outputs.
    torch.testing.assert_close(out_train["pred_boxes"], out_eval["pred_boxes"])


@pytest.mark.parametrize("overrides", [{"pre_norm": True}, {"position_embedding": "learned"}, {"aux_loss": False}])
def test_variants_forward(overrides):
    model = build_model(get_config("toy_detr", **overrides)).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 64, 96)])
    assert out["pred_boxes"].shape == (1, 20, 4)
    assert ("aux_outputs" in out) == model.aux_loss
    keys = model.state_dict().keys()
    assert ("transformer.encoder.norm.weight" in keys) == overrides.get("pre_norm", False)


# ----------------------------------------------------------------------------- attention capture
def test_capture_attention_shapes_and_identical_outputs(toy_model, toy_cfg, padded_batch):
    toy_model.eval()
    with torch.no_grad():
        plain = toy_model(padded_batch)
        with capture_attention(toy_model) as maps:
            captured = toy_model(padded_batch)
    for k in ("pred_logits", "pred_boxes"):
        # need_weights=True takes the explicit softmax(QK^T)V path instead of the fused one:
        # the same computation, up to float32 rounding.
        torch.testing.assert_close(captured[k], plain[k], rtol=1e-5, atol=1e-5)
    h, w = maps["shape"]
    stride = 16 if toy_cfg.dilation else 32  # a dilated last stage keeps stride 16
    assert (h, w) == (128 // stride, 128 // stride)
    assert maps["mask"].shape == (2, h, w)
    heads, q = toy_cfg.nheads, toy_cfg.num_queries
    assert len(maps["encoder"]) == toy_cfg.enc_layers
    assert len(maps["decoder_self"]) == len(maps["decoder_cross"]) == toy_cfg.dec_layers
    for a in maps["encoder"]:
        assert a.shape == (2, heads, h * w, h * w)
    for a in maps["decoder_self"]:
        assert a.shape == (2, heads, q, q)
    for a in maps["decoder_cross"]:
        assert a.shape == (2, heads, q, h * w)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, heads, q))
        # padded pixels receive no attention
        pad = maps["mask"].flatten(1)  # (B, HW)
        assert a.masked_select(pad[:, None, None, :].expand_as(a)).abs().max() == 0
    assert maps["mask"][1].any() and maps["mask"][0].any()  # both images are padded somewhere


def test_no_attention_weights_unless_captured(toy_model):
    calls = []

    def spy(module, args, kwargs):
        calls.append(kwargs.get("need_weights"))

    handles = [m.register_forward_pre_hook(spy, with_kwargs=True)
               for m in toy_model.modules() if isinstance(m, nn.MultiheadAttention)]
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        toy_model(x)
        n = len(calls)
        assert n == 6 and set(calls) == {False}  # 2 encoder + 2x2 decoder attentions
        with capture_attention(toy_model):
            toy_model(x)
        assert set(calls[n:]) == {True}
        toy_model(x)  # restored afterwards
    assert set(calls[2 * n:]) == {False}
    for h in handles:
        h.remove()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in toy_model.modules())


# ----------------------------------------------------------------------------- post-processing
def test_postprocess_by_hand():
    post = build_postprocessor(get_config("toy_detr", num_classes=2))
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]])  # (B=1, Q=2, C+1=3)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.5, 0.5, 1.0]]])
    (res,) = post({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))
    z0 = math.exp(1) + math.exp(2) + 1
    z1 = 2 + math.exp(3)
    torch.testing.assert_close(res["scores"], torch.tensor([math.exp(2) / z0, 1 / z1]))
    assert res["labels"].tolist() == [1, 0]  # query 1: "no object" is ignored, tie -> first class
    torch.testing.assert_close(res["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 0.0, 100.0, 100.0]]))


# ----------------------------------------------------------------------------- checkpoints
def save_fake_official(path, model):
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1e-4, backbone="resnet50"), "epoch": 3},
               path)


def test_load_official_checkpoint_strict(tmp_path, toy_cfg):
    source = build_model(toy_cfg)
    save_fake_official(tmp_path / "ckpt.pth", source)
    target = build_model(toy_cfg)
    missing, unexpected = load_official_checkpoint(target, tmp_path / "ckpt.pth")
    assert missing == [] and unexpected == []
    for k, v in source.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k


def test_load_official_checkpoint_num_classes_mismatch(tmp_path, toy_cfg):
    source = build_model(toy_cfg)  # 5 classes -> 6 logits
    save_fake_official(tmp_path / "ckpt.pth", source)
    target = build_model(toy_cfg.replace(num_classes=3))
    with pytest.raises(ValueError, match=r"(?s)6 outputs.*4.*num_classes=3.*reinit_class_head=True"):
        load_official_checkpoint(target, str(tmp_path / "ckpt.pth"))
    head_before = target.class_embed.weight.clone()
    missing, unexpected = load_official_checkpoint(target, tmp_path / "ckpt.pth", reinit_class_head=True)
    assert missing == [] and unexpected == []
    assert torch.equal(target.class_embed.weight, head_before)
    sd = target.state_dict()
    for k, v in source.state_dict().items():
        if "class_embed" not in k:
            assert torch.equal(sd[k], v), k


def test_reinit_drops_every_class_head(tmp_path):
    """Deformable DETR names: class_embed.{i}.* and transformer.decoder.class_embed.{i}.*"""
    class Fake(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.class_embed = nn.ModuleList(nn.Linear(4, c) for _ in range(2))
            self.transformer = nn.Module()
            self.transformer.decoder = nn.Module()
            self.transformer.decoder.class_embed = nn.ModuleList(nn.Linear(4, c) for _ in range(2))
            self.bbox = nn.Linear(4, 4)

    source, target = Fake(91), Fake(7)
    with pytest.raises(ValueError, match="91 outputs"):
        load_official_checkpoint(target, {"model": source.state_dict()})
    load_official_checkpoint(target, {"model": source.state_dict()}, reinit_class_head=True)
    assert torch.equal(target.bbox.weight, source.bbox.weight)


class NotAllowed:
    def __init__(self):
        self.x = 1


def test_checkpoint_with_arbitrary_class_is_refused(tmp_path, toy_cfg):
    model = build_model(toy_cfg)
    torch.save({"model": model.state_dict(), "args": NotAllowed()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        load_official_checkpoint(model, tmp_path / "evil.pth")
