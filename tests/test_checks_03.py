"""The exercise checks of notebook 03 pass the solutions, fail plausible mistakes, and report a stub as TODO."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddetr_lib.course import checks_03
from _solutions import assert_check_behaves, load_solutions


S = load_solutions("03")


# --- plausible wrong answers ---------------------------------------------------------------
def attention_without_scale(q, k, v, mask):  # forgets the 1/sqrt(d)
    scores = (q @ k.transpose(-2, -1)).masked_fill(mask[:, None, :], float("-inf"))
    return scores.softmax(-1) @ v


def attention_zeroed_after_softmax(q, k, v, mask):  # zeroes padded weights but does not renormalise
    w = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
    return w.masked_fill(mask[:, None, :], 0.0) @ v


def attention_mask_inverted(q, k, v, mask):  # True taken as "attend" (torch's attn_mask convention)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask[:, None, :], -1e9)
    return scores.softmax(-1) @ v


def decoder_pos_on_values(layer, tgt, memory, pos, query_pos):  # positions added to the values too
    mha = S.multi_head_attention
    tgt = layer.norm1(tgt + mha(tgt + query_pos, tgt + query_pos, tgt + query_pos, layer.self_attn)[0])
    tgt = layer.norm2(tgt + mha(tgt + query_pos, memory + pos, memory + pos, layer.multihead_attn)[0])
    return layer.norm3(tgt + layer.linear2(F.relu(layer.linear1(tgt))))


def decoder_pre_norm(layer, tgt, memory, pos, query_pos):  # pre-norm instead of DETR's post-norm
    mha = S.multi_head_attention
    x = layer.norm1(tgt)
    tgt = tgt + mha(x + query_pos, x + query_pos, x, layer.self_attn)[0]
    x = layer.norm2(tgt)
    tgt = tgt + mha(x + query_pos, memory + pos, memory, layer.multihead_attn)[0]
    return tgt + layer.linear2(F.relu(layer.linear1(layer.norm3(tgt))))


def decoder_no_query_pos_in_cross(layer, tgt, memory, pos, query_pos):  # query_pos only in self-attention
    mha = S.multi_head_attention
    tgt = layer.norm1(tgt + mha(tgt + query_pos, tgt + query_pos, tgt, layer.self_attn)[0])
    tgt = layer.norm2(tgt + mha(tgt, memory + pos, memory, layer.multihead_attn)[0])
    return layer.norm3(tgt + layer.linear2(F.relu(layer.linear1(tgt))))


def detections_softmax_without_no_object(logits, boxes, sizes):  # drops the no-object logit before the softmax
    return S.detections(torch.cat([logits[..., :-1], torch.full_like(logits[..., -1:], -1e9)], -1), boxes, sizes)


def detections_argmax_over_all(logits, boxes, sizes):  # lets "no object" win as a label
    scores, labels = logits.softmax(-1).max(-1)
    return scores, labels, S.detections(logits, boxes, sizes)[2]


def detections_swapped_size(logits, boxes, sizes):  # treats (h, w) as (w, h)
    return S.detections(logits, boxes, sizes.flip(-1))


CHECKS = [
    (checks_03.check_attention_with_padding, S.attention_with_padding,
     [attention_without_scale, attention_zeroed_after_softmax, attention_mask_inverted]),
    (checks_03.check_decoder_layer, S.decoder_layer_by_hand,
     [decoder_pos_on_values, decoder_pre_norm, decoder_no_query_pos_in_cross]),
    (checks_03.check_detections, S.detections,
     [detections_softmax_without_no_object, detections_argmax_over_all, detections_swapped_size]),
]


@pytest.mark.parametrize("check,solution,wrong", CHECKS, ids=[c[0].__name__ for c in CHECKS])
def test_check_passes_solution_fails_mistakes(check, solution, wrong, capsys):
    assert_check_behaves(check, solution, wrong)
    out = capsys.readouterr().out
    assert "[PASS]" in out and "[FAIL]" in out and "[TODO]" in out
