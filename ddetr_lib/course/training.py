"""Launch a training run as a child process and follow it live (notebook 12).

    run = TrainingRun.start(["--config", "toy_deformable_detr", "--data-root", str(root)], "outputs/run")
    run.dashboard()      # progress bar, live loss / lr / AP plot, a stop button (updates in the background)
    run.wait()           # 0: finished, 75: stopped with a checkpoint (resume with --resume)
    run.epochs()[-1]     # the last line of log.jsonl

The run is an ordinary ``python -m ddetr_lib.train`` (or ``torchrun`` with several GPUs) in its
own process group, so the notebook's kernel stays responsive and a crash of one does not take
down the other. Everything the dashboard shows is read from the files the trainer writes:
``metrics.jsonl`` (every few steps), ``log.jsonl`` (every epoch) and ``config.json``.
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

EXIT_STOPPED = 75  # the trainer's exit code after SIGTERM / SIGINT: checkpoint written, resume me


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete lines of a JSON-lines file that another process may still be writing."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            break
    return rows


def train_command(args: Sequence[str], nproc: int = 1) -> list[str]:
    """``python -m ddetr_lib.train ARGS``, or the same under ``torchrun`` for ``nproc`` > 1 processes."""
    if nproc < 1:
        raise ValueError(f"nproc: expected >= 1, got {nproc}")
    if nproc == 1:
        return [sys.executable, "-m", "ddetr_lib.train", *map(str, args)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ddetr_lib.train", *map(str, args)]


class TrainingRun:
    """A training process writing into ``output_dir``, with readers for what it writes."""

    def __init__(self, process: subprocess.Popen, output_dir: Path, command: list[str]):
        self.process, self.output_dir, self.command = process, Path(output_dir), command
        self._watcher: threading.Thread | None = None

    @classmethod
    def start(cls, args: Sequence[str], output_dir: str | os.PathLike, nproc: int = 1) -> "TrainingRun":
        """Start ``python -m ddetr_lib.train ARGS --output-dir OUTPUT_DIR`` in the background.

        Its console output goes to ``OUTPUT_DIR/train.out``.
        """
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        flags = [str(a) for a in args]
        if "--overwrite" in flags and "--resume" not in flags:
            # The trainer removes an earlier run's logs too, but only once it has started: clear
            # them now, so that nothing reads the old run's progress meanwhile.
            for name in ("metrics.jsonl", "log.jsonl", "eval.json"):
                (output_dir / name).unlink(missing_ok=True)
        command = train_command([*args, "--output-dir", str(output_dir)], nproc)
        env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1")
        # A resumed run adds to the console log of the run it continues; a new run starts it afresh.
        out = open(output_dir / "train.out", "a" if "--resume" in flags else "w")
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        out.close()  # the child keeps its own handle
        return cls(process, output_dir, command)

    # ------------------------------------------------------------------ control
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Ask the run to stop: it finishes its step, writes ``checkpoint.pth`` and exits with 75."""
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)  # the whole group: torchrun and its workers

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end; return its exit code (0 done, 75 stopped)."""
        code = self.process.wait(timeout)
        if self._watcher is not None:
            self._watcher.join()
        return code

    # ------------------------------------------------------------------ what it wrote
    def metrics(self) -> list[dict]:
        return read_jsonl(self.output_dir / "metrics.jsonl")

    def epochs(self) -> list[dict]:
        return read_jsonl(self.output_dir / "log.jsonl")

    def console(self, lines: int = 20) -> str:
        path = self.output_dir / "train.out"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def total_epochs(self) -> int | None:
        path = self.output_dir / "config.json"
        return json.loads(path.read_text()).get("epochs") if path.exists() else None

    def progress(self) -> dict:
        """Steps done and planned, epoch, speed and time left, from the latest metrics line."""
        rows = self.metrics()
        if not rows:
            return {"step": 0, "total": None, "epoch": 0, "it_per_s": None, "eta_s": None}
        last = rows[-1]
        epochs = self.total_epochs() or last["epoch"] + 1
        total = epochs * last["iters_per_epoch"]
        recent = [r["sec_per_step"] for r in rows[-5:]]
        sec = sum(recent) / len(recent)
        return {"step": last["step"], "total": total, "epoch": last["epoch"], "it_per_s": 1.0 / sec,
                "eta_s": max(total - last["step"], 0) * sec}

    # ------------------------------------------------------------------ pictures
    def figure_png(self) -> bytes:
        """The live plot as PNG bytes: loss terms and lr per step, AP / AP50 / AP_small per evaluation."""
        from matplotlib.figure import Figure  # object-oriented: safe outside the main thread

        rows, epochs = self.metrics(), self.epochs()
        fig = Figure(figsize=(11, 3.4))
        ax_loss, ax_lr, ax_ap = fig.subplots(1, 3)
        if rows:
            steps = [r["step"] for r in rows]
            terms = [k for k in ("loss", "loss_ce", "loss_bbox", "loss_giou", "loss_ce_enc") if k in rows[0]]
            for k in terms:
                ax_loss.plot(steps, [r[k] for r in rows], label=k, lw=1.2)
            ax_loss.legend(fontsize=7)
            ax_lr.plot(steps, [r["lr"] for r in rows], color="tab:purple")
            ax_lr.set_yscale("log")
        evaluated = [e for e in epochs if "test_AP" in e]
        for k, style in (("AP", "o-"), ("AP50", "s--"), ("AP_small", "^:")):
            if evaluated:
                ax_ap.plot([e["epoch"] + 1 for e in evaluated], [e[f"test_{k}"] for e in evaluated], style, label=k)
        if evaluated:
            ax_ap.legend(fontsize=7)
        for ax, title, xlabel in ((ax_loss, "weighted losses (last layer)", "step"), (ax_lr, "learning rate", "step"),
                                  (ax_ap, "COCO AP on val", "epoch")):
            ax.set_title(title, fontsize=10); ax.set_xlabel(xlabel); ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        return buffer.getvalue()

    def status_text(self) -> str:
        p = self.progress()
        code = self.process.poll()
        state = {None: "running", 0: "finished", EXIT_STOPPED: "stopped (checkpoint written)"}.get(code, f"failed (exit {code})")
        if p["total"] is None:
            return f"{state}: starting (reading data, building the model) ..."
        eta = "" if p["eta_s"] is None or code is not None else f", about {p['eta_s'] / 60:.1f} min left"
        return (f"{state}: epoch {p['epoch'] + 1}/{self.total_epochs()}, step {p['step']}/{p['total']}, "
                f"{p['it_per_s']:.2f} it/s{eta}")

    def dashboard(self, refresh_s: float = 2.0):
        """An ipywidgets panel (progress bar, status line, live plot, stop button) that a
        background thread refreshes every ``refresh_s`` seconds until the process ends."""
        import ipywidgets as widgets

        bar = widgets.IntProgress(value=0, min=0, max=1, description="steps", layout=widgets.Layout(width="60%"))
        status = widgets.HTML()
        image = widgets.Image(format="png")
        stop = widgets.Button(description="stop (checkpoint)", button_style="warning", icon="stop")
        stop.on_click(lambda _: self.stop())

        def refresh():
            p = self.progress()
            if p["total"]:
                bar.max, bar.value = p["total"], min(p["step"], p["total"])
            status.value = f"<code>{self.status_text()}</code>"
            image.value = self.figure_png()
            stop.disabled = not self.running()

        def loop():
            while self.running():
                refresh()
                time.sleep(refresh_s)
            refresh()

        refresh()
        self._watcher = threading.Thread(target=loop, daemon=True)
        self._watcher.start()
        return widgets.VBox([widgets.HBox([bar, stop]), status, image])
