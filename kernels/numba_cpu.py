"""Multi-scale deformable attention on the CPU with Numba (forward and backward).

This is the loop of ``naive.py`` -- for every (batch ``n``, query ``q``, head
``m``, level ``l``, point ``p``): turn the location into pixel coordinates,
find the four bilinear corners, add ``A * corner weight * value row`` into the
output -- compiled by Numba, plus the optimisations below. Each is marked in the
code with its tag, e.g. ``(O3)``.

(O1) Fused weighted sum. The ``grid_sample`` reference (``reference.py``)
     first materialises every sampled value, ``(N*M, D, Lq, L*P)``, then
     multiplies and sums (one ``grid_sample`` per level, forward and backward).
     Here each sample is read (four corners of ``D`` contiguous channels),
     weighted and added straight into the output: nothing else is written.

(O2) Hand-written gradients. The backward is its own kernel (formulas in
     ``_backward_kernel``); autograd never sees the per-sample arithmetic.

(O3) Threads without races. *Forward*: one ``prange`` iteration per ``(n, q)``
     pair; each writes only ``out[n, q]``. *Backward*: the gradient of
     ``value`` is a *scatter* (every sample adds into four rows of
     ``grad_value``, and two queries may hit the same row; two threads doing
     that at once could lose an update). So each thread gets a whole head
     ``(n, m)`` -- or a block of its channels when there are fewer heads than
     threads -- and loops over all queries of that head itself: rows of
     ``grad_value[n, :, m, d0:d1]`` belong to one thread, no locks, no atomics.
     The location and weight gradients are sums over channels; with ``C``
     channel blocks per head each block writes its partial sum into its own
     slice of a ``(C, ...)`` buffer, added up at the end.

(O4) Branch-free corners. A corner off the map gets weight 0 and a *clamped*
     (valid) row, so every sample runs the same loop over the channels, with
     no branch per corner inside it (a branch there stops vectorisation).
     Caveat: a non-finite value (inf/NaN) in a border pixel can then leak into
     a neighbouring sample as NaN where ``grid_sample`` would skip it.

(O5) Vectorised channel loops. Innermost loops run over the ``D`` channels,
     contiguous in memory (``value`` is ``(N, S, M, D)``, seen as a 2-D array
     of rows: row ``(n * S + s) * M + m`` is ``value[n, s, m, :]``), with
     *unsigned* indices (``np.uint64``): Numba lets a signed index be negative
     (Python's ``a[-1]``) and checks for it on every access, which stops LLVM
     from vectorising; an unsigned index needs no check. In the backward the
     dot products and the scatter are two separate loops so that each one
     vectorises.

(O6) Precision where it is cheap. Per-sample arithmetic (pixel coordinates,
     bilinear weights, the final gradient formulas) is float64; per-channel
     products, dot products and outputs stay in the inputs' dtype.

(O7) Threads that sleep when idle (``start_threads``): Numba's OpenMP workers
     would otherwise spin between our calls and steal a core from PyTorch.

(O8) Compiled once. The kernels compile on their first call for each dtype
     (about 1.5 s each for forward and backward on a 2-core machine);
     ``cache=True`` stores the machine code next to this file (``__pycache__``)
     so later processes load it in a fraction of a second.
"""
from __future__ import annotations

import math
import os

import numba
import numpy as np
import torch
from numba import njit, prange

__all__ = ["ms_deform_attn_numba_cpu", "MSDeformAttnNumbaCPU", "forward_numpy", "backward_numpy", "start_threads"]


@njit(inline="always")
def _pixel_coords(loc_x, loc_y, H, W):
    """Normalised (x, y) in [0, 1] -> pixel coordinates; pixel i has its centre at i + 0.5."""
    return loc_x * W - 0.5, loc_y * H - 0.5


@njit(inline="always")
def _is_outside(x, y, H, W):
    """True when none of the four bilinear corners can lie in the H x W grid.

    ``x == -1`` still counts as inside: the right-hand corner (column 0) has
    weight 0 there, but its value still enters the gradient with respect to x
    (this is what ``grid_sample`` does, and we match it). The test is written
    with ``not`` so that NaN coordinates also count as outside.
    """
    return not (x >= -1.0 and y >= -1.0 and x < W and y < H)


@njit(inline="always")
def _bilinear_corners(x, y, a, H, W, base, M, m):
    """The four bilinear corners of the pixel point ``(x, y)`` on one level, as in ``naive.bilinear_sample``.

    ``base = n * S + start`` is the level's first token of batch element ``n``.
    Returns ``fx, fy`` (the point's offset from the top-left corner, each in
    ``[0, 1)``), the corners' rows of the ``(N*S*M, D)`` value view, whether each
    corner is on the map, and each corner's weight ``a * area of the opposite
    sub-rectangle``, in the order top-left, top-right, bottom-left, bottom-right.
    (O4): a corner off the map gets a clamped (valid) row and weight 0.
    (Inlined into both kernels; timed side by side against the old copy-in-each-kernel code it cost
    no measurable speed and gave bit-identical results.)
    """
    x0 = math.floor(x)
    y0 = math.floor(y)
    fx = x - x0
    fy = y - y0
    ix0 = int(x0)
    iy0 = int(y0)
    ok00 = iy0 >= 0 and ix0 >= 0
    ok01 = iy0 >= 0 and ix0 + 1 < W
    ok10 = iy0 + 1 < H and ix0 >= 0
    ok11 = iy0 + 1 < H and ix0 + 1 < W
    cy0 = max(iy0, 0)
    cy1 = min(iy0 + 1, H - 1)
    cx0 = max(ix0, 0)
    cx1 = min(ix0 + 1, W - 1)
    r00 = (base + cy0 * W + cx0) * M + m
    r01 = (base + cy0 * W + cx1) * M + m
    r10 = (base + cy1 * W + cx0) * M + m
    r11 = (base + cy1 * W + cx1) * M + m
    w00 = a * (1.0 - fy) * (1.0 - fx) if ok00 else 0.0
    w01 = a * (1.0 - fy) * fx if ok01 else 0.0
    w10 = a * fy * (1.0 - fx) if ok10 else 0.0
    w11 = a * fy * fx if ok11 else 0.0
    return fx, fy, r00, r01, r10, r11, ok00, ok01, ok10, ok11, w00, w01, w10, w11


@njit(parallel=True, fastmath=False, cache=True)
def _forward_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out):
    """out[n, q, m, :] = sum_{l,p} A[n,q,m,l,p] * bilinear(value, level l, head m): the naive loop.

    Shapes:
        value               (N, S, M, D)
        spatial_shapes      (L, 2) int64, rows (H, W)
        level_start_index   (L,) int64
        sampling_locations  (N, Lq, M, L, P, 2)
        attention_weights   (N, Lq, M, L, P)
        out                 (N, Lq, M, D), zero on entry
    """
    N, S, M, D = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    t = value.dtype.type  # the scalar type of the channels (float32 or float64)

    value2 = value.reshape(N * S * M, D)  # (O5) rows of D contiguous channels
    out2 = out.reshape(N * Lq * M, D)
    for nq in prange(N * Lq):  # (O3) one (batch, query) pair per iteration: disjoint writes
        n = nq // Lq
        q = nq - n * Lq
        for m in range(M):
            o_row = nq * M + m
            for l in range(L):
                H = spatial_shapes[l, 0]
                W = spatial_shapes[l, 1]
                base = n * S + level_start_index[l]
                for p in range(P):
                    x, y = _pixel_coords(  # (O6) per-sample arithmetic in float64
                        np.float64(sampling_locations[n, q, m, l, p, 0]),
                        np.float64(sampling_locations[n, q, m, l, p, 1]), H, W)
                    if _is_outside(x, y, H, W):
                        continue
                    a = np.float64(attention_weights[n, q, m, l, p])
                    _, _, r00, r01, r10, r11, _, _, _, _, w00, w01, w10, w11 = _bilinear_corners(
                        x, y, a, H, W, base, M, m)
                    c00, c01, c10, c11 = t(w00), t(w01), t(w10), t(w11)
                    # (O1) added straight into the output; (O4) no branch; (O5) vectorised over channels.
                    for k in range(D):
                        d = np.uint64(k)
                        out2[o_row, d] += (c00 * value2[r00, d] + c01 * value2[r01, d]) + (
                            c10 * value2[r10, d] + c11 * value2[r11, d])


@njit(parallel=True, fastmath=False, cache=True)
def _backward_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                     grad_out, n_chunks, grad_value, grad_loc_part, grad_attn_part):
    """(O2) Gradients of the forward with respect to value, sampling locations and weights.

    Shapes:
        grad_out        (N, Lq, M, D)
        grad_value      (N, S, M, D), zero on entry
        grad_loc_part   (C, N, Lq, M, L, P, 2), zero on entry (C = n_chunks)
        grad_attn_part  (C, N, Lq, M, L, P), zero on entry

    Work item (n, m, c) owns channels [c * Dc, (c + 1) * Dc) of head (n, m): it is
    the only writer of grad_value[n, :, m, those channels] and of slice c of the
    partial buffers (O3). The caller sums the partial buffers over c.

    With the bilinear weights w00 = (1-fy)(1-fx), w01 = (1-fy)fx, w10 = fy(1-fx),
    w11 = fy fx and g_ij = dot(grad_out, corner_ij) (zero for corners outside):
        dL/dvalue[corner_ij] += A * w_ij * grad_out
        dL/dA     = sum_ij w_ij g_ij
        dL/dx_pix = A * ((1-fy)(g01 - g00) + fy (g11 - g10))
        dL/dy_pix = A * ((1-fx)(g10 - g00) + fx (g11 - g01))
    and x_pix = loc_x * W - 0.5 gives dL/dloc_x = W * dL/dx_pix (same for y with H).
    """
    N, S, M, D = value.shape
    Lq, L, P = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    t = value.dtype.type
    chunk = (D + n_chunks - 1) // n_chunks
    # (O5) row views: row (n * S + s) * M + m of value2 is value[n, s, m, :]; likewise for the others.
    value2 = value.reshape(N * S * M, D)
    grad_value2 = grad_value.reshape(N * S * M, D)
    grad_out2 = grad_out.reshape(N * Lq * M, D)

    for item in prange(N * M * n_chunks):  # (O3) one (head, channel block) per iteration
        n = item // (M * n_chunks)
        rest = item - n * M * n_chunks
        m = rest // n_chunks
        c = rest - m * n_chunks
        d0 = c * chunk
        n_ch = min(D, d0 + chunk) - d0  # channels of this work item
        ud0 = np.uint64(d0)
        for q in range(Lq):
            go_row = (n * Lq + q) * M + m
            for l in range(L):
                H = spatial_shapes[l, 0]
                W = spatial_shapes[l, 1]
                base = n * S + level_start_index[l]
                for p in range(P):
                    x, y = _pixel_coords(
                        np.float64(sampling_locations[n, q, m, l, p, 0]),
                        np.float64(sampling_locations[n, q, m, l, p, 1]), H, W)
                    if _is_outside(x, y, H, W):
                        continue
                    a = np.float64(attention_weights[n, q, m, l, p])
                    fx, fy, r00, r01, r10, r11, ok00, ok01, ok10, ok11, w00, w01, w10, w11 = _bilinear_corners(
                        x, y, a, H, W, base, M, m)
                    # What each corner's grad_value row receives: A * w_ij * grad_out.
                    c00, c01, c10, c11 = t(w00), t(w01), t(w10), t(w11)
                    # Loop 1 (O5): the four dot products (four independent sums).
                    s00 = t(0.0)
                    s01 = t(0.0)
                    s10 = t(0.0)
                    s11 = t(0.0)
                    for k in range(n_ch):
                        d = ud0 + np.uint64(k)
                        g = grad_out2[go_row, d]
                        s00 += g * value2[r00, d]
                        s01 += g * value2[r01, d]
                        s10 += g * value2[r10, d]
                        s11 += g * value2[r11, d]
                    # Loop 2 (O5): the scatter into grad_value (no reduction: vectorises).
                    for k in range(n_ch):
                        d = ud0 + np.uint64(k)
                        g = grad_out2[go_row, d]
                        grad_value2[r00, d] += c00 * g
                        grad_value2[r01, d] += c01 * g
                        grad_value2[r10, d] += c10 * g
                        grad_value2[r11, d] += c11 * g
                    # (O6) the per-sample gradient formulas in float64.
                    g00 = np.float64(s00) if ok00 else 0.0
                    g01 = np.float64(s01) if ok01 else 0.0
                    g10 = np.float64(s10) if ok10 else 0.0
                    g11 = np.float64(s11) if ok11 else 0.0
                    grad_attn_part[c, n, q, m, l, p] = (
                        (1.0 - fy) * ((1.0 - fx) * g00 + fx * g01) + fy * ((1.0 - fx) * g10 + fx * g11))
                    grad_loc_part[c, n, q, m, l, p, 0] = W * a * ((1.0 - fy) * (g01 - g00) + fy * (g11 - g10))
                    grad_loc_part[c, n, q, m, l, p, 1] = H * a * ((1.0 - fx) * (g10 - g00) + fx * (g11 - g01))


def _choose_n_chunks(n_heads_total: int, D: int) -> int:
    """How many channel blocks per head the backward uses.

    One block per head when there are plenty of heads for the threads (the usual
    case: batch 2 x 8 heads); otherwise split the channels so that every thread
    gets about four work items (blocks of at least 8 channels).
    """
    threads = numba.get_num_threads()
    if n_heads_total >= 4 * threads:
        return 1
    want = -(-4 * threads // max(n_heads_total, 1))
    return max(1, min(want, D // 8))


_threads_started = False


def start_threads() -> None:
    """Start Numba's worker threads, once, with OpenMP told to *sleep* when idle.

    Numba's default threading layer here is OpenMP, and it brings its own copy of
    the OpenMP runtime: a second pool of worker threads next to PyTorch's. OpenMP's
    default is to let an idle worker *spin* (busy-wait) for a while before sleeping,
    so that the next parallel region starts a few microseconds sooner. A training
    step alternates between PyTorch ops and our kernels, so each pool's idle worker
    spins while the other pool works: a core lost. On a quiet 2-core machine that
    costs a little; when another program keeps a core busy it is the difference
    between sharing one core and sharing it three ways, and our step slowed down
    much more than PyTorch's own (``benchmarks/load_bench.py`` measures it).

    Our kernels run a few dozen times per training step and each call lasts
    milliseconds, so waking a sleeping worker (tens of microseconds) costs nothing
    measurable. ``OMP_WAIT_POLICY=PASSIVE`` is set only while Numba loads its
    OpenMP runtime (the runtime reads it then) and removed again, so PyTorch and
    child processes are not affected. If you set ``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` yourself, they are left alone.
    """
    global _threads_started
    if _threads_started:
        return
    _threads_started = True
    from numba.np.ufunc import parallel

    if parallel._is_initialized or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        parallel._launch_threads()
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def forward_numpy(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Forward on NumPy arrays (C-contiguous, same float dtype). Returns ``(N, Lq, M, D)``."""
    N, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    out = np.zeros((N, Lq, M, D), dtype=value.dtype)
    start_threads()  # (O7)
    _forward_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, out)
    return out


def backward_numpy(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_out):
    """Backward on NumPy arrays. ``grad_out`` is ``(N, Lq, M, D)``.

    Returns ``(grad_value, grad_sampling_locations, grad_attention_weights)``.
    """
    N, S, M, D = value.shape
    start_threads()  # (O7) before _choose_n_chunks: numba.get_num_threads() would start them with the defaults
    C = _choose_n_chunks(N * M, D)
    # zeros_like writes the zeros in address order, so fresh memory pages are mapped
    # here in one sweep; with np.zeros the OS would map them one by one during the
    # random scatter of the kernel, which measured slower (COCO decoder: 45 MB).
    grad_value = np.zeros_like(value)
    grad_loc = np.zeros((C,) + sampling_locations.shape, dtype=value.dtype)
    grad_attn = np.zeros((C,) + attention_weights.shape, dtype=value.dtype)
    _backward_kernel(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                     grad_out, C, grad_value, grad_loc, grad_attn)
    if C == 1:
        return grad_value, grad_loc[0], grad_attn[0]
    return grad_value, grad_loc.sum(0), grad_attn.sum(0)


def _np(t: torch.Tensor) -> np.ndarray:
    """A zero-copy NumPy view of a CPU tensor (contiguous, detached from autograd)."""
    return t.detach().contiguous().numpy()


class MSDeformAttnNumbaCPU(torch.autograd.Function):
    """Autograd wrapper: forward and backward both run the Numba kernels above."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        N, S, M, D = value.shape
        Lq = sampling_locations.shape[1]
        shapes = _np(spatial_shapes.to(torch.int64))
        starts = _np(level_start_index.to(torch.int64))
        out = forward_numpy(_np(value), shapes, starts, _np(sampling_locations), _np(attention_weights))
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return torch.from_numpy(out).view(N, Lq, M * D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        N, S, M, D = value.shape
        Lq = sampling_locations.shape[1]
        grad_out = _np(grad_output.reshape(N, Lq, M, D).to(value.dtype))
        gv, gl, ga = backward_numpy(
            _np(value), _np(spatial_shapes.to(torch.int64)), _np(level_start_index.to(torch.int64)),
            _np(sampling_locations), _np(attention_weights), grad_out)
        need = ctx.needs_input_grad
        return (torch.from_numpy(gv) if need[0] else None, None, None,
                torch.from_numpy(gl) if need[3] else None,
                torch.from_numpy(ga) if need[4] else None)


def ms_deform_attn_numba_cpu(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Numba CPU multi-scale deformable attention (no input checks; see ``ms_deform_attn``)."""
    return MSDeformAttnNumbaCPU.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                      attention_weights)
