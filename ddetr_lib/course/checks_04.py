"""Exercise checks for ``notebooks/04_matching_and_set_loss.ipynb``.

    from ddetr_lib.course import checks_04
    checks_04.check_focal_loss(my_focal_loss)   # prints PASS / FAIL (+ hint) / TODO

References: ``scipy.optimize.linear_sum_assignment``, ``torchvision.ops.sigmoid_focal_loss``
and the class cost of the library's ``HungarianMatcher(focal=True)``.
Solutions: ``notebooks/solutions/04_matching_and_set_loss.py``.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import sigmoid_focal_loss

from ddetr_lib.course import CheckResult, check_function


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _reference_assignment(cost):
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


def check_brute_force_assignment(fn) -> CheckResult:
    """``fn(cost (Q, N), Q >= N) -> (rows, cols)`` of the cheapest one-to-one assignment, rows ascending."""
    g = _gen(4)
    cases = [
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]),),  # the diagonal
        (torch.tensor([[5.0, 1.0], [1.0, 5.0], [0.5, 0.4]]),),  # greedy per object goes wrong here
        (torch.rand(5, 3, generator=g),),
        (torch.rand(6, 4, generator=g) * 10 - 5,),  # negative costs too
    ]

    def call(cost):
        rows, cols = fn(cost)
        return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)

    return check_function(
        "brute-force assignment", call, cases, _reference_assignment,
        hint="Hint: for perm in itertools.permutations(range(Q), N), object j gets prediction perm[j]; "
             "keep the permutation with the smallest sum of cost[perm[j], j]; then sort the pairs by "
             "prediction (row) index. Choosing the cheapest prediction for each object on its own "
             "(greedy) can give two objects the same prediction or a costlier total.")


def check_focal_loss(fn) -> CheckResult:
    """``fn(logits, targets, alpha=0.25, gamma=2.0)`` -> element-wise sigmoid focal loss."""
    g = _gen(5)
    logits = torch.tensor([[-3.0, -0.5, 0.0, 0.5, 3.0]])
    cases = [
        (logits, torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]]), 0.25, 2.0),
        (torch.randn(2, 6, 5, generator=g) * 4, (torch.rand(2, 6, 5, generator=g) > 0.8).float(), 0.25, 2.0),
        (torch.randn(3, 4, generator=g) * 3, (torch.rand(3, 4, generator=g) > 0.5).float(), 0.5, 1.0),
    ]
    return check_function(
        "sigmoid focal loss", fn, cases,
        lambda x, t, a, gm: sigmoid_focal_loss(x, t, alpha=a, gamma=gm, reduction="none"),
        hint="Hint: p = sigmoid(logits); ce = F.binary_cross_entropy_with_logits(logits, targets, "
             "reduction='none'); p_t = p*t + (1-p)*(1-t); loss = ce * (1 - p_t)**gamma; then multiply "
             "by alpha where t = 1 and by (1 - alpha) where t = 0.")


def _reference_focal_cost(pred_logits, tgt_labels, alpha, gamma):
    from ddetr_lib.models import HungarianMatcher

    return HungarianMatcher(focal_loss=True, focal_alpha=alpha, focal_gamma=gamma).class_cost(pred_logits, tgt_labels)


def check_focal_class_cost(fn) -> CheckResult:
    """``fn(pred_logits (Q, C), tgt_labels (N,), alpha=0.25, gamma=2.0) -> (Q, N)``."""
    g = _gen(6)
    cases = [
        (torch.tensor([[2.0, -2.0, 0.0], [-1.0, 3.0, 0.5]]), torch.tensor([0, 1]), 0.25, 2.0),
        (torch.randn(7, 5, generator=g) * 3, torch.tensor([4, 1, 1, 0]), 0.25, 2.0),  # a class twice
        (torch.randn(4, 3, generator=g), torch.tensor([2]), 0.5, 1.0),
    ]
    return check_function(
        "focal class cost", fn, cases, _reference_focal_cost,
        hint="Hint: p = pred_logits.sigmoid() (Q, C); pos = alpha * (1-p)**gamma * -log(p + 1e-8); "
             "neg = (1-alpha) * p**gamma * -log(1 - p + 1e-8); cost = pos[:, tgt_labels] - neg[:, tgt_labels] "
             "(pick the COLUMNS of the objects' classes).")
