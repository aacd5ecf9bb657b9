"""Helpers for the exercise-check tests: load a notebook's solutions, stand in for an exercise
that was not attempted."""
import importlib.util
from pathlib import Path

SOLUTIONS_DIR = Path(__file__).resolve().parents[1] / "notebooks" / "solutions"


def load_solutions(number: str):
    """notebooks/solutions/NN_*.py as a module (the folder is not a package)."""
    (path,) = SOLUTIONS_DIR.glob(f"{number}_*.py")
    spec = importlib.util.spec_from_file_location(f"solutions_{number}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def todo(*args):
    """An exercise left as the notebook gives it."""
    raise NotImplementedError  # YOUR CODE HERE


def assert_check_behaves(check, solution, wrongs):
    """The check passes the solution, fails each plausible wrong answer with a hint, and reports an
    untouched exercise as not attempted."""
    assert check(solution).passed is True, f"{check.__name__} rejects the solution"
    for wrong in wrongs:
        result = check(wrong)
        assert result.passed is False, f"{check.__name__} accepted {wrong.__name__}"
        assert "Hint" in result.message
    assert check(todo).passed is None
