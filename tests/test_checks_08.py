"""Notebook 08's exercise checks pass the solutions and catch typical mistakes."""
import importlib.util
from pathlib import Path

from ddetr_lib.course import checks_08 as checks

_path = Path(__file__).resolve().parents[1] / "notebooks" / "solutions" / "08_the_kernel.py"
_spec = importlib.util.spec_from_file_location("solutions_08", _path)
solutions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(solutions)


def _todo(*args):
    raise NotImplementedError


def test_sample_pixel():
    assert checks.check_sample_pixel(solutions.sample_pixel, quiet=True).passed is True
    assert checks.check_sample_pixel(_todo, quiet=True).passed is None

    def swaps_xy(fmap, H, W, x, y):  # x taken as the row
        return solutions.sample_pixel(fmap, H, W, y, x)

    def nearest(fmap, H, W, x, y):  # rounds instead of interpolating
        return solutions.sample_pixel(fmap, H, W, float(round(x)), float(round(y)))

    for wrong in (swaps_xy, nearest):
        assert checks.check_sample_pixel(wrong, quiet=True).passed is False, wrong.__name__


def test_grad_attention_weights():
    assert checks.check_grad_attention_weights(solutions.grad_attention_weights, quiet=True).passed is True
    assert checks.check_grad_attention_weights(_todo, quiet=True).passed is None

    def times_weight(value, shapes, starts, loc, weights, grad_out):  # multiplies by the weight once too often
        return solutions.grad_attention_weights(value, shapes, starts, loc, weights, grad_out) * weights

    assert checks.check_grad_attention_weights(times_weight, quiet=True).passed is False
