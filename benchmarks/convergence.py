"""Convergence study in miniature: DETR vs Deformable DETR on the synthetic set.

The headline of the Deformable DETR paper (Zhu et al., 2021, Fig. 3) is that it
reaches a better AP than DETR with 10x fewer epochs, and does much better on small
objects.  This script re-enacts that on a CPU: it trains ``toy_detr`` and
``toy_deformable_detr`` (same backbone, widths, layers, queries, optimiser and
schedule; only the detector differs) for the same number of epochs on the harder
``default`` synthetic set (8 shapes, 2-12 objects per image, 54% small), evaluates
both on the val split after every epoch and writes

* ``benchmarks/results/convergence.json``: per model, per evaluated epoch, AP, AP50,
  AP_small (and all 12 COCO stats), the training wall-clock so far, the loss; plus a
  summary with the equal-epoch and equal-wall-clock comparisons;
* ``benchmarks/results/convergence.png``: AP, AP50 and AP_small against epochs and
  against training wall-clock.

The two trainings run side by side by default, each pinned to one thread
(``--threads 1``), so that on a 2-core machine they share the hardware alike and the
wall-clock axis compares like with like.  ``--sequential`` runs them one after the
other instead (give each more threads with ``--threads``).

    python benchmarks/convergence.py                       # the committed run (about 2 h on 2 cores)
    python benchmarks/convergence.py --epochs 2 --steps-per-epoch 20 --out /tmp/conv   # smoke run
    python benchmarks/convergence.py --report-only         # redraw JSON + PNG from the logs

Each training is an ordinary ``python -m ddetr_lib.train`` run (logs, checkpoint and
``log.jsonl`` in ``--work-dir/<config>``), so an interrupted study continues with
``--resume``.  Wall-clock is the time spent in training steps (data loading included,
evaluation excluded), summed over epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

MODELS = ("toy_detr", "toy_deformable_detr")
LABELS = {"toy_detr": "DETR (toy)", "toy_deformable_detr": "Deformable DETR (toy)"}
COLORS = {"toy_detr": "tab:blue", "toy_deformable_detr": "tab:red"}
METRICS = ("AP", "AP50", "AP_small")

# The default synthetic images have a short side of 128-256 px, larger than the demo's,
# so both models see them at 128-176 px (the toy presets' 96-128 px would shrink the
# smallest objects below a pixel or two) and each query budget covers the 12 objects
# an image may hold with room to spare.
STUDY_OVERRIDES = (
    "train_scales=128,136,144,152,160,168,176",
    "train_max_size=288",
    "val_size=160",
    "val_max_size=288",
    "num_queries=30",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("data/synthetic"),
                   help="the synthetic 'default' set (generated there if missing)")
    p.add_argument("--work-dir", type=Path, default=Path("outputs/convergence"),
                   help="training outputs (checkpoints, logs), one folder per config")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                   help="folder for convergence.json and convergence.png")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr-drop", type=int, default=None, help="default: 80%% of --epochs, as in the papers' schedules")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--steps-per-epoch", type=int, default=None, help="cap on steps per epoch (smoke runs only)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training")
    p.add_argument("--sequential", action="store_true", help="train one model after the other")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for both models (after the study's own)")
    p.add_argument("--configs", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--resume", action="store_true", help="continue interrupted trainings from their checkpoints")
    p.add_argument("--report-only", action="store_true", help="only rebuild the JSON and PNG from the logs")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- training
def train_command(name: str, args: argparse.Namespace) -> list[str]:
    lr_drop = args.lr_drop if args.lr_drop is not None else max(1, round(0.8 * args.epochs))
    cmd = [sys.executable, "-m", "ddetr_lib.train", "--config", name, "--data-root", str(args.data_root),
           "--output-dir", str(args.work_dir / name), "--epochs", str(args.epochs), "--lr-drop", str(lr_drop),
           "--eval-every", str(args.eval_every), "--seed", str(args.seed), "--no-progress"]
    for kv in (*STUDY_OVERRIDES, *args.overrides):
        cmd += ["--set", kv]
    if args.steps_per_epoch:
        cmd += ["--steps-per-epoch", str(args.steps_per_epoch)]
    ckpt = args.work_dir / name / "checkpoint.pth"
    if args.resume and ckpt.exists():
        cmd += ["--resume", str(ckpt)]
    else:
        cmd += ["--overwrite"]
    return cmd


def thread_env(threads: int) -> dict:
    env = dict(os.environ, PYTHONSAFEPATH="1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    return env


def ensure_data(root: Path, setting: str = "default") -> None:
    """The synthetic set ``setting`` in ``root`` (seed 0), generated when it is missing."""
    if (root / "annotations" / "instances_train2017.json").exists():
        return
    from ddetr_lib.data.synthetic import generate

    print(f"generating the synthetic {setting!r} set in {root} ...", flush=True)
    generate(root, setting=setting, seed=0)


def last_epoch_line(log_path: Path) -> str:
    if not log_path.exists():
        return "starting"
    lines = [ln for ln in log_path.read_text().splitlines() if ln.startswith("epoch ")]
    return lines[-1] if lines else "starting"


def run_trainings(args: argparse.Namespace, commands: dict | None = None, nice: int = 0) -> None:
    """Run one training per name in ``args.configs`` (side by side unless ``args.sequential``),
    each with ``args.threads`` threads, logging to ``args.work_dir/<name>.log``; print progress.
    ``commands`` maps name -> command (default: this study's ``train_command``); ``nice`` > 0
    runs them at that lower priority."""
    args.work_dir.mkdir(parents=True, exist_ok=True)
    commands = commands or {name: train_command(name, args) for name in args.configs}
    (args.work_dir / "commands.json").write_text(json.dumps(commands, indent=2) + "\n")
    batches = [[n] for n in args.configs] if args.sequential else [list(args.configs)]
    for batch in batches:
        procs = {}
        for name in batch:
            print("$", " ".join(commands[name]), flush=True)
            log_file = open(args.work_dir / f"{name}.log", "a" if args.resume else "w")
            procs[name] = (subprocess.Popen(commands[name], stdout=log_file, stderr=subprocess.STDOUT,
                                            env=thread_env(args.threads),
                                            preexec_fn=(lambda: os.nice(nice)) if nice > 0 else None), log_file)
        start = time.perf_counter()
        while procs:
            time.sleep(2 if args.steps_per_epoch else 60)
            status = []
            for name in list(procs):
                proc, log_file = procs[name]
                status.append(f"{name}: {last_epoch_line(args.work_dir / f'{name}.log')}")
                if proc.poll() is not None:
                    log_file.close()
                    del procs[name]
                    if proc.returncode != 0:
                        tail = (args.work_dir / f"{name}.log").read_text().strip().splitlines()[-5:]
                        for other, _ in procs.values():
                            other.terminate()
                        raise SystemExit(f"error: training {name} failed (exit {proc.returncode}):\n  "
                                         + "\n  ".join(tail))
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] " + " | ".join(status), flush=True)


# --------------------------------------------------------------------------- report
def read_curve(log_jsonl: Path) -> dict:
    """Per evaluated epoch: epoch number (1-based), cumulative training seconds, metrics, loss;
    plus the mean seconds per epoch and milliseconds per step over all epochs."""
    from ddetr_lib.engine import COCO_STAT_NAMES

    curve = {"epoch": [], "train_time_s": [], "loss": [], **{m: [] for m in METRICS}, "coco_stats": []}
    entries = [json.loads(line) for line in log_jsonl.read_text().splitlines()]
    elapsed = 0.0
    for entry in entries:
        elapsed += entry["train_time_s"]
        if "test_AP" not in entry:
            continue
        curve["epoch"].append(entry["epoch"] + 1)
        curve["train_time_s"].append(round(elapsed, 2))
        curve["loss"].append(round(entry["train_loss"], 4))
        for m in METRICS:
            curve[m].append(round(entry[f"test_{m}"], 4))
        curve["coco_stats"].append({k: round(entry[f"test_{k}"], 4) for k in COCO_STAT_NAMES})
    curve["epoch_s"] = round(elapsed / max(1, len(entries)), 2)  # mean training seconds per epoch
    curve["step_ms"] = round(1000 * sum(e.get("train_step_s", 0.0) for e in entries) / max(1, len(entries)), 1)
    return curve


def value_at_time(curve: dict, t: float, metric: str) -> float | None:
    """The metric of the last evaluation made within ``t`` seconds of training."""
    best = None
    for time_s, v in zip(curve["train_time_s"], curve[metric]):
        if time_s <= t:
            best = v
    return best


def summarize(curves: dict) -> dict:
    summary: dict = {}
    if not all(m in curves and curves[m]["epoch"] for m in MODELS):
        return summary
    detr, deform = curves["toy_detr"], curves["toy_deformable_detr"]
    common = sorted(set(detr["epoch"]) & set(deform["epoch"]))
    e = common[-1]
    at = {n: {m: c[m][c["epoch"].index(e)] for m in METRICS} for n, c in curves.items()}
    summary["equal_epochs"] = {
        "epoch": e, **{n: at[n] for n in MODELS},
        "AP_ratio_deformable_over_detr": round(at["toy_deformable_detr"]["AP"] / at["toy_detr"]["AP"], 2)
        if at["toy_detr"]["AP"] > 0 else None,
    }
    # Equal wall-clock: each model at the training time the faster run needed for all its epochs.
    t = min(detr["train_time_s"][-1], deform["train_time_s"][-1])
    at_t = {n: {m: value_at_time(c, t, m) for m in METRICS} for n, c in curves.items()}
    at_t_epochs = {n: max([ep for ep, ts in zip(c["epoch"], c["train_time_s"]) if ts <= t], default=0)
                   for n, c in curves.items()}
    summary["equal_wall_clock"] = {
        "train_time_s": t, **{n: {**at_t[n], "epoch": at_t_epochs[n]} for n in MODELS},
    }
    # First epoch at which each model leaves the noise floor (AP50 >= 0.05).
    summary["first_epoch_AP50_over_0.05"] = {
        n: next((ep for ep, v in zip(c["epoch"], c["AP50"]) if v >= 0.05), None) for n, c in curves.items()}
    return summary


def plot(logs: dict, path: Path, lr_drop: int | None = None) -> None:
    """The figure: training loss, AP, AP50 and AP_small against epochs and against wall-clock."""
    from matplotlib.figure import Figure

    from ddetr_lib.viz import plot_learning_curves

    fig = Figure(figsize=(4.0 * (1 + len(METRICS)), 7), constrained_layout=True)
    axes = fig.subplots(2, 1 + len(METRICS), squeeze=False)
    plot_learning_curves({LABELS[n]: p for n, p in logs.items()}, metrics=METRICS, axes=axes,
                         colors={LABELS[n]: COLORS[n] for n in logs}, lr_drop=lr_drop,
                         time_label="training wall-clock (min, 1 CPU core each)",
                         title="Convergence on the synthetic 'default' set: same backbone, widths, queries, schedule")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def write_report(args: argparse.Namespace) -> dict:
    curves = {n: read_curve(args.work_dir / n / "log.jsonl") for n in MODELS
              if (args.work_dir / n / "log.jsonl").exists()}
    curves = {n: c for n, c in curves.items() if c["epoch"]}
    if not curves:
        raise SystemExit(f"error: no evaluated epochs under {args.work_dir}")
    commands_path = args.work_dir / "commands.json"
    import torch

    report = {
        "description": "toy_detr vs toy_deformable_detr trained for the same epochs on the synthetic "
                       "'default' set; val AP after each evaluated epoch; train_time_s is cumulative "
                       "training wall-clock (evaluation excluded)",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "threads_per_run": args.threads,
                    "side_by_side": not args.sequential, "torch": torch.__version__},
        "data_root": str(args.data_root),
        "overrides": list(STUDY_OVERRIDES) + list(args.overrides),
        "commands": json.loads(commands_path.read_text()) if commands_path.exists() else None,
        "models": curves,
        "summary": summarize(curves),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convergence.json").write_text(json.dumps(report, indent=1) + "\n")
    commands = report["commands"] or {}
    drops = {int(cmd[cmd.index("--lr-drop") + 1]) for cmd in commands.values() if "--lr-drop" in cmd}
    plot({n: args.work_dir / n / "log.jsonl" for n in curves}, args.out / "convergence.png",
         lr_drop=drops.pop() if len(drops) == 1 else None)
    print(f"wrote {args.out / 'convergence.json'} and {args.out / 'convergence.png'}")
    print(json.dumps(report["summary"], indent=1))
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        ensure_data(args.data_root)
        run_trainings(args)
    write_report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
