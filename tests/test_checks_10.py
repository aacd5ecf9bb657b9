"""The exercise checks of notebook 10 pass the solutions, fail plausible wrong answers
and report an untouched exercise as not attempted."""
import importlib.util
from pathlib import Path

import pytest
import torch

from ddetr_lib.course import checks_10

SOLUTIONS = Path(__file__).resolve().parents[1] / "notebooks" / "solutions" / "10_box_refinement.py"


@pytest.fixture(scope="module")
def sol():
    spec = importlib.util.spec_from_file_location("solutions_10", SOLUTIONS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def todo(*args):
    raise NotImplementedError  # YOUR CODE HERE


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
