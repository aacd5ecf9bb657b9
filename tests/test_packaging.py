"""The project installs as documented: dependency lists agree, `kernels` stays private."""
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_matches_pyproject():
    meta = _pyproject()["project"]
    expected = set(meta["dependencies"]) | set(meta["optional-dependencies"]["test"]) | set(
        meta["optional-dependencies"]["notebooks"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1
    listed = {req for req in pip_lists[0] if not req.startswith("-")}
    assert listed == expected, f"only in environment.yml: {listed - expected}; only in pyproject: {expected - listed}"


def test_no_pin_above_the_local_torch():
    deps = _pyproject()["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch>"))
    tv_req = next(d for d in deps if d.startswith("torchvision"))
    assert "<=2.14.1" in torch_req and "<=0.29.1" in tv_req


def test_kernels_is_not_a_top_level_module(tmp_path):
    # From a neutral directory, `kernels` must not resolve to our folder, while
    # `ddetr_lib.kernels` must.
    code = ("import importlib.util, ddetr_lib.kernels as k; s = importlib.util.find_spec('kernels'); "
            "print(k.__file__); print(s.origin if s else None)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    ours, found = out.stdout.split()
    assert Path(ours).parent == ROOT / "kernels"
    assert found == "None" or Path(found).parent != ROOT / "kernels"


def test_setuptools_maps_kernels_into_the_package():
    tool = _pyproject()["tool"]["setuptools"]
    assert "kernels" not in tool["packages"]
    assert tool["package-dir"]["ddetr_lib.kernels"] == "kernels"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci
