"""The course helpers: scale switch, comparisons and the exercise-check machinery."""
import torch

from ddetr_lib import course


def test_pick_follows_the_scale():
    assert course.pick(learner=1, smoke=2) == (2 if course.SMOKE else 1)


def test_compare_explains_mismatches():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert course.compare(a, a.clone()) is None
    assert "shape (2,)" in course.compare(a[0], a)
    assert "1 of 4 values differ" in course.compare(a + torch.tensor([[0, 0], [0, 1.0]]), a)
    assert "expected 2 results" in course.compare((a,), (a, a))
    assert course.compare(0.5, 0.5) is None and "0.6" in course.compare(0.6, 0.5)
    assert course.compare(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0])) is not None  # NaN is wrong
    assert course.compare(float("nan"), 0.5) is not None


def test_check_function_pass_fail_and_not_attempted():
    cases = [(torch.tensor([1.0, -2.0]),), (torch.tensor([[0.5]]),)]

    def todo(x):
        raise NotImplementedError

    ok = course.check_function("relu", torch.relu, cases, torch.relu, quiet=True)
    wrong = course.check_function("relu", torch.abs, cases, torch.relu, hint="negative inputs give 0", quiet=True)
    broken = course.check_function("relu", lambda x: x.nope(), cases, torch.relu, quiet=True)
    skipped = course.check_function("relu", todo, cases, torch.relu, quiet=True)
    assert ok.passed is True and bool(ok)
    assert wrong.passed is False and "negative inputs give 0" in wrong.message and "case 0" in wrong.message
    assert broken.passed is False and "AttributeError" in broken.message
    assert skipped.passed is None and "not attempted" in str(skipped)


def test_check_function_does_not_let_the_learner_change_the_inputs():
    x = torch.tensor([1.0, -1.0])

    def in_place(t):
        return t.clamp_(min=0)

    assert course.check_function("relu", in_place, [(x,)], torch.relu, quiet=True).passed
    assert x.tolist() == [1.0, -1.0]


def test_load_model_reads_a_shipped_checkpoint():
    model, cfg = course.load_model("toy_deformable_detr_demo")
    assert cfg.model == "deformable_detr" and not model.training
    out = model([torch.rand(3, 96, 128)])
    assert out["pred_boxes"].shape == (1, cfg.num_queries, 4)


def test_tensor_bytes_created_counts_intermediates():
    x = torch.zeros(10, 10)  # 400 bytes

    def two_ops(t):
        return (t + 1) * 2  # two new (10, 10) float32 tensors

    out, total = course.tensor_bytes_created(two_ops, x)
    assert total == 2 * 400 and out.shape == (10, 10)

    def views_and_in_place(t):
        return t.view(-1).view(10, 10).t().add_(1)  # no new memory at all

    assert course.tensor_bytes_created(views_and_in_place, x.clone())[1] == 0
