"""Tests of the multi-scale deformable attention kernels (``ddetr_lib.kernels``).

What is compared with what:
* the naive loop (``kernels/naive.py``) and the ``grid_sample`` reference against a
  hand-computed case, and the reference against the naive loop;
* every other backend against the reference: output and the three gradients,
  float64 (tight) and float32 (relative 1e-4), over random, border and
  out-of-range locations, 1-pixel levels, several batch sizes and the official
  op's channel sweep (D = 30, 32, 64, 71, 1025);
* ``torch.autograd.gradcheck`` on small float64 cases;
* the CUDA kernel in Numba's simulator (``-m cudasim``), in a subprocess with
  ``NUMBA_ENABLE_CUDASIM=1`` (the variable must be set before Numba is imported);
* the CUDA kernel on a real GPU (``-m gpu``, skipped without one);
* the input checks: every bad argument raises a ``ValueError`` naming it.

This file doubles as the simulator worker: ``python tests/test_kernels.py --cudasim-worker``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ddetr_lib.kernels import (
    available_backends,
    level_start_index_from_shapes,
    ms_deform_attn,
    ms_deform_attn_naive,
    ms_deform_attn_torch,
)

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def make_case(N=2, Lq=5, M=2, D=8, shapes=((4, 6), (2, 3)), P=2, dtype=torch.float64, seed=0,
              loc_mode="random", device="cpu"):
    """Random inputs. ``loc_mode``: "random" (in [-0.2, 1.2]), "inside" ([0, 1]) or "border" (exact edges)."""
    g = torch.Generator().manual_seed(seed)
    ss = torch.tensor(shapes, dtype=torch.int64)
    L = len(shapes)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(N, S, M, D, generator=g, dtype=dtype)
    if loc_mode == "random":
        loc = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype) * 1.4 - 0.2
    elif loc_mode == "inside":
        loc = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype)
    elif loc_mode == "border":
        # Locations k / (2 * size): exactly on pixel centres and pixel edges, 0, 1, and just outside
        # (k from -2 to 2 * size + 2). With power-of-two sizes all of this is exact in floating point,
        # so every implementation takes the same side of each bilinear kink.
        loc = torch.empty(N, Lq, M, L, P, 2, dtype=dtype)
        for lid, (h, w) in enumerate(shapes):
            for axis, size in ((0, w), (1, h)):
                k = torch.randint(-2, 2 * size + 3, (N, Lq, M, P), generator=g)
                loc[:, :, :, lid, :, axis] = k.to(dtype) / (2 * size)
    else:
        raise ValueError(loc_mode)
    attn = torch.randn(N, Lq, M, L * P, generator=g, dtype=dtype).softmax(-1).view(N, Lq, M, L, P)
    tensors = [value, ss, level_start_index_from_shapes(ss), loc, attn]
    return tuple(t.to(device) for t in tensors)


def run_with_grads(inputs, backend, seed=1):
    """Output and the gradients of <output, random grad_out> w.r.t. value, locations and weights."""
    value, ss, lsi, loc, attn = [t.detach().clone() for t in inputs]
    for t in (value, loc, attn):
        t.requires_grad_(True)
    out = ms_deform_attn(value, ss, lsi, loc, attn, backend=backend)
    g = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, (value, loc, attn), grad_out)
    return (out.detach(),) + tuple(grads)


NAMES = ("out", "grad_value", "grad_sampling_locations", "grad_attention_weights")


def assert_matches(got, want, dtype):
    for name, a, b in zip(NAMES, got, want):
        assert a.shape == b.shape, name
        scale = max(1.0, b.abs().max().item())
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10 * scale, msg=lambda m: f"{name}: {m}")
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


# Cases for the CPU backends: (id, kwargs of make_case).
CASES = [
    ("basic", dict()),
    ("batch1", dict(N=1, Lq=7, M=3, D=5)),
    ("batch3_L3_P3", dict(N=3, Lq=4, M=2, D=6, shapes=((5, 7), (3, 2), (1, 1)), P=3)),
    ("one_pixel_levels", dict(N=2, Lq=6, M=2, D=4, shapes=((1, 1), (1, 1)), P=4)),
    ("border_exact", dict(N=2, Lq=8, M=2, D=7, shapes=((4, 8), (2, 2), (1, 1)), P=3, loc_mode="border")),
    ("far_outside", dict(N=1, Lq=6, M=2, D=3, shapes=((3, 3),), P=2, seed=5)),
    ("D30", dict(N=1, Lq=4, M=2, D=30, shapes=((6, 5), (3, 3)))),
    ("D32", dict(N=2, Lq=4, M=2, D=32, shapes=((6, 5), (3, 3)))),
    ("D64", dict(N=1, Lq=4, M=1, D=64, shapes=((6, 5), (3, 3)))),
    ("D71", dict(N=1, Lq=4, M=2, D=71, shapes=((6, 5), (3, 3)))),
    ("D1025", dict(N=1, Lq=3, M=1, D=1025, shapes=((4, 4), (2, 2)))),
    ("many_heads_L4_P4", dict(N=2, Lq=9, M=8, D=4, shapes=((8, 8), (4, 4), (2, 2), (1, 1)), P=4)),
]


# --------------------------------------------------------------------------------------
# The reference against independent computations
# --------------------------------------------------------------------------------------


def test_reference_hand_computed():
    """A 2 x 2 map with values 1, 2 / 3, 4 (one channel): centre, corner pixels, edges, outside."""
    value = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).view(1, 4, 1, 1)  # (N, S, M, D)
    ss = torch.tensor([[2, 2]])
    lsi = torch.tensor([0])
    # (x, y) -> expected. Pixel = loc * 2 - 0.5: loc 0.25 is pixel 0's centre, 0.75 pixel 1's.
    points = [
        ((0.5, 0.5), 2.5),      # centre: average of the four pixels
        ((0.25, 0.25), 1.0),    # centre of pixel (0, 0)
        ((0.75, 0.75), 4.0),    # centre of pixel (1, 1)
        ((0.5, 0.25), 1.5),     # between pixels (0, 0) and (0, 1)
        ((0.0, 0.0), 0.25),     # top-left corner of the map: pixel -0.5, only 1/4 of pixel (0, 0)
        ((1.0, 0.25), 1.0),     # right edge, row 0: half of pixel (0, 1) = 2 / 2
        ((-0.3, 0.5), 0.0),     # entirely outside
        ((0.5, 1.2), 0.35),     # pixel y = 1.9: 0.1 of row 1 (average 3.5)
        ((0.5, 1.3), 0.0),      # pixel y = 2.1: below the map
    ]
    loc = torch.tensor([p for p, _ in points], dtype=torch.float64).view(1, len(points), 1, 1, 1, 2)
    attn = torch.ones(1, len(points), 1, 1, 1, dtype=torch.float64)
    expected = torch.tensor([e for _, e in points], dtype=torch.float64).view(1, len(points), 1)
    for fn in (ms_deform_attn_torch, ms_deform_attn_naive):
        out = fn(value, ss, lsi, loc, attn)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12, msg=lambda m: f"{fn.__name__}: {m}")


@pytest.mark.parametrize("loc_mode", ["random", "border"])
def test_reference_matches_naive_loop(loc_mode):
    value, ss, lsi, loc, attn = make_case(N=2, Lq=3, M=2, D=3, shapes=((4, 4), (2, 1)), P=2, loc_mode=loc_mode)
    want = ms_deform_attn_naive(value, ss, lsi, loc, attn)
    got = ms_deform_attn_torch(value, ss, lsi, loc, attn)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_naive_loop_gradients_match_reference():
    """Autograd through the naive loop gives the reference's three gradients (away from pixel edges)."""
    inputs = make_case(N=1, Lq=3, M=2, D=3, shapes=((4, 4), (2, 1)), P=2, seed=2)
    value, ss, lsi, loc, attn = [t.detach().clone() for t in inputs]
    for t in (value, loc, attn):
        t.requires_grad_(True)
    out = ms_deform_attn_naive(value, ss, lsi, loc, attn)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    got = (out.detach(),) + torch.autograd.grad(out, (value, loc, attn), grad_out)
    assert_matches(got, run_with_grads(inputs, "torch"), torch.float64)


# --------------------------------------------------------------------------------------
# CPU backends against the reference
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_numba_cpu_matches_reference(case, dtype):
    inputs = make_case(dtype=dtype, **case)
    assert_matches(run_with_grads(inputs, "numba_cpu"), run_with_grads(inputs, "torch"), dtype)


def test_numba_cpu_channel_blocks():
    """Few heads and long channels: the backward splits each head into channel blocks."""
    from ddetr_lib.kernels import numba_cpu

    assert numba_cpu._choose_n_chunks(1, 64) > 1
    inputs = make_case(N=1, Lq=5, M=1, D=64, shapes=((5, 5), (2, 3)), P=3)
    assert_matches(run_with_grads(inputs, "numba_cpu"), run_with_grads(inputs, "torch"), torch.float64)


def test_numba_cpu_partial_requires_grad():
    """Only some inputs require gradients (e.g. a frozen value projection)."""
    value, ss, lsi, loc, attn = make_case()
    loc = loc.clone().requires_grad_(True)
    out = ms_deform_attn(value, ss, lsi, loc, attn, backend="numba_cpu")
    (g_cpu,) = torch.autograd.grad(out.sum(), loc)
    loc2 = loc.detach().clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ms_deform_attn(value, ss, lsi, loc2, attn, backend="torch").sum(), loc2)
    torch.testing.assert_close(g_cpu, g_ref, rtol=0, atol=1e-10)


def test_non_contiguous_inputs():
    value, ss, lsi, loc, attn = make_case(N=2, Lq=4, M=2, D=6)
    value_nc = value.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    assert not value_nc.is_contiguous()
    got = ms_deform_attn(value_nc, ss, lsi, loc, attn, backend="numba_cpu")
    torch.testing.assert_close(got, ms_deform_attn_torch(value, ss, lsi, loc, attn), rtol=0, atol=1e-12)


def test_auto_picks_numba_cpu_on_cpu():
    assert available_backends("cpu")[:2] == ["torch", "numba_cpu"]
    inputs = make_case()
    torch.testing.assert_close(ms_deform_attn(*inputs), ms_deform_attn(*inputs, backend="numba_cpu"),
                               rtol=0, atol=0)


def test_empty_queries():
    value, ss, lsi, loc, attn = make_case(Lq=0)
    for backend in ("torch", "numba_cpu"):
        assert ms_deform_attn(value, ss, lsi, loc, attn, backend=backend).shape == (2, 0, 2 * 8)


@pytest.mark.parametrize("backend", ["torch", "numba_cpu"])
def test_gradcheck(backend):
    value, ss, lsi, loc, attn = make_case(N=1, Lq=2, M=2, D=3, shapes=((3, 4), (1, 2)), P=2, seed=3)
    value, loc, attn = (t.requires_grad_(True) for t in (value, loc, attn))
    fn = lambda v, lo, a: ms_deform_attn(v, ss, lsi, lo, a, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-5)


_THREADS_SCRIPT = """
import os, sys, numba, torch
sys.stderr.write("--- torch loaded\\n"); sys.stderr.flush()
from ddetr_lib.kernels import numba_cpu
numba_cpu.start_threads()
print("LAYER", numba.threading_layer(), "LEAKED", os.environ.get("OMP_WAIT_POLICY"))
"""


def test_numba_openmp_workers_sleep_when_idle():
    """start_threads loads Numba's OpenMP runtime with spinning off; PyTorch's runtime and the env are untouched.

    libgomp prints its settings when it loads under OMP_DISPLAY_ENV=VERBOSE: the block before the
    marker is PyTorch's runtime, the block after it Numba's.
    """
    env = dict(os.environ, OMP_DISPLAY_ENV="VERBOSE", PYTHONSAFEPATH="1")
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    layer, leaked = proc.stdout.split()[1::2][-2:]
    assert leaked == "None", "OMP_WAIT_POLICY was left in the environment"
    if layer != "omp":
        pytest.skip(f"Numba uses the {layer} threading layer here, not OpenMP")
    torch_part, numba_part = proc.stderr.split("--- torch loaded")
    if "OPENMP DISPLAY ENVIRONMENT" not in numba_part:
        pytest.skip("Numba shares PyTorch's OpenMP runtime here: one pool, nothing to tune")
    assert "GOMP_SPINCOUNT = '0'" in numba_part, numba_part[-1500:]
    assert "GOMP_SPINCOUNT = '0'" not in torch_part, torch_part[-1500:]


def test_level_start_index_from_shapes():
    ss = torch.tensor([[100, 167], [50, 84], [25, 42], [13, 21]])
    assert level_start_index_from_shapes(ss).tolist() == [0, 16700, 20900, 21950]


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


def _bad_inputs():
    """(argument name expected in the message, function making bad arguments from good ones)."""
    def edit(**changes):
        def make():
            args = dict(zip(("value", "spatial_shapes", "level_start_index", "sampling_locations",
                             "attention_weights"), make_case()))
            args.update({k: (v(args) if callable(v) else v) for k, v in changes.items()})
            return args
        return make

    return [
        ("value", edit(value=lambda a: a["value"][0])),                                   # 3 dims
        ("value", edit(value=lambda a: a["value"].to(torch.int64))),                      # dtype
        ("value", edit(value=lambda a: a["value"][:, :-1])),                              # S too small
        ("value", edit(value=[1.0])),                                                     # not a tensor
        ("spatial_shapes", edit(spatial_shapes=lambda a: a["spatial_shapes"].flatten())),
        ("spatial_shapes", edit(spatial_shapes=lambda a: a["spatial_shapes"].double())),
        ("spatial_shapes", edit(spatial_shapes=lambda a: a["spatial_shapes"][:, :1])),
        ("spatial_shapes", edit(spatial_shapes=lambda a: a["spatial_shapes"].flip(1) * 0)),
        ("level_start_index", edit(level_start_index=lambda a: a["level_start_index"][:1])),
        ("level_start_index", edit(level_start_index=lambda a: a["level_start_index"] + 1)),
        ("level_start_index", edit(level_start_index=lambda a: a["level_start_index"][None])),
        ("sampling_locations", edit(sampling_locations=lambda a: a["sampling_locations"][..., :1])),
        ("sampling_locations", edit(sampling_locations=lambda a: a["sampling_locations"][:, :, :1])),
        ("sampling_locations", edit(sampling_locations=lambda a: a["sampling_locations"][:, :, :, :1])),
        ("sampling_locations", edit(sampling_locations=lambda a: a["sampling_locations"].float())),
        ("sampling_locations", edit(sampling_locations=lambda a: a["sampling_locations"][0])),
        ("attention_weights", edit(attention_weights=lambda a: a["attention_weights"][..., :1])),
        ("attention_weights", edit(attention_weights=lambda a: a["attention_weights"].float())),
        ("attention_weights", edit(attention_weights=lambda a: a["attention_weights"][:, :-1])),
        ("attention_weights", edit(attention_weights=lambda a: a["attention_weights"].to("meta"))),
    ]


@pytest.mark.parametrize("name,make", _bad_inputs(), ids=[f"{i}-{n}" for i, (n, _) in enumerate(_bad_inputs())])
def test_bad_argument_raises_value_error_naming_it(name, make):
    with pytest.raises(ValueError, match=name):
        ms_deform_attn(**make())


@pytest.mark.parametrize("backend", ["nope", "cuda", None])
def test_unknown_backend(backend):
    with pytest.raises(ValueError, match="backend"):
        ms_deform_attn(*make_case(), backend=backend)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_numba_cuda_unavailable_without_gpu_or_simulator():
    import numba

    if numba.config.ENABLE_CUDASIM:
        pytest.skip("NUMBA_ENABLE_CUDASIM is set for the whole run")
    assert "numba_cuda" not in available_backends("cpu")
    with pytest.raises(ValueError, match="backend"):
        ms_deform_attn(*make_case(), backend="numba_cuda")


def test_numba_cuda_module_imports_without_gpu():
    """Importing the CUDA backend (and choosing its launch shape) touches no driver."""
    from ddetr_lib.kernels import numba_cuda

    assert [numba_cuda.pick_group_size(d) for d in (1, 4, 5, 30, 32, 64, 71, 256, 1025)] == \
        [1, 1, 2, 8, 8, 16, 32, 32, 32]


# --------------------------------------------------------------------------------------
# The CUDA kernel in Numba's simulator (subprocess with NUMBA_ENABLE_CUDASIM=1)
# --------------------------------------------------------------------------------------

# Tiny cases: the simulator runs one Python thread per CUDA thread.
# (id, make_case kwargs, group_size override or None, dtype name)
SIM_CASES = [
    ("f64_default", dict(N=1, Lq=3, M=2, D=5, shapes=((3, 4), (1, 1)), P=2), None, "float64"),
    ("f32_default", dict(N=1, Lq=3, M=2, D=8, shapes=((3, 4), (2, 2)), P=2), None, "float32"),
    ("f64_lanes4_partial", dict(N=1, Lq=2, M=2, D=7, shapes=((2, 4),), P=2), 4, "float64"),
    ("f64_two_tiles", dict(N=1, Lq=2, M=1, D=20, shapes=((2, 2), (1, 1)), P=2), 2, "float64"),
    ("f64_border", dict(N=1, Lq=3, M=2, D=3, shapes=((2, 4), (1, 1)), P=2, loc_mode="border"), 2, "float64"),
    ("f64_batch2", dict(N=2, Lq=2, M=1, D=4, shapes=((2, 2),), P=1), None, "float64"),
]


def _cudasim_worker() -> int:
    """Run SIM_CASES through backend="numba_cuda" (the simulator) and print JSON results."""
    import numba

    from ddetr_lib.kernels import numba_cuda

    assert numba.config.ENABLE_CUDASIM, "NUMBA_ENABLE_CUDASIM=1 must be set"
    assert "numba_cuda" in available_backends("cpu")
    results = {}
    for name, kw, group_size, dtype_name in SIM_CASES:
        dtype = getattr(torch, dtype_name)
        inputs = make_case(dtype=dtype, **kw)
        want = run_with_grads(inputs, "torch")
        value, ss, lsi, loc, attn = [t.clone() for t in inputs]
        for t in (value, loc, attn):
            t.requires_grad_(True)
        out = numba_cuda.ms_deform_attn_numba_cuda(value, ss, lsi, loc, attn, group_size=group_size)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        got = (out.detach(),) + torch.autograd.grad(out, (value, loc, attn), grad_out)
        try:
            assert_matches(got, want, dtype)
            results[name] = "ok"
        except AssertionError as e:
            results[name] = str(e)
    # The public entry point in the simulator, and gradcheck of the simulated kernel.
    inputs = make_case(N=1, Lq=2, M=1, D=2, shapes=((2, 3),), P=2, seed=4)
    torch.testing.assert_close(ms_deform_attn(*inputs, backend="numba_cuda"), ms_deform_attn_torch(*inputs))
    value, ss, lsi, loc, attn = inputs
    value, loc, attn = (t.requires_grad_(True) for t in (value, loc, attn))
    fn = lambda v, lo, a: ms_deform_attn(v, ss, lsi, lo, a, backend="numba_cuda")  # noqa: E731
    results["gradcheck"] = "ok" if torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-5) else "fail"
    print("CUDASIM_RESULTS " + json.dumps(results))
    return 0


@pytest.fixture(scope="module")
def cudasim_results():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONSAFEPATH="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--cudasim-worker"],
                          capture_output=True, text=True, env=env, timeout=300)
    for line in proc.stdout.splitlines():
        if line.startswith("CUDASIM_RESULTS "):
            return json.loads(line[len("CUDASIM_RESULTS "):])
    pytest.fail(f"simulator worker failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@pytest.mark.cudasim
@pytest.mark.parametrize("name", [c[0] for c in SIM_CASES] + ["gradcheck"])
def test_numba_cuda_in_simulator(cudasim_results, name):
    assert cudasim_results[name] == "ok", cudasim_results[name]


# --------------------------------------------------------------------------------------
# The CUDA kernel on a real GPU
# --------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

GPU_CASES = [c for c in CASES if c[0] in ("basic", "batch3_L3_P3", "one_pixel_levels", "border_exact",
                                         "far_outside", "D30", "D32", "D71", "D1025", "many_heads_L4_P4")]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("reduction", ["shuffle", "shared"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", [c[1] for c in GPU_CASES], ids=[c[0] for c in GPU_CASES])
def test_numba_cuda_matches_reference_on_gpu(case, dtype, reduction):
    from ddetr_lib.kernels import numba_cuda

    inputs = make_case(dtype=dtype, device="cuda", **case)
    want = run_with_grads(inputs, "torch")
    value, ss, lsi, loc, attn = [t.clone() for t in inputs]
    for t in (value, loc, attn):
        t.requires_grad_(True)
    out = numba_cuda.ms_deform_attn_numba_cuda(value, ss, lsi, loc, attn, reduction=reduction)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=dtype).cuda()
    got = (out.detach(),) + torch.autograd.grad(out, (value, loc, attn), grad_out)
    assert_matches(got, want, dtype)


@pytest.mark.gpu
@needs_gpu
def test_numba_cuda_auto_and_gradcheck_on_gpu():
    inputs = make_case(N=1, Lq=3, M=2, D=3, shapes=((3, 4), (1, 2)), P=2, seed=3, device="cuda")
    assert "numba_cuda" in available_backends("cuda")
    torch.testing.assert_close(ms_deform_attn(*inputs), ms_deform_attn(*inputs, backend="numba_cuda"),
                               rtol=0, atol=0)
    value, ss, lsi, loc, attn = inputs
    value, loc, attn = (t.requires_grad_(True) for t in (value, loc, attn))
    fn = lambda v, lo, a: ms_deform_attn(v, ss, lsi, lo, a, backend="numba_cuda")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_numba_cuda_runs_on_current_stream():
    """Work queued on a side stream is ordered with the kernel (no explicit sync needed)."""
    inputs = make_case(N=2, Lq=50, M=4, D=32, shapes=((20, 20), (10, 10)), P=4, dtype=torch.float32, device="cuda")
    want = ms_deform_attn(*inputs, backend="torch")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = ms_deform_attn(*inputs, backend="numba_cuda")
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


if __name__ == "__main__":
    if "--cudasim-worker" in sys.argv:
        sys.exit(_cudasim_worker())
