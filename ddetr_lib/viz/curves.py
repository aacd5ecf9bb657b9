"""Learning curves from the ``log.jsonl`` files that ``python -m ddetr_lib.train`` writes.

Each line of a log is one epoch: ``epoch`` (0-based), the mean training losses
``train_loss`` (weighted total), ``train_loss_ce``, ``train_loss_bbox``, ``train_loss_giou``
(unweighted, last decoder layer), ``train_time_s`` (seconds spent training in that epoch,
evaluation excluded) and, after an evaluation, the COCO stats as ``test_AP``,
``test_AP50``, ``test_AP_small``, ...

    fig = plot_learning_curves({"DETR": "runs/detr", "Deformable": "runs/deformable"})
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

LOSS_TERMS = ("loss_ce", "loss_bbox", "loss_giou")
METRICS = ("AP", "AP50", "AP_small")
_TERM_STYLES = {"loss_ce": "--", "loss_bbox": ":", "loss_giou": "-."}


def read_log(path: str | os.PathLike) -> list[dict]:
    """The entries of a ``log.jsonl`` (a file, or a training output folder that holds one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "log.jsonl"
    if not path.exists():
        raise ValueError(f"logs: no such log file {path}")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"logs: {path} line {n} is not JSON ({exc.msg})") from None
    return entries


def curve(entries: Sequence[Mapping], key: str, x: str = "epoch") -> tuple[np.ndarray, np.ndarray]:
    """``(xs, ys)`` of ``key`` over the epochs that have it.

    x="epoch": 1-based epoch number (the value after that many epochs);
    x="time": cumulative training minutes at the end of that epoch.
    A COCO stat of -1 (no object of that size) becomes NaN.
    """
    if x not in ("epoch", "time"):
        raise ValueError(f"x: expected 'epoch' or 'time', got {x!r}")
    xs, ys, elapsed = [], [], 0.0
    for entry in entries:
        elapsed += float(entry.get("train_time_s", 0.0))
        if key not in entry:
            continue
        value = float(entry[key])
        xs.append(entry["epoch"] + 1 if x == "epoch" else elapsed / 60.0)
        ys.append(np.nan if key.startswith("test_") and value < 0 else value)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _as_runs(logs) -> dict[str, list[dict]]:
    if isinstance(logs, (str, os.PathLike)):
        logs = [logs]
    if isinstance(logs, Mapping):
        items = list(logs.items())
    else:
        items = []
        for log in logs:
            p = Path(log)
            label = p.parent.name if p.name == "log.jsonl" else p.name
            items.append((label, log))
    if not items:
        raise ValueError("logs: no log given")
    runs = {}
    for label, log in items:
        runs[str(label)] = read_log(log) if isinstance(log, (str, os.PathLike)) else list(log)
    return runs


def plot_learning_curves(logs, metrics: Sequence[str] = METRICS, loss_terms: Sequence[str] = LOSS_TERMS,
                         xs: Sequence[str] = ("epoch", "time"), colors: Mapping[str, str] | None = None,
                         lr_drop: int | None = None, time_label: str = "training wall-clock (min)",
                         title: str | None = None, axes=None):
    """Compare training runs: losses and val AP against epochs and against wall-clock.

    logs: a ``log.jsonl`` path or output folder, a list of them (labelled by folder name),
    or a dict ``{label: path or list of entries}``.
    Grid: one row per x axis in ``xs`` ("epoch", "time"); columns: the training loss (the
    weighted total, solid, and the unweighted ``loss_terms`` dashed / dotted, log scale),
    then one column per COCO stat in ``metrics``. One colour per run.
    lr_drop: draw the learning-rate drop (its epoch) on the epoch row.
    axes: an array (len(xs), 1 + len(metrics)) of Axes to draw into. Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

    runs = _as_runs(logs)
    xs = tuple(xs)
    ncols = 1 + len(metrics)
    if axes is None:
        fig, axes = plt.subplots(len(xs), ncols, figsize=(3.6 * ncols, 3.2 * len(xs)), squeeze=False,
                                 constrained_layout=True)
    else:
        axes = np.asarray(axes, dtype=object).reshape(len(xs), ncols)
        fig = axes[0, 0].figure
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = dict(colors or {})
    for i, label in enumerate(runs):
        colors.setdefault(label, palette[i % len(palette)])

    for row, x in enumerate(xs):
        xlabel = "epoch" if x == "epoch" else time_label
        ax = axes[row, 0]
        for label, entries in runs.items():
            ex, ey = curve(entries, "train_loss", x)
            ax.plot(ex, ey, color=colors[label], marker="o", markersize=2.5, label=label)
            for term in loss_terms:
                tx, ty = curve(entries, f"train_{term}", x)
                ax.plot(tx, ty, color=colors[label], linestyle=_TERM_STYLES.get(term, "--"), linewidth=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title("training loss")
        ax.set_xlabel(xlabel)
        for col, metric in enumerate(metrics, start=1):
            ax = axes[row, col]
            for label, entries in runs.items():
                mx, my = curve(entries, f"test_{metric}", x)
                ax.plot(mx, my, color=colors[label], marker="o", markersize=2.5, label=label)
            ax.set_title(f"val {metric}")
            ax.set_xlabel(xlabel)
            ax.set_ylim(bottom=0)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            if x == "epoch":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if lr_drop is not None and x == "epoch":
            for ax in axes[row]:
                ax.axvline(lr_drop + 0.5, color="gray", linestyle=":", linewidth=1)
            axes[row, -1].text(lr_drop + 0.5, 0.02, " lr x0.1", color="gray", fontsize=8, rotation=90,
                               va="bottom", transform=axes[row, -1].get_xaxis_transform())
    # Legends: runs (colours) on the first metric panel, loss terms (line styles) on the loss panel.
    first_metric = axes[0, 1] if ncols > 1 else axes[0, 0]
    first_metric.legend(loc="best", fontsize=8)
    styles = [Line2D([], [], color="gray", label="total (weighted)")]
    styles += [Line2D([], [], color="gray", linestyle=_TERM_STYLES.get(t, "--"), linewidth=1, label=t)
               for t in loss_terms]
    axes[0, 0].legend(handles=styles, loc="best", fontsize=7)
    if title:
        fig.suptitle(title)
    return fig
