"""The exercise checks of notebook 04 pass the solutions, fail plausible mistakes, and report a stub as TODO."""

import pytest
import torch
import torch.nn.functional as F

from ddetr_lib.course import checks_04
from _solutions import assert_check_behaves, load_solutions


S = load_solutions("04")


# --- plausible wrong answers ---------------------------------------------------------------
def greedy_assignment(cost):  # each object takes its cheapest prediction: may reuse one
    cols = torch.arange(cost.shape[1])
    rows = cost.argmin(0)
    order = rows.argsort()
    return rows[order], cols[order]


def assignment_maximising(cost):  # maximises instead of minimising
    return S.brute_force_assignment(-cost)


def assignment_unsorted(cost):  # right pairs, in object order instead of row order
    rows, cols = S.brute_force_assignment(cost)
    order = cols.argsort()
    return rows[order], cols[order]


def focal_without_alpha(x, t, alpha=0.25, gamma=2.0):  # forgets the alpha weighting
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = x.sigmoid()
    p_t = p * t + (1 - p) * (1 - t)
    return ce * (1 - p_t) ** gamma


def focal_alpha_everywhere(x, t, alpha=0.25, gamma=2.0):  # alpha also on the negatives
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = x.sigmoid()
    p_t = p * t + (1 - p) * (1 - t)
    return alpha * ce * (1 - p_t) ** gamma


def focal_modulates_with_p(x, t, alpha=0.25, gamma=2.0):  # (1 - p)^gamma instead of (1 - p_t)^gamma
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = x.sigmoid()
    return (alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p) ** gamma


def cost_softmax(logits, labels, alpha=0.25, gamma=2.0):  # DETR's softmax cost on sigmoid logits
    return -logits.softmax(-1)[:, labels]


def cost_pos_only(logits, labels, alpha=0.25, gamma=2.0):  # forgets to subtract the "no" cost
    p = logits.sigmoid()
    return (alpha * (1 - p) ** gamma * -(p + 1e-8).log())[:, labels]


def cost_sign_flipped(logits, labels, alpha=0.25, gamma=2.0):  # "no" minus "yes": prefers wrong classes
    return -S.focal_class_cost(logits, labels, alpha, gamma)


CHECKS = [
    (checks_04.check_brute_force_assignment, S.brute_force_assignment,
     [greedy_assignment, assignment_maximising, assignment_unsorted]),
    (checks_04.check_focal_loss, S.focal_loss, [focal_without_alpha, focal_alpha_everywhere, focal_modulates_with_p]),
    (checks_04.check_focal_class_cost, S.focal_class_cost, [cost_softmax, cost_pos_only, cost_sign_flipped]),
]


@pytest.mark.parametrize("check,solution,wrong", CHECKS, ids=[c[0].__name__ for c in CHECKS])
def test_check_passes_solution_fails_mistakes(check, solution, wrong, capsys):
    assert_check_behaves(check, solution, wrong)
    out = capsys.readouterr().out
    assert "[PASS]" in out and "[FAIL]" in out and "[TODO]" in out
