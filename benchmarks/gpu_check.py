"""GPU check: compare and time the Numba CUDA kernel against the reference at COCO shapes.

On a CUDA machine (``scripts/gpu_check.sh`` calls this)::

    PYTHONSAFEPATH=1 python benchmarks/gpu_check.py --out benchmarks/results --kind h100

writes ``OUT/gpu_<kind>_<date>.json``::

    {"device": ..., "torch": ..., "numba_cuda": ..., "date": ...,
     "cases": [{"name": "encoder_coco", "shape": {N, Lq, M, D, L, P, spatial_shapes},
                "torch":      {"fwd_ms": ..., "fwd_bwd_ms": ...},
                "numba_cuda": {"fwd_ms": ..., "fwd_bwd_ms": ..., "speedup_fwd": ..., "speedup_fwd_bwd": ...,
                               "max_abs_err": {"out": ..., "grad_value": ...,
                                               "grad_sampling_locations": ..., "grad_attention_weights": ...}}},
               ...]}

``--dry-run`` runs the same code on the CPU with tiny shapes, the CUDA kernel in
Numba's simulator (it re-runs itself with ``NUMBA_ENABLE_CUDASIM=1``), so that
the script is known to work before GPU minutes are spent on it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

# The timing helpers live beside this file, in benchmarks/kernel_bench.py (this folder is not a package).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _max_abs_errors(shape, device, dtype, backend):
    """max |numba_cuda - torch| of the output and of each gradient, on the same inputs."""
    import torch

    from kernel_bench import make_inputs, run_once

    inputs = make_inputs(shape, device=device, dtype=dtype, requires_grad=True, seed=123)
    grad_out = torch.randn(shape.N, shape.Lq, shape.M * shape.D, dtype=dtype,
                           generator=torch.Generator().manual_seed(7)).to(device)
    out_ref, grads_ref = run_once(inputs, "torch", True, grad_out)
    out_ref, grads_ref = out_ref.detach().clone(), [g.clone() for g in grads_ref]
    out, grads = run_once(inputs, backend, True, grad_out)
    names = ("out", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    errors = {}
    for name, a, b in zip(names, [out.detach()] + list(grads), [out_ref] + grads_ref):
        errors[name] = float((a - b).abs().max())
    scale = {name: float(b.abs().max()) for name, b in zip(names, [out_ref] + grads_ref)}
    return errors, scale


def run_check(device: str, shapes, repeats: int, warmup: int, backend: str = "numba_cuda") -> dict:
    import numba
    import torch

    from kernel_bench import time_backends

    try:
        from importlib.metadata import version

        numba_cuda_version = version("numba-cuda")
    except Exception:  # pragma: no cover - depends on the installation
        numba_cuda_version = "unknown"
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run, CUDA simulator)",
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numba_cuda": numba_cuda_version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "dtype": "float32",
        "cases": [],
    }
    for shape in shapes:
        t0 = time.perf_counter()
        errors, scale = _max_abs_errors(shape, device, torch.float32, backend)
        timing = time_backends(shape, ("torch", backend), device=device, repeats=repeats, warmup=warmup)
        case = {
            "name": shape.name,
            "shape": shape.as_dict(),
            "torch": {"fwd_ms": timing["torch"]["fwd_ms"], "fwd_bwd_ms": timing["torch"]["fwd_bwd_ms"]},
            "numba_cuda": {
                "fwd_ms": timing[backend]["fwd_ms"],
                "fwd_bwd_ms": timing[backend]["fwd_bwd_ms"],
                "speedup_fwd": timing[backend]["fwd_speedup"],
                "speedup_fwd_bwd": timing[backend]["fwd_bwd_speedup"],
                "first_call_s": timing[backend]["first_call_s"],
                "max_abs_err": errors,
                "max_abs_ref": scale,
            },
        }
        report["cases"].append(case)
        print(f"{shape.name:<14} torch fwd {case['torch']['fwd_ms']:9.3f} ms  fwd+bwd {case['torch']['fwd_bwd_ms']:9.3f} ms"
              f" | numba_cuda fwd {case['numba_cuda']['fwd_ms']:9.3f} ms  fwd+bwd "
              f"{case['numba_cuda']['fwd_bwd_ms']:9.3f} ms  (x{case['numba_cuda']['speedup_fwd_bwd']:.1f})"
              f" | max abs err {max(errors.values()):.2e}  [{time.perf_counter() - t0:.1f} s]", flush=True)
    return report


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"), help="output folder")
    parser.add_argument("--kind", default=None, help="machine name for the file name (default: from the device)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes on the CPU, CUDA kernel in Numba's simulator")
    args = parser.parse_args(argv)

    if args.dry_run and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        # The simulator must be chosen before Numba is imported: start again with it on.
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONSAFEPATH="1")
        return subprocess.call([sys.executable, os.path.abspath(__file__), *argv], env=env)

    import torch

    from kernel_bench import DECODER_COCO, ENCODER_COCO, Shape

    if args.dry_run:
        device = "cpu"
        shapes = (
            Shape("encoder_tiny", N=2, Lq=5, M=2, D=4, P=2, spatial_shapes=((2, 3), (1, 2))),
            Shape("decoder_tiny", N=2, Lq=2, M=2, D=3, P=2, spatial_shapes=((3, 3), (2, 2))),
        )
        repeats, warmup = min(args.repeats, 2), 0
        kind = args.kind or "dryrun"
    else:
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device (use --dry-run to test the script on the CPU)", file=sys.stderr)
            return 2
        device = "cuda"
        shapes = (ENCODER_COCO, DECODER_COCO)
        repeats, warmup = args.repeats, args.warmup
        kind = args.kind or _slug(torch.cuda.get_device_name())

    report = run_check(device, shapes, repeats, warmup)
    report["kind"] = kind
    report["dry_run"] = bool(args.dry_run)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu_{_slug(kind)}_{time.strftime('%Y-%m-%d')}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {path}")
    # A wrong kernel must not look like a success.
    worst = max(max(c["numba_cuda"]["max_abs_err"][k] / max(1.0, c["numba_cuda"]["max_abs_ref"][k])
                    for k in c["numba_cuda"]["max_abs_err"]) for c in report["cases"])
    if worst > 1e-3:
        print(f"gpu_check: numba_cuda differs from the reference (relative error {worst:.2e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
