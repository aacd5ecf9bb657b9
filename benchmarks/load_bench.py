"""Speed under load: training steps with and without other processes keeping cores busy.

On a learner's laptop something else is always running. This script times the same
training steps in two conditions, side by side in one run:

* ``quiet``: only this process (plus whatever the machine is already doing);
* ``busy``: ``--busy-cores N`` extra processes that each spin a core (``while True``).

The busy processes are started once and paused / resumed (SIGSTOP / SIGCONT) so that
the two conditions alternate on every repeat: quiet, busy, quiet, busy, ... and
within each condition the competitors alternate too. Medians are reported.

Workloads (``--workloads``, comma-separated):

* ``kernel``: one forward + backward of deformable attention alone (encoder of a
  256 x 256 image, B=2): ``numba_cpu`` vs the ``torch`` (grid_sample) reference;
* ``toy``: a training step of ``toy_deformable_detr`` (what ``make demo`` runs, batch 8),
  with our Numba kernel vs the same model on the ``torch`` reference backend;
* ``r50``: a training step of ``deformable_detr_r50`` (B=2, 256 x 256): ours vs
  ``transformers``' DeformableDetr (as in ``train_step_vs_transformers.py``).

For each workload it prints per competitor the quiet and busy medians and the
slow-down (busy / quiet), and the ratio other / ours in both conditions.

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/load_bench.py                       # kernel,toy; 1 busy core
    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/load_bench.py --workloads r50 --repeats 4
    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/load_bench.py --json /tmp/load.json

Run it as the only heavy job you start; on a shared machine the "quiet" condition
still carries everyone else's load, which is why the conditions alternate.
"""
from __future__ import annotations

import os

# Before transformers is imported (r50 workload): no hub kernels, no network.
os.environ.setdefault("USE_HUB_KERNELS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "load_cpu.json"


def _load_sibling(name: str):
    """Import ``benchmarks/<name>.py`` (this folder is not a package)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return importlib.import_module(name)


# ---------------------------------------------------------------------------- busy cores
def _spin() -> None:
    while True:
        pass


class BusyCores:
    """``n`` processes that each keep one core busy while ``on``; paused while ``off``."""

    def __init__(self, n: int):
        ctx = mp.get_context("spawn")  # a fresh interpreter: no OpenMP state copied by fork
        self.procs = [ctx.Process(target=_spin, daemon=True) for _ in range(n)]
        for p in self.procs:
            p.start()
        self.off()

    def _signal(self, sig) -> None:
        for p in self.procs:
            os.kill(p.pid, sig)
        time.sleep(0.05)  # let the scheduler notice

    def on(self) -> None:
        self._signal(signal.SIGCONT)

    def off(self) -> None:
        self._signal(signal.SIGSTOP)

    def close(self) -> None:
        for p in self.procs:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.join()


# ---------------------------------------------------------------------------- workloads
def _set_backend(model: torch.nn.Module, backend: str) -> None:
    for module in model.modules():
        if hasattr(module, "backend") and hasattr(module, "sampling_offsets"):
            module.backend = backend


def kernel_workload():
    """Deformable attention alone, forward + backward: {"numba_cpu": step, "torch": step}."""
    kb = _load_sibling("kernel_bench")
    shape = kb.ENCODER_256
    inputs = kb.make_inputs(shape, requires_grad=True)
    grad_out = torch.randn(shape.N, shape.Lq, shape.M * shape.D, generator=torch.Generator().manual_seed(1))

    def make(backend):
        return lambda: kb.run_once(inputs, backend, True, grad_out)

    return "numba_cpu", {"numba_cpu": make("numba_cpu"), "torch": make("torch")}


def toy_workload(batch_size: int = 8):
    """toy_deformable_detr training steps: our kernel vs the same model on the grid_sample backend."""
    from ddetr_lib.config import get_config
    from ddetr_lib.models import build_criterion, build_model

    toy = _load_sibling("toy_step")
    cfg = get_config("toy_deformable_detr")
    runners = {}
    for backend in ("numba_cpu", "torch"):
        torch.manual_seed(0)
        model = build_model(cfg).train()
        _set_backend(model, backend)
        criterion = build_criterion(cfg).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        batch = toy.random_batch(batch_size, cfg.num_classes, torch.Generator().manual_seed(0))

        def step(model=model, criterion=criterion, params=params, optimizer=optimizer, batch=batch):
            images, targets = batch
            losses = criterion(model(images), targets)
            loss = sum(losses[k] * w for k, w in criterion.weight_dict.items() if k in losses)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_max_norm)
            optimizer.step()

        runners[backend] = step
    return "numba_cpu", runners


def r50_workload():
    """deformable_detr_r50 training steps, B=2, 256 x 256: ours vs transformers."""
    ts = _load_sibling("train_step_vs_transformers")
    ours = ts.Ours(91)
    theirs = ts.Theirs(91, ours.cfg)
    images, targets = ts.random_batch(2, 256, 91, torch.Generator().manual_seed(0))
    return "ours", {"ours": lambda: ours.step(images, targets), "transformers": lambda: theirs.step(images, targets)}


WORKLOADS = {"kernel": kernel_workload, "toy": toy_workload, "r50": r50_workload}


# ---------------------------------------------------------------------------- timing
def measure(runners: dict, busy: BusyCores, repeats: int, warmup: int) -> dict:
    """Alternate quiet / busy, and the runners within each; per runner and condition the times in ms."""
    for name, run in runners.items():
        for _ in range(warmup):
            t0 = time.perf_counter()
            run()
            print(f"  warm-up {name:<13} {(time.perf_counter() - t0) * 1e3:9.1f} ms", flush=True)
    times = {name: {"quiet": [], "busy": []} for name in runners}
    for r in range(repeats):
        for condition in ("quiet", "busy"):
            busy.on() if condition == "busy" else busy.off()
            for name, run in runners.items():
                t0 = time.perf_counter()
                run()
                times[name][condition].append((time.perf_counter() - t0) * 1e3)
                print(f"  round {r + 1}/{repeats} {condition:<5} {name:<13} {times[name][condition][-1]:9.1f} ms",
                      flush=True)
    busy.off()
    return times


def summarise(ours: str, times: dict) -> dict:
    out = {}
    for name, per in times.items():
        quiet, busy = statistics.median(per["quiet"]), statistics.median(per["busy"])
        out[name] = {"quiet_ms": quiet, "busy_ms": busy, "slowdown": busy / quiet,
                     "quiet_all_ms": per["quiet"], "busy_all_ms": per["busy"]}
    for name in times:
        if name != ours:
            out[name]["ratio_over_ours"] = {c: out[name][f"{c}_ms"] / out[ours][f"{c}_ms"] for c in ("quiet", "busy")}
    return out


def threading_info() -> dict:
    import numba

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        layer = None
    return {"torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads(),
            "numba_threading_layer": layer,
            "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                   "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy-cores", type=int, default=1, help="processes spinning a core in the busy condition")
    ap.add_argument("--workloads", default="kernel,toy", help=f"comma-separated, from {sorted(WORKLOADS)}")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (each: quiet then busy)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)
    names = args.workloads.split(",")
    for name in names:
        if name not in WORKLOADS:
            ap.error(f"--workloads: unknown {name!r}; choose from {sorted(WORKLOADS)}")

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before start; "
          f"busy condition: {args.busy_cores} spinning process(es)", flush=True)
    busy = BusyCores(args.busy_cores)
    results = {}
    try:
        for name in names:
            ours, runners = WORKLOADS[name]()
            times = measure(runners, busy, args.repeats, args.warmup)
            results[name] = summarise(ours, times)
            print(f"\n{name}: median ms (quiet / busy, slow-down)", flush=True)
            for runner, r in results[name].items():
                line = f"  {runner:<13} {r['quiet_ms']:9.1f} / {r['busy_ms']:9.1f}   x{r['slowdown']:.2f}"
                if "ratio_over_ours" in r:
                    q, b = r["ratio_over_ours"]["quiet"], r["ratio_over_ours"]["busy"]
                    line += f"   {runner}/{ours}: quiet {q:.2f}x, busy {b:.2f}x"
                print(line, flush=True)
    finally:
        busy.close()

    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu_count": os.cpu_count(),
              "load_average_end": os.getloadavg(), "busy_cores": args.busy_cores, "repeats": args.repeats,
              "torch": torch.__version__, "threading": threading_info(), "results": results,
              "argv": sys.argv[1:]}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
