"""The one entry point, ``ms_deform_attn``: checks the inputs, then runs a backend.

Backends
--------
``"torch"``       the ``grid_sample`` reference (``reference.py``); any device.
``"numba_cpu"``   the Numba CPU kernels (``numba_cpu.py``); CPU tensors.
``"numba_cuda"``  the Numba CUDA kernels (``numba_cuda.py``); CUDA tensors, or CPU
                  tensors when ``NUMBA_ENABLE_CUDASIM=1`` (Numba's simulator).
``"auto"``        ``numba_cpu`` for CPU tensors, ``numba_cuda`` for CUDA tensors
                  (``torch`` if Numba cannot see the GPU).

The checks are cheap and run on every call (the model calls this once per
attention layer): dimensions, matching sizes, dtypes and devices are read from
tensor metadata. The *values* of ``spatial_shapes`` and ``level_start_index``
(levels summing to ``S``, consistent start offsets) are checked only for CPU
tensors: reading a CUDA tensor's values would wait for the GPU on every call.
"""
from __future__ import annotations

import torch

from .numba_cpu import ms_deform_attn_numba_cpu
from .reference import ms_deform_attn_torch

__all__ = ["ms_deform_attn", "check_inputs", "available_backends", "level_start_index_from_shapes", "BACKENDS"]

BACKENDS = ("torch", "numba_cpu", "numba_cuda")
_FLOAT_DTYPES = (torch.float32, torch.float64)
_INT_DTYPES = (torch.int32, torch.int64)


def level_start_index_from_shapes(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """Offsets of the levels in the flattened token axis: ``[0, H0*W0, H0*W0 + H1*W1, ...]``.

    ``spatial_shapes`` is ``(L, 2)`` with rows ``(H, W)``; returns ``(L,)`` int64 on the same device.
    """
    sizes = spatial_shapes.to(torch.int64).prod(1)  # (L,)
    return torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))


def _cuda_module():
    """Import the CUDA backend only when it is needed (keeps ``import`` light)."""
    from . import numba_cuda

    return numba_cuda


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run tensors on ``device`` in this process."""
    device = torch.device(device)
    names = ["torch"]
    if device.type == "cpu":
        names.append("numba_cpu")
        if _cuda_module().is_simulator():
            names.append("numba_cuda")
    elif device.type == "cuda" and _cuda_module().cuda_available():
        names.append("numba_cuda")
    return names


def _fail(name: str, message: str):
    raise ValueError(f"ms_deform_attn: {name}: {message}")


def check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    """Raise ``ValueError`` naming the first bad argument; return ``None`` when all is well."""
    args = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, t in args.items():
        if not isinstance(t, torch.Tensor):
            _fail(name, f"expected a torch.Tensor, got {type(t).__name__}")

    # Number of dimensions.
    for name, want in (("value", 4), ("spatial_shapes", 2), ("level_start_index", 1),
                       ("sampling_locations", 6), ("attention_weights", 5)):
        if args[name].dim() != want:
            _fail(name, f"expected {want} dimensions, got shape {tuple(args[name].shape)}")

    # dtypes: value decides, the two other float tensors must agree.
    if value.dtype not in _FLOAT_DTYPES:
        _fail("value", f"dtype must be float32 or float64, got {value.dtype}")
    for name in ("sampling_locations", "attention_weights"):
        if args[name].dtype != value.dtype:
            _fail(name, f"dtype {args[name].dtype} differs from value's {value.dtype}")
    for name in ("spatial_shapes", "level_start_index"):
        if args[name].dtype not in _INT_DTYPES:
            _fail(name, f"dtype must be int64 (or int32), got {args[name].dtype}")

    # Devices: everything where value is.
    for name, t in args.items():
        if t.device != value.device:
            _fail(name, f"is on {t.device} but value is on {value.device}")

    # Sizes that must agree.
    N, S, M, D = value.shape
    L = spatial_shapes.shape[0]
    if spatial_shapes.shape[1] != 2:
        _fail("spatial_shapes", f"expected shape (L, 2), got {tuple(spatial_shapes.shape)}")
    if L == 0:
        _fail("spatial_shapes", "needs at least one level")
    if level_start_index.shape[0] != L:
        _fail("level_start_index", f"has {level_start_index.shape[0]} entries for {L} levels")
    n_, Lq, m_, l_, P, two = sampling_locations.shape
    if (n_, m_, l_, two) != (N, M, L, 2):
        _fail("sampling_locations",
              f"expected shape (N={N}, Lq, M={M}, L={L}, P, 2), got {tuple(sampling_locations.shape)}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        _fail("attention_weights",
              f"expected shape {tuple(sampling_locations.shape[:-1])} (sampling_locations without the last "
              f"axis), got {tuple(attention_weights.shape)}")

    # Values of the level description: only where reading them costs no GPU sync.
    if spatial_shapes.device.type == "cpu":
        if bool((spatial_shapes <= 0).any()):
            _fail("spatial_shapes", f"every H and W must be positive, got {spatial_shapes.tolist()}")
        total = int(spatial_shapes.to(torch.int64).prod(1).sum())
        if total != S:
            _fail("spatial_shapes", f"levels cover {total} positions but value has S={S}")
        if not torch.equal(level_start_index.to(torch.int64), level_start_index_from_shapes(spatial_shapes)):
            _fail("level_start_index",
                  f"{level_start_index.tolist()} does not match spatial_shapes "
                  f"(expected {level_start_index_from_shapes(spatial_shapes).tolist()})")


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS + ("auto",):
        _fail("backend", f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")
    if backend == "auto":
        if device.type == "cpu":
            return "numba_cpu"
        if device.type == "cuda" and _cuda_module().cuda_available():
            return "numba_cuda"
        return "torch"
    if backend == "numba_cpu" and device.type != "cpu":
        _fail("backend", f"'numba_cpu' needs CPU tensors, got {device}")
    if backend == "numba_cuda":
        cu = _cuda_module()
        if cu.is_simulator():
            if device.type != "cpu":
                _fail("backend", "'numba_cuda' in the simulator (NUMBA_ENABLE_CUDASIM=1) needs CPU tensors")
        elif device.type != "cuda":
            _fail("backend", f"'numba_cuda' needs CUDA tensors (or NUMBA_ENABLE_CUDASIM=1), got {device}")
        elif not cu.cuda_available():
            _fail("backend", "'numba_cuda' is not available: Numba cannot use the CUDA device")
    return backend


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   backend: str = "auto") -> torch.Tensor:
    """Multi-scale deformable attention.

    Args:
        value: ``(N, S, M, D)`` float32/float64, the flattened feature maps of all levels, split into M heads.
        spatial_shapes: ``(L, 2)`` int64, rows ``(H_l, W_l)``.
        level_start_index: ``(L,)`` int64, where each level starts in ``S``
            (``level_start_index_from_shapes(spatial_shapes)``).
        sampling_locations: ``(N, Lq, M, L, P, 2)`` normalised ``(x, y)``; ``[0, 1]`` spans the map,
            points outside are allowed (their out-of-map corners count as zero).
        attention_weights: ``(N, Lq, M, L, P)``, already softmaxed over ``L * P``.
        backend: ``"auto"``, ``"torch"``, ``"numba_cpu"`` or ``"numba_cuda"``.

    Returns:
        ``(N, Lq, M * D)``; differentiable in value, sampling_locations and attention_weights.

    Raises:
        ValueError: naming the bad argument (shape, dtype, device, backend).
    """
    check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    backend = _pick_backend(backend, value.device)
    if backend == "torch":
        return ms_deform_attn_torch(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if backend == "numba_cpu":
        return ms_deform_attn_numba_cpu(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    return _cuda_module().ms_deform_attn_numba_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                                                    attention_weights)
