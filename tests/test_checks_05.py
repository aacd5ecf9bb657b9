"""The exercise checks of notebook 05 pass the solutions, fail plausible mistakes, and report a stub as TODO."""
import math

import pytest
import torch

from ddetr_lib.course import checks_05
from _solutions import assert_check_behaves, load_solutions


S = load_solutions("05")


# --- plausible wrong answers ---------------------------------------------------------------
def bytes_not_squared(h, w, stride, heads, batch=1, bpe=4):  # N weights per head instead of N x N
    return batch * heads * math.ceil(h / stride) * math.ceil(w / stride) * bpe


def bytes_floor_division(h, w, stride, heads, batch=1, bpe=4):  # rounds the map size down
    n = (h // stride) * (w // stride)
    return batch * heads * n * n * bpe


def bytes_ignores_batch(h, w, stride, heads, batch=1, bpe=4):
    return S.attention_matrix_bytes(h, w, stride, heads, 1, bpe)


def entropy_log2(w):  # bits instead of nats
    return -torch.special.xlogy(w, w).sum(-1) / math.log(2)


def entropy_nan_on_zeros(w):  # 0 * log 0 = nan
    return -(w * w.log()).sum(-1)


def entropy_mean(w):  # averages over keys instead of summing
    return -torch.special.xlogy(w, w).mean(-1)


CHECKS = [
    (checks_05.check_attention_matrix_bytes, S.attention_matrix_bytes,
     [bytes_not_squared, bytes_floor_division, bytes_ignores_batch]),
    (checks_05.check_attention_entropy, S.attention_entropy, [entropy_log2, entropy_nan_on_zeros, entropy_mean]),
]


@pytest.mark.parametrize("check,solution,wrong", CHECKS, ids=[c[0].__name__ for c in CHECKS])
def test_check_passes_solution_fails_mistakes(check, solution, wrong, capsys):
    assert_check_behaves(check, solution, wrong)
    out = capsys.readouterr().out
    assert "[PASS]" in out and "[FAIL]" in out and "[TODO]" in out
