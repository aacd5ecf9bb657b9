"""Every course notebook runs top to bottom in a fresh kernel at COURSE_SCALE=smoke.

Also: notebooks are committed without outputs and with a kernelspec, and the scale
switch rejects unknown values.
"""
import json
import os
import subprocess
import sys

import pytest

from ddetr_lib.course.runner import NOTEBOOK_DIR, course_notebooks, run_notebook

NOTEBOOKS = course_notebooks()


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_scale(path):
    nb, seconds = run_notebook(path, scale="smoke", timeout=300)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", "kernelspec missing"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"cell {i} has outputs"


def test_every_notebook_is_in_the_course_plan():
    plan = (NOTEBOOK_DIR / "README.md").read_text()
    missing = [p.name for p in NOTEBOOKS if p.name not in plan]
    assert not missing, f"notebooks/README.md does not list {missing}"


def test_unknown_scale_is_refused():
    env = dict(os.environ, COURSE_SCALE="huge")
    out = subprocess.run([sys.executable, "-c", "import ddetr_lib.course"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "COURSE_SCALE='huge'" in out.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_exercise_has_a_solution_and_a_check(path):
    import re

    from _solutions import load_solutions

    nb = json.loads(path.read_text())
    stubs = [s for s in ("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
             if "raise NotImplementedError" in s]
    if path.stem[:2].isdigit() and 1 <= int(path.stem[:2]) <= 11:
        assert 2 <= len(stubs) <= 4, f"{len(stubs)} exercises"
    if not stubs:
        return
    solutions = load_solutions(path.stem[:2])
    for source in stubs:
        name = re.search(r"def (\w+)\(", source).group(1)
        assert hasattr(solutions, name), f"notebooks/solutions has no {name}"
        assert re.search(rf"check\w*\(\s*{name}\b", source), f"the cell of {name} calls no check on it"
