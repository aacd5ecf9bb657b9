"""Multi-scale deformable attention (installed as ``ddetr_lib.kernels``).

Read in this order:

* ``reference.py``  -- the ``grid_sample`` version: the definition, for reading.
* ``numba_cpu.py``  -- the same function as Numba CPU kernels (the default on CPU).
* ``numba_cuda.py`` -- the same function as Numba CUDA kernels (the default on GPU).
* ``dispatch.py``   -- ``ms_deform_attn``: input checks and the choice of backend.
* ``bench.py`` / ``gpu_check.py`` -- side-by-side timings and the GPU check.

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
    "ms_deform_attn_numba_cpu",
    "ms_deform_attn_numba_cuda",
    "ms_deform_attn_torch",
]
