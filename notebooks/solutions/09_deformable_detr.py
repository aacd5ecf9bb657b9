"""Solutions to the exercises of notebook 09 (Deformable DETR, assembled)."""
import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    p = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)  # probability of the right answer
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * bce


def box_from_point_reference(delta, reference):
    eps = 1e-5
    r = reference.clamp(0, 1)
    inv = torch.log(r.clamp(min=eps) / (1 - r).clamp(min=eps))
    return torch.cat([delta[..., :2] + inv, delta[..., 2:]], -1).sigmoid()


def top_k_detections(logits, boxes, k):
    num_classes = logits.shape[-1]
    scores, index = logits.sigmoid().flatten().topk(k)
    return scores, index % num_classes, index // num_classes
