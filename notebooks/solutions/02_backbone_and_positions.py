"""Solutions to the exercises of 02_backbone_and_positions.ipynb (try them yourself first!)."""
import math

import torch
import torch.nn.functional as F


def feature_size(size, stride):
    """Side of the feature map at ``stride`` (4, 8, 16 or 32) for an image side of ``size`` pixels."""
    # Each stride-2 layer (3x3 conv, padding 1) maps n to ceil(n / 2); log2(stride) of them
    # in a row give ceil(n / stride), since ceil(ceil(n / a) / b) == ceil(n / (a * b)).
    return math.ceil(size / stride)


def frozen_batchnorm(x, weight, bias, running_mean, running_var, eps=1e-5):
    """BatchNorm with fixed statistics: (B, C, H, W) -> (B, C, H, W)."""
    scale = weight * (running_var + eps).rsqrt()  # (C,)
    shift = bias - running_mean * scale  # (C,)
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def downsample_mask(mask, size):
    """(B, H, W) bool padding mask -> (B, h, w) bool, nearest neighbour as the backbone does it."""
    return F.interpolate(mask[None].float(), size=size)[0].to(torch.bool)
