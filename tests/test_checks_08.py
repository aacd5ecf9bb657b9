"""Notebook 08's exercise checks pass the solutions and catch typical mistakes."""

from ddetr_lib.course import checks_08 as checks
from _solutions import load_solutions, todo

solutions = load_solutions("08")


def test_sample_pixel():
    assert checks.check_sample_pixel(solutions.sample_pixel, quiet=True).passed is True
    assert checks.check_sample_pixel(todo, quiet=True).passed is None

    def swaps_xy(fmap, H, W, x, y):  # x taken as the row
        return solutions.sample_pixel(fmap, H, W, y, x)

    def nearest(fmap, H, W, x, y):  # rounds instead of interpolating
        return solutions.sample_pixel(fmap, H, W, float(round(x)), float(round(y)))

    for wrong in (swaps_xy, nearest):
        assert checks.check_sample_pixel(wrong, quiet=True).passed is False, wrong.__name__


def test_grad_attention_weights():
    assert checks.check_grad_attention_weights(solutions.grad_attention_weights, quiet=True).passed is True
    assert checks.check_grad_attention_weights(todo, quiet=True).passed is None

    def times_weight(value, shapes, starts, loc, weights, grad_out):  # multiplies by the weight once too often
        return solutions.grad_attention_weights(value, shapes, starts, loc, weights, grad_out) * weights

    assert checks.check_grad_attention_weights(times_weight, quiet=True).passed is False
