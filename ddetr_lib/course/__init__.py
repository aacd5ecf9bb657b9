"""Helpers for the course notebooks: the scale switch, data, checkpoints and exercise checks.

Every notebook starts with

    from ddetr_lib import course
    course.SCALE                                  # "learner" (default) or "smoke"
    steps = course.pick(learner=300, smoke=3)     # one knob, two scales
    root = course.synthetic_data("demo")          # generated the first time (COCO layout)
    model, cfg = course.load_model("toy_deformable_detr_demo")   # a shipped checkpoint

``COURSE_SCALE=smoke`` (what ``make test`` uses) makes every notebook run in well under
a minute: tiny data, a few steps. Nothing else needs setting.

Exercises are checked by the ``checks_NN`` modules beside this file, one per notebook.
Each check calls the learner's function on a few cases, compares with the library (or
torchvision, scipy) and prints a pass, or what is wrong with a hint. A function that
still raises ``NotImplementedError`` is reported as "not attempted", and the notebook
runs on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

SCALES = ("learner", "smoke")


def _read_scale() -> str:
    scale = os.environ.get("COURSE_SCALE", "learner").strip().lower() or "learner"
    if scale not in SCALES:
        raise ValueError(f"COURSE_SCALE={scale!r}: use one of {SCALES}")
    return scale


SCALE = _read_scale()
SMOKE = SCALE == "smoke"


def pick(learner: Any, smoke: Any) -> Any:
    """The value for the current scale: ``steps = course.pick(learner=500, smoke=3)``."""
    return smoke if SMOKE else learner


# --------------------------------------------------------------------------- places
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
OUTPUT_DIR = REPO_ROOT / "outputs" / "course"

# Smoke runs use small copies of the synthetic sets (a second or two to generate).
_SMOKE_SIZES = {"num_train": 48, "num_val": 16}


def synthetic_data(setting: str = "demo", seed: int = 0) -> Path:
    """Path of the synthetic set ``setting`` ("demo" or "default"), generated when missing.

    At learner scale this is the same folder that ``make demo`` (``data/synthetic_demo``)
    or the convergence study (``data/synthetic``) uses; at smoke scale a small copy.
    """
    from ddetr_lib.data.synthetic import SETTINGS, generate

    if setting not in SETTINGS:
        raise ValueError(f"setting: unknown {setting!r}; choose one of {sorted(SETTINGS)}")
    name = {"demo": "synthetic_demo", "default": "synthetic"}.get(setting, f"synthetic_{setting}")
    if SMOKE:
        return generate(DATA_DIR / f"{name}_smoke", setting=setting, seed=seed, **_SMOKE_SIZES)
    root = DATA_DIR / name
    if not (root / "synthetic.json").exists():
        print(f"generating the synthetic '{setting}' set in {root} (once) ...", flush=True)
    return generate(root, setting=setting, seed=seed, progress=True)


def checkpoint_path(name: str) -> Path:
    """Path of a shipped checkpoint, by file name with or without ``.pth``."""
    path = CHECKPOINT_DIR / (name if name.endswith(".pth") else f"{name}.pth")
    if not path.exists():
        shipped = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pth"))
        raise FileNotFoundError(f"no checkpoint {path.name} in {CHECKPOINT_DIR}; shipped: {shipped}")
    return path


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A checkpoint of ours (shipped name or path) as ``(model in eval mode, config)``."""
    from ddetr_lib.config import Config
    from ddetr_lib.models import build_model

    path = Path(name_or_path)
    if not path.exists():
        path = checkpoint_path(str(name_or_path))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "config" not in ckpt:
        raise ValueError(f"{path}: no 'config' in the checkpoint; for an official checkpoint use "
                         "ddetr_lib.models.load_official_checkpoint")
    cfg = Config(**ckpt["config"]).replace(pretrained_backbone=False)
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])  # strict
    return model.to(device).eval(), cfg


def device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def output_dir(notebook: str) -> Path:
    """A folder under ``outputs/course/`` for what a notebook writes (training runs, pictures)."""
    path = OUTPUT_DIR / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- exercise checks
@dataclass
class CheckResult:
    """What a check found: ``passed`` is True, False, or None (not attempted yet)."""

    title: str
    passed: bool | None
    message: str

    def __str__(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "TODO"}[self.passed]
        return f"[{mark}] {self.title}: {self.message}"

    def __bool__(self) -> bool:
        return bool(self.passed)

    def _ipython_display_(self):
        # The check already printed its line; a notebook cell that ends with the call
        # would otherwise show it a second time. print(result) shows it again on purpose.
        pass


def _describe(x: Any) -> str:
    if torch.is_tensor(x):
        return f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}"
    return repr(x) if len(repr(x)) < 80 else type(x).__name__


def compare(got: Any, expected: Any, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """``None`` when ``got`` matches ``expected`` (tensors, numbers, tuples of them), else why not."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected {len(expected)} results, got {_describe(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            why = compare(g, e, atol, rtol)
            if why:
                return f"result {i}: {why}"
        return None
    if torch.is_tensor(expected):
        if not torch.is_tensor(got):
            return f"expected a tensor, got {_describe(got)}"
        if got.shape != expected.shape:
            return f"shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype.is_floating_point != expected.dtype.is_floating_point:
            return f"dtype {got.dtype}, expected {expected.dtype}"
        diff = (got.double() - expected.double()).abs()
        bad = ~(diff <= atol + rtol * expected.double().abs())  # written so that a NaN counts as wrong
        if bad.any():
            i = tuple(int(v) for v in bad.nonzero()[0])
            return (f"{int(bad.sum())} of {bad.numel()} values differ; e.g. at {i}: "
                    f"{got[i].item():.6g} instead of {expected[i].item():.6g}")
        return None
    if isinstance(expected, float):
        ok = isinstance(got, (int, float)) or (torch.is_tensor(got) and got.numel() == 1)
        if not ok:
            return f"expected a number, got {_describe(got)}"
        return None if abs(float(got) - expected) <= atol + rtol * abs(expected) else f"{float(got):.6g}, expected {expected:.6g}"
    return None if got == expected else f"{_describe(got)}, expected {_describe(expected)}"


def check_function(title: str, fn: Callable, cases: Iterable[Sequence], reference: Callable, *,
                   hint: str = "", atol: float = 1e-5, rtol: float = 1e-4, quiet: bool = False) -> CheckResult:
    """Call ``fn(*case)`` and ``reference(*case)`` for every case and compare the results.

    Prints (unless ``quiet``) and returns a :class:`CheckResult`. ``hint`` is added to a
    failure message: the mistake learners most often make here.
    """
    result = None
    for n, case in enumerate(cases):
        case = tuple(case)
        expected = reference(*[c.clone() if torch.is_tensor(c) else c for c in case])
        try:
            got = fn(*[c.clone() if torch.is_tensor(c) else c for c in case])
        except NotImplementedError:
            result = CheckResult(title, None, "not attempted yet (the function still raises NotImplementedError)")
            break
        except Exception as exc:  # the learner's bug: say what it was, keep the notebook running
            result = CheckResult(title, False, f"case {n} raised {type(exc).__name__}: {exc}. {hint}".strip())
            break
        why = compare(got, expected, atol, rtol)
        if why:
            args = ", ".join(_describe(c) for c in case)
            result = CheckResult(title, False, f"case {n} ({args}): {why}. {hint}".strip())
            break
    if result is None:
        result = CheckResult(title, True, "all cases match the library")
    if not quiet:
        print(result)
    return result


# --------------------------------------------------------------------------- measuring
def tensor_bytes_created(fn: Callable, *args, **kwargs) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)``; return its result and the bytes of new memory that PyTorch
    operations allocated meanwhile for their results (intermediates included, whether freed or
    not; views and in-place results share memory and are not counted).

    A device-independent way to compare how much memory two implementations churn
    through (notebooks 07 and 08). Memory allocated outside PyTorch operations (inside a
    Numba kernel, say) is not seen; our kernels allocate their outputs with PyTorch.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class _CountBytes(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # Count new memory only: a view or an in-place result shares an input's storage.
            seen = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    self.total += t.untyped_storage().nbytes()
            return out

    with _CountBytes() as counter:
        result = fn(*args, **kwargs)
    return result, counter.total
