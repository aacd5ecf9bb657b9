"""Multi-scale deformable attention (installed as ``ddetr_lib.kernels``).

Read in this order:

* ``naive.py``      -- the definition: the paper's Eq. 3 as plain loops, bilinear
  interpolation written out (``ms_deform_attn_naive``). Start here.
* ``reference.py``  -- the same function with ``grid_sample`` (``ms_deform_attn_torch``).
* ``numba_cpu.py``  -- the naive loop plus named optimisations, as Numba CPU kernels
  (the default on CPU).
* ``numba_cuda.py`` -- the same function as Numba CUDA kernels (the default on GPU).
* ``dispatch.py``   -- ``ms_deform_attn``: input checks and the choice of backend.

Side-by-side timings and the GPU check are tools, not kernels: they live in
``benchmarks/kernel_bench.py`` and ``benchmarks/gpu_check.py``.

Typical use inside a model::

    from ddetr_lib.kernels import ms_deform_attn, level_start_index_from_shapes

    level_start_index = level_start_index_from_shapes(spatial_shapes)   # (L,)
    out = ms_deform_attn(value, spatial_shapes, level_start_index,
                         sampling_locations, attention_weights)         # (N, Lq, M*D)

The CUDA module is imported on first use only, so importing this package never
touches the CUDA driver.
"""
from .dispatch import (
    BACKENDS,
    available_backends,
    check_inputs,
    level_start_index_from_shapes,
    ms_deform_attn,
)
from .naive import ms_deform_attn_naive
from .numba_cpu import ms_deform_attn_numba_cpu
from .reference import ms_deform_attn_torch


def ms_deform_attn_numba_cuda(*args, **kwargs):
    """The Numba CUDA backend without input checks (imports ``numba_cuda`` on first call)."""
    from .numba_cuda import ms_deform_attn_numba_cuda as fn

    return fn(*args, **kwargs)


__all__ = [
    "BACKENDS",
    "available_backends",
    "check_inputs",
    "level_start_index_from_shapes",
    "ms_deform_attn",
    "ms_deform_attn_naive",
    "ms_deform_attn_numba_cpu",
    "ms_deform_attn_numba_cuda",
    "ms_deform_attn_torch",
]
