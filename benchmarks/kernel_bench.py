"""Side-by-side timings of the deformable-attention backends.

Run from the repository root (``make bench`` runs the first line)::

    PYTHONSAFEPATH=1 python benchmarks/kernel_bench.py                 # CPU, writes benchmarks/results/cpu_bench.json
    PYTHONSAFEPATH=1 python benchmarks/kernel_bench.py --device cuda   # GPU shapes, writes .../cuda_bench.json
    PYTHONSAFEPATH=1 python benchmarks/kernel_bench.py --repeats 20 --json /tmp/b.json

For every shape, every backend is timed in the same run, alternating between
backends on each repeat (so a busy machine slows them alike). We report the
median over repeats after warm-up, for the forward alone (under ``no_grad``)
and for forward + backward, and the speed-up over the ``torch`` reference.
The first call of each Numba backend (compilation, or loading the cache) is
timed separately and reported as ``first_call_s``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch

from ddetr_lib.kernels import level_start_index_from_shapes, ms_deform_attn


@dataclass
class Shape:
    """One benchmark case: batch N, queries Lq, heads M, channels per head D, points P, levels."""

    name: str
    N: int
    Lq: int
    M: int
    D: int
    P: int
    spatial_shapes: tuple

    @property
    def L(self) -> int:
        return len(self.spatial_shapes)

    @property
    def S(self) -> int:
        return sum(h * w for h, w in self.spatial_shapes)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("name")
        d["L"] = self.L
        d["spatial_shapes"] = [list(s) for s in self.spatial_shapes]
        return d


COCO_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))  # an 800 x 1333 image, strides 8..64
IMG256_LEVELS = ((32, 32), (16, 16), (8, 8), (4, 4))  # a 256 x 256 image, strides 8..64

#: Encoder of a 256 x 256 image: every token is a query (1,360).
ENCODER_256 = Shape("encoder_256", N=2, Lq=sum(h * w for h, w in IMG256_LEVELS), M=8, D=32, P=4,
                    spatial_shapes=IMG256_LEVELS)
#: Decoder at COCO size: 300 object queries over 22,223 tokens.
DECODER_COCO = Shape("decoder_coco", N=2, Lq=300, M=8, D=32, P=4, spatial_shapes=COCO_LEVELS)
#: Encoder at COCO size: all 22,223 tokens are queries (GPU only: about 10 s per call on 2 CPU cores).
ENCODER_COCO = Shape("encoder_coco", N=2, Lq=sum(h * w for h, w in COCO_LEVELS), M=8, D=32, P=4,
                     spatial_shapes=COCO_LEVELS)

CPU_SHAPES = (ENCODER_256, DECODER_COCO)
CUDA_SHAPES = (ENCODER_COCO, DECODER_COCO, ENCODER_256)


def make_inputs(shape: Shape, device="cpu", dtype=torch.float32, seed: int = 0, requires_grad: bool = False):
    """Random inputs like a trained layer's: locations in [0, 1] (a few just outside), softmaxed weights.

    Returns ``(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)``.
    """
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shape.spatial_shapes, dtype=torch.int64)
    value = torch.randn(shape.N, shape.S, shape.M, shape.D, generator=g, dtype=dtype)
    # (N, Lq, M, L, P, 2): uniform in [-0.05, 1.05] so that some samples straddle the border.
    loc = torch.rand(shape.N, shape.Lq, shape.M, shape.L, shape.P, 2, generator=g, dtype=dtype) * 1.1 - 0.05
    logits = torch.randn(shape.N, shape.Lq, shape.M, shape.L * shape.P, generator=g, dtype=dtype)
    attn = logits.softmax(-1).view(shape.N, shape.Lq, shape.M, shape.L, shape.P)
    tensors = [value, spatial_shapes, level_start_index_from_shapes(spatial_shapes), loc, attn]
    tensors = [t.to(device) for t in tensors]
    if requires_grad:
        for i in (0, 3, 4):
            tensors[i].requires_grad_(True)
    return tuple(tensors)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall-clock on CPU; CUDA events on a GPU. ``with timer: ...`` then ``timer.ms``."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = device

    def __enter__(self):
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self._end.record()
            self._end.synchronize()
            self.ms = self._start.elapsed_time(self._end)
        else:
            self.ms = (time.perf_counter() - self._t0) * 1e3


def run_once(inputs, backend: str, backward: bool, grad_out=None):
    """One forward (and backward) call. Returns the output and, with backward, the three gradients."""
    value, ss, lsi, loc, attn = inputs
    if not backward:
        with torch.no_grad():
            return ms_deform_attn(value, ss, lsi, loc, attn, backend=backend), None
    for t in (value, loc, attn):
        t.grad = None
    out = ms_deform_attn(value, ss, lsi, loc, attn, backend=backend)
    out.backward(grad_out)
    return out, (value.grad, loc.grad, attn.grad)


def time_backends(shape: Shape, backends, device="cpu", repeats: int = 10, warmup: int = 2,
                  dtype=torch.float32) -> dict:
    """Median forward and forward+backward times (ms) of each backend, measured alternately."""
    inputs = make_inputs(shape, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(shape.N, shape.Lq, shape.M * shape.D, dtype=dtype,
                           generator=torch.Generator().manual_seed(1)).to(device)
    result = {b: {"fwd": [], "fwd_bwd": []} for b in backends}
    first_call = {}
    for b in backends:  # warm-up (the first call compiles or loads the Numba cache)
        t0 = time.perf_counter()
        run_once(inputs, b, True, grad_out)
        _sync(device)
        first_call[b] = time.perf_counter() - t0
        for _ in range(warmup):
            run_once(inputs, b, False)
            run_once(inputs, b, True, grad_out)
        _sync(device)
    for _ in range(repeats):
        for b in backends:
            for kind, bwd in (("fwd", False), ("fwd_bwd", True)):
                with Timer(device) as t:
                    run_once(inputs, b, bwd, grad_out)
                result[b][kind].append(t.ms)
    out = {}
    for b in backends:
        out[b] = {
            "fwd_ms": statistics.median(result[b]["fwd"]),
            "fwd_bwd_ms": statistics.median(result[b]["fwd_bwd"]),
            "first_call_s": first_call[b],
        }
    ref = out.get("torch")
    if ref is not None:
        for b in backends:
            out[b]["fwd_speedup"] = ref["fwd_ms"] / out[b]["fwd_ms"]
            out[b]["fwd_bwd_speedup"] = ref["fwd_bwd_ms"] / out[b]["fwd_bwd_ms"]
    return out


def format_table(results: dict) -> str:
    lines = [f"{'shape':<14} {'backend':<11} {'fwd ms':>9} {'x ref':>7} {'fwd+bwd ms':>11} {'x ref':>7} "
             f"{'first call s':>13}"]
    for name, per_backend in results.items():
        for b, r in per_backend.items():
            lines.append(f"{name:<14} {b:<11} {r['fwd_ms']:9.2f} {r.get('fwd_speedup', float('nan')):7.2f} "
                         f"{r['fwd_bwd_ms']:11.2f} {r.get('fwd_bwd_speedup', float('nan')):7.2f} "
                         f"{r['first_call_s']:13.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None,
                        help="output file (default benchmarks/results/{cpu,cuda}_bench.json)")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of shape names")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench: --device cuda but torch sees no GPU", file=sys.stderr)
        return 2
    if args.device == "cpu":
        shapes, backends = CPU_SHAPES, ("torch", "numba_cpu")
    else:
        shapes, backends = CUDA_SHAPES, ("torch", "numba_cuda")
    if args.shapes:
        wanted = set(args.shapes.split(","))
        shapes = tuple(s for s in shapes if s.name in wanted)

    results = {}
    for shape in shapes:
        results[shape.name] = time_backends(shape, backends, device=args.device, repeats=args.repeats,
                                            warmup=args.warmup)
        print(f"done {shape.name}", file=sys.stderr, flush=True)
    print(format_table(results))

    path = args.json or os.path.join("benchmarks", "results", f"{args.device}_bench.json")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    import numba

    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or "cpu"),
        "cpu_threads": {"torch": torch.get_num_threads(), "numba": numba.get_num_threads()},
        "torch": torch.__version__,
        "numba": numba.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "dtype": "float32",
        "shapes": {s.name: s.as_dict() for s in shapes},
        "results": results,
    }
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
