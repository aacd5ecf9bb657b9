"""Solutions to the exercises of ``04_matching_and_set_loss.ipynb`` (same names as in the notebook)."""
import itertools

import torch
import torch.nn.functional as F


def brute_force_assignment(cost):
    """cost (Q, N) tensor with Q >= N -> (rows, cols): int64 tensors of length N, rows ascending."""
    q, n = cost.shape
    best, best_perm = None, None
    for perm in itertools.permutations(range(q), n):  # object j gets prediction perm[j]
        total = sum(float(cost[perm[j], j]) for j in range(n))
        if best is None or total < best:
            best, best_perm = total, perm
    pairs = sorted((row, col) for col, row in enumerate(best_perm))
    rows = torch.tensor([r for r, _ in pairs], dtype=torch.int64)
    cols = torch.tensor([c for _, c in pairs], dtype=torch.int64)
    return rows, cols


def focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """logits, targets (same shape; targets 0/1 floats) -> element-wise focal loss."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * loss


def focal_class_cost(pred_logits, tgt_labels, alpha=0.25, gamma=2.0):
    """pred_logits (Q, C), tgt_labels (N,) -> (Q, N)."""
    p = pred_logits.sigmoid()
    pos = alpha * (1 - p) ** gamma * -(p + 1e-8).log()
    neg = (1 - alpha) * p ** gamma * -(1 - p + 1e-8).log()
    return pos[:, tgt_labels] - neg[:, tgt_labels]
