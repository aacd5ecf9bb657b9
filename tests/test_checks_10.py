"""The exercise checks of notebook 10 pass the solutions, fail plausible wrong answers
and report an untouched exercise as not attempted."""

import pytest
import torch

from ddetr_lib.course import checks_10
from _solutions import load_solutions, todo


@pytest.fixture(scope="module")
def sol():
    return load_solutions("10")


def test_refine_box(sol):
    assert checks_10.check_refine_box(sol.refine_box).passed is True

    def in_box_space(delta, reference):  # adds the correction to the box itself
        if reference.shape[-1] == 2:
            return torch.cat([reference + delta[..., :2], delta[..., 2:].sigmoid()], -1)
        return reference + delta

    def points_as_boxes(delta, reference):  # forgets that a point has no w, h
        return (delta[..., :reference.shape[-1]] + sol._inverse_sigmoid(reference)).sigmoid()

    assert checks_10.check_refine_box(in_box_space).passed is False
    assert checks_10.check_refine_box(points_as_boxes).passed is False
    assert checks_10.check_refine_box(todo).passed is None


def test_box_sampling_locations(sol):
    assert checks_10.check_box_sampling_locations(sol.box_sampling_locations).passed is True

    def full_size(reference_box, offsets):  # forgets the half and the 1/P
        return reference_box[:, None, None, None, :2] + offsets[None] * reference_box[:, None, None, None, 2:]

    assert checks_10.check_box_sampling_locations(full_size).passed is False
    assert checks_10.check_box_sampling_locations(todo).passed is None
