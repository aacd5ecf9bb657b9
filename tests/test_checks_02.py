"""The exercise checks of notebook 02 pass the solutions, fail plausible mistakes, and report a stub as TODO."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from ddetr_lib.course import checks_02
from _solutions import assert_check_behaves, load_solutions


S = load_solutions("02")


# --- plausible wrong answers -------------------------------------------------------------
def size_floor(size, stride):  # divides once and rounds down
    return size // stride


def size_round(size, stride):  # rounds to the nearest instead of up
    return round(size / stride)


def bn_batch_statistics(x, weight, bias, running_mean, running_var):  # what nn.BatchNorm2d does in train mode
    mean = x.mean((0, 2, 3), keepdim=True)
    var = x.var((0, 2, 3), unbiased=False, keepdim=True)
    return (x - mean) / (var + 1e-5).sqrt() * weight[None, :, None, None] + bias[None, :, None, None]


def bn_no_eps(x, weight, bias, running_mean, running_var):
    return S.frozen_batchnorm(x, weight, bias, running_mean, running_var, eps=0.0)


def bn_std_not_sqrt(x, weight, bias, running_mean, running_var):  # divides by the variance
    return (x - running_mean[None, :, None, None]) / (running_var[None, :, None, None] + 1e-5) \
        * weight[None, :, None, None] + bias[None, :, None, None]


def mask_strided_slice(mask, size):  # keeps every s-th pixel: a different grid than nearest resize
    sh, sw = -(-mask.shape[1] // size[0]), -(-mask.shape[2] // size[1])
    return mask[:, ::sh, ::sw][:, : size[0], : size[1]]


def mask_as_float(mask, size):  # forgets to convert back to bool
    return F.interpolate(mask[None].float(), size=size)[0]


def mask_bilinear_threshold(mask, size):  # "padding if any of it is padding": grows the padding
    return F.interpolate(mask[None].float(), size=size, mode="bilinear", align_corners=False)[0] > 0


CHECKS = [
    ("check_feature_size", S.feature_size, [size_floor, size_round]),
    ("check_frozen_batchnorm", S.frozen_batchnorm, [bn_batch_statistics, bn_no_eps, bn_std_not_sqrt]),
    ("check_downsample_mask", S.downsample_mask, [mask_strided_slice, mask_as_float, mask_bilinear_threshold]),
]


@pytest.mark.parametrize("name, solution, wrongs", CHECKS, ids=[c[0] for c in CHECKS])
def test_check_passes_solution_fails_mistakes_and_reports_todo(name, solution, wrongs):
    assert_check_behaves(getattr(checks_02, name), solution, wrongs)


def test_feature_size_reference_matches_torchvision_resnet():
    """The toy ResNet (the check's reference) and torchvision's ResNets (same stem and strides) agree."""
    from torchvision.models._utils import IntermediateLayerGetter

    body = IntermediateLayerGetter(torchvision.models.resnet18(weights=None),
                                   {"layer1": "4", "layer2": "8", "layer3": "16", "layer4": "32"}).eval()
    for size in (64, 97, 100, 129):
        with torch.no_grad():
            feats = body(torch.zeros(1, 3, size, size))
        for stride, f in feats.items():
            assert f.shape[-1] == checks_02._feature_size_by_running(size, int(stride)) == S.feature_size(size, int(stride))
