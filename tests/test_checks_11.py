"""The exercise checks of notebook 11 pass the solutions, fail plausible wrong answers
and report an untouched exercise as not attempted."""

import pytest
import torch

from ddetr_lib.course import checks_11
from _solutions import load_solutions, todo


@pytest.fixture(scope="module")
def sol():
    return load_solutions("11")


def test_token_proposals(sol):
    assert checks_11.check_token_proposals(sol.token_proposals).passed is True

    def pixel_corner(spatial_shapes):  # forgets the half-pixel: the box sits on the pixel's corner
        out = sol.token_proposals(spatial_shapes)
        return torch.cat([out[:, :2] - 0.5 / torch.cat([torch.tensor([[w, h]] * (h * w)) for h, w in
                                                         spatial_shapes.tolist()]), out[:, 2:]], -1)

    def same_size_everywhere(spatial_shapes):
        out = sol.token_proposals(spatial_shapes)
        out[:, 2:] = 0.05
        return out

    assert checks_11.check_token_proposals(pixel_corner).passed is False
    assert checks_11.check_token_proposals(same_size_everywhere).passed is False
    assert checks_11.check_token_proposals(todo).passed is None


def test_select_proposals(sol):
    assert checks_11.check_select_proposals(sol.select_proposals).passed is True

    def best_class(enc_logits, enc_boxes_unact, k):  # ranks by the best class, as the final postprocess does
        return enc_boxes_unact[enc_logits.max(-1).values.topk(k).indices].sigmoid()

    assert checks_11.check_select_proposals(best_class).passed is False
    assert checks_11.check_select_proposals(todo).passed is None
