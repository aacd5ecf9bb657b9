"""Multi-scale deformable attention on NVIDIA GPUs with Numba CUDA (forward and backward).

This is the loop of ``naive.py`` again (pixel = loc * size - 0.5, four bilinear
corners, zero outside, weighted sum over levels and points: ``sample_setup``
below is the corner set-up, a corner off the map gets row ``-1``), with the
outer loops over ``(n, q, m)`` spread over GPU threads, the fused weighted sum
and the hand-written gradients of ``numba_cpu.py`` (its O1 and O2). What is
specific to the GPU, explained below: groups of threads per query and head with
channels split across lanes (coalesced loads), channels kept in registers,
atomic adds for the scatter into ``grad_value``, warp-shuffle sums for the
location and weight gradients, and PyTorch's stream for ordering.

No compile step at install time: Numba translates the Python kernels below to
PTX the first time they run (once per dtype and process).

How the work is laid out
------------------------
A small *group* of ``G`` consecutive threads (``G`` a power of two, at most a
warp: 32) handles one ``(n, q, m)`` triple -- one query of one head of one
image. All ``G`` threads read the same sampling location and attention weight
(one memory transaction per group: the hardware broadcasts a word that several
threads of a warp read) and compute the same bilinear corners; each thread
then handles *several channels*: lane ``j`` of the group takes channels
``j, j + G, j + 2G, ...`` so that neighbouring threads touch neighbouring
addresses (coalesced loads). ``G`` is chosen so that each thread gets about
four channels (``D = 32``: 8 threads x 4 channels; ``D = 256``: 32 x 8). Up to
``CHANNELS_PER_THREAD`` channels live in registers; longer heads (``D = 1025``)
are processed in tiles of ``G * CHANNELS_PER_THREAD`` channels.

Forward: every thread accumulates its channels over all ``L * P`` samples and
writes them once. No communication between threads.

Backward:
* ``grad_value`` is a scatter (several queries sample the same pixel), so it is
  accumulated with atomic adds (float32 atomics for float32, float64 atomics for
  float64 inputs).
* The gradients of one sample's location and weight are sums over the ``D``
  channels, i.e. over the threads of the group. On the GPU this is a butterfly
  of warp shuffles (``cuda.shfl_xor_sync``): ``log2(G)`` register exchanges, no
  shared memory, no barrier. Numba's simulator has no warp shuffles, so a second
  variant of the same kernel reduces through shared memory with
  ``cuda.syncthreads()`` (one barrier pair per sample: slower, but simple). The
  variant is a compile-time constant of the kernel factory; the simulator
  always uses ``"shared"``, a real GPU ``"shuffle"``.

Interop with PyTorch: tensors are handed to Numba through
``__cuda_array_interface__`` (``numba.cuda.as_cuda_array``, zero copy, no
stream sync) and the kernels run on PyTorch's current stream
(``numba.cuda.external_stream``), so they are ordered with the surrounding
PyTorch work exactly like a native op.

With ``NUMBA_ENABLE_CUDASIM=1`` set before Numba is imported, ``numba.cuda`` is
the simulator: the same kernels then run (very slowly: one Python thread per
CUDA thread) on CPU tensors. Importing this module never touches the CUDA driver.
"""
from __future__ import annotations

import math

import numba
import torch
from numba import cuda

__all__ = [
    "ms_deform_attn_numba_cuda",
    "MSDeformAttnNumbaCUDA",
    "forward",
    "backward",
    "is_simulator",
    "cuda_available",
    "pick_group_size",
]

#: Channels one thread keeps in registers (local arrays need a compile-time size).
CHANNELS_PER_THREAD = 8
#: Threads per block on a real GPU (several groups per block).
BLOCK_THREADS = 128
#: Threads per block in the simulator: every one is a Python thread, keep it small.
SIM_BLOCK_THREADS = 16


def is_simulator() -> bool:
    """True when ``numba.cuda`` is Numba's CPU simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    return bool(numba.config.ENABLE_CUDASIM)


_cuda_available_cache = None


def cuda_available() -> bool:
    """True when a real CUDA device can run the kernels (checked once, lazily)."""
    global _cuda_available_cache
    if _cuda_available_cache is None:
        _cuda_available_cache = (not is_simulator()) and torch.cuda.is_available() and cuda.is_available()
    return _cuda_available_cache


def pick_group_size(D: int) -> int:
    """Threads per (n, q, m) group: a power of two giving each thread about 4 channels, at most 32."""
    g = 1
    while g < 32 and g * 4 < D:
        g *= 2
    return g


# --------------------------------------------------------------------------------------
# Kernels. Built by a factory so that the scalar type (float32 / float64) and the
# reduction variant are compile-time constants; built once per (dtype, variant, block).
# --------------------------------------------------------------------------------------

def _make_kernels(nbt, use_shuffle: bool, block: int):
    """Return ``(forward_kernel, backward_kernel)`` for scalar type ``nbt``.

    ``use_shuffle`` picks the reduction over a group's threads: warp shuffles
    (GPU only) or shared memory (works everywhere, used by the simulator).
    ``block`` is the number of threads per block the kernels will be launched with.
    """
    CPT = CHANNELS_PER_THREAD
    SMEM_ROWS = 1 if use_shuffle else block  # the shuffle variant needs no shared buffer

    @cuda.jit(device=True)
    def group_sum3_shuffle(a, b, c, buf, tib, lane, G):
        """Sum a, b, c over the G lanes of this group with a butterfly of warp shuffles.

        The group is G aligned lanes of one warp; after log2(G) xor-exchanges
        every lane holds the totals. Only the group's own lanes are in the mask,
        so groups of the same warp may be at different points of the code.
        """
        first = cuda.laneid - lane  # first lane of this group inside the warp
        mask = ((1 << G) - 1) << first
        off = G // 2
        while off > 0:
            a += cuda.shfl_xor_sync(mask, a, off)
            b += cuda.shfl_xor_sync(mask, b, off)
            c += cuda.shfl_xor_sync(mask, c, off)
            off //= 2
        return a, b, c

    @cuda.jit(device=True)
    def group_sum3_shared(a, b, c, buf, tib, lane, G):
        """Same sums through shared memory: write, barrier, read the group's G rows, barrier.

        Every thread of the block must reach both barriers, so the caller calls
        this unconditionally (threads without work pass zeros).
        """
        buf[tib, 0] = a
        buf[tib, 1] = b
        buf[tib, 2] = c
        cuda.syncthreads()
        first = tib - lane
        a = nbt(0.0)
        b = nbt(0.0)
        c = nbt(0.0)
        for j in range(G):
            a += buf[first + j, 0]
            b += buf[first + j, 1]
            c += buf[first + j, 2]
        cuda.syncthreads()  # nobody overwrites buf before everybody has read it
        return a, b, c

    group_sum3 = group_sum3_shuffle if use_shuffle else group_sum3_shared

    @cuda.jit(device=True)
    def sample_setup(loc, attn, n, q, m, l, p, H, W, start):
        """Bilinear set-up of one sample.

        Returns ``inside, a, fx, fy, r00, r01, r10, r11`` where ``r..`` are the
        rows of the four corners in ``value`` (``-1`` when the corner lies outside
        the map) and ``fx, fy`` the fractional position between them.
        """
        one = nbt(1.0)
        x = loc[n, q, m, l, p, 0] * nbt(W) - nbt(0.5)  # pixel coordinates; centres at i + 0.5
        y = loc[n, q, m, l, p, 1] * nbt(H) - nbt(0.5)
        a = attn[n, q, m, l, p]
        # NaN compares False, so it counts as outside. x == -1 is still "inside":
        # column 0 has weight 0 there but enters the gradient (as in grid_sample).
        inside = x >= -one and y >= -one and x < nbt(W) and y < nbt(H)
        fx = nbt(0.0)
        fy = nbt(0.0)
        r00 = -1
        r01 = -1
        r10 = -1
        r11 = -1
        if inside:
            ix0 = int(math.floor(x))
            iy0 = int(math.floor(y))
            fx = x - nbt(ix0)
            fy = y - nbt(iy0)
            if iy0 >= 0:
                if ix0 >= 0:
                    r00 = start + iy0 * W + ix0
                if ix0 + 1 < W:
                    r01 = start + iy0 * W + ix0 + 1
            if iy0 + 1 < H:
                if ix0 >= 0:
                    r10 = start + (iy0 + 1) * W + ix0
                if ix0 + 1 < W:
                    r11 = start + (iy0 + 1) * W + ix0 + 1
        return inside, a, fx, fy, r00, r01, r10, r11

    @cuda.jit
    def forward_kernel(value, spatial_shapes, level_start_index, loc, attn, out, G):
        """One group of G threads per (n, q, m); each of its channels is written exactly once."""
        # value (N, S, M, D); loc (N, Lq, M, L, P, 2); attn (N, Lq, M, L, P); out (N, Lq, M, D)
        N = value.shape[0]
        M = value.shape[2]
        D = value.shape[3]
        Lq = loc.shape[1]
        L = loc.shape[3]
        P = loc.shape[4]
        tid = cuda.grid(1)
        group = tid // G
        lane = tid - group * G
        if group >= N * Lq * M:
            return
        m = group % M  # heads fastest: neighbouring groups read neighbouring loc / value words
        q = (group // M) % Lq
        n = group // (M * Lq)
        one = nbt(1.0)
        acc = cuda.local.array(CPT, nbt)  # this thread's channels, in registers
        for tile0 in range(0, D, G * CPT):
            for k in range(CPT):
                acc[k] = nbt(0.0)
            for l in range(L):
                H = spatial_shapes[l, 0]
                W = spatial_shapes[l, 1]
                start = level_start_index[l]
                for p in range(P):
                    inside, a, fx, fy, r00, r01, r10, r11 = sample_setup(
                        loc, attn, n, q, m, l, p, H, W, start)
                    if not inside:
                        continue
                    w00 = a * (one - fy) * (one - fx)
                    w01 = a * (one - fy) * fx
                    w10 = a * fy * (one - fx)
                    w11 = a * fy * fx
                    for k in range(CPT):
                        d = tile0 + k * G + lane
                        if d < D:
                            s = acc[k]
                            if r00 >= 0:
                                s += w00 * value[n, r00, m, d]
                            if r01 >= 0:
                                s += w01 * value[n, r01, m, d]
                            if r10 >= 0:
                                s += w10 * value[n, r10, m, d]
                            if r11 >= 0:
                                s += w11 * value[n, r11, m, d]
                            acc[k] = s
            for k in range(CPT):
                d = tile0 + k * G + lane
                if d < D:
                    out[n, q, m, d] = acc[k]

    @cuda.jit
    def backward_kernel(value, spatial_shapes, level_start_index, loc, attn, grad_out,
                        grad_value, grad_loc, grad_attn, G):
        """Gradients; grad_value, grad_loc and grad_attn must be zero on entry.

        Per sample, with g_ij = dot(grad_out, corner_ij) over the channels:
            dL/dA     = sum_ij w_ij g_ij                      (w_ij without A)
            dL/dloc_x = W * A * ((1-fy)(g01 - g00) + fy (g11 - g10))
            dL/dloc_y = H * A * ((1-fx)(g10 - g00) + fx (g11 - g01))
        Each thread forms these three sums over *its* channels; the group then adds
        them up (one 3-value reduction per sample and channel tile).
        """
        N = value.shape[0]
        M = value.shape[2]
        D = value.shape[3]
        Lq = loc.shape[1]
        L = loc.shape[3]
        P = loc.shape[4]
        tid = cuda.grid(1)
        tib = cuda.threadIdx.x
        group = tid // G
        lane = tid - group * G
        # No early return: in the shared-memory variant every thread of the block must
        # reach the barriers. Threads past the end work on nothing ("valid" is False).
        valid = group < N * Lq * M
        m = group % M
        q = (group // M) % Lq
        n = group // (M * Lq)
        one = nbt(1.0)
        zero = nbt(0.0)
        go = cuda.local.array(CPT, nbt)  # grad_out for this thread's channels
        buf = cuda.shared.array((SMEM_ROWS, 3), nbt)
        for tile0 in range(0, D, G * CPT):
            for k in range(CPT):
                d = tile0 + k * G + lane
                go[k] = grad_out[n, q, m, d] if (valid and d < D) else zero
            for l in range(L):
                H = spatial_shapes[l, 0]
                W = spatial_shapes[l, 1]
                start = level_start_index[l]
                for p in range(P):
                    inside = False
                    a = zero
                    fx = zero
                    fy = zero
                    r00 = -1
                    r01 = -1
                    r10 = -1
                    r11 = -1
                    if valid:
                        inside, a, fx, fy, r00, r01, r10, r11 = sample_setup(
                            loc, attn, n, q, m, l, p, H, W, start)
                    part_a = zero  # this thread's share of dL/dA
                    part_x = zero  # ... of dL/dx (before the factor W * A)
                    part_y = zero  # ... of dL/dy (before the factor H * A)
                    if inside:
                        w00 = (one - fy) * (one - fx)
                        w01 = (one - fy) * fx
                        w10 = fy * (one - fx)
                        w11 = fy * fx
                        for k in range(CPT):
                            d = tile0 + k * G + lane
                            if d < D:
                                g = go[k]
                                ga = g * a  # what each corner receives, before its weight
                                g00 = zero
                                g01 = zero
                                g10 = zero
                                g11 = zero
                                if r00 >= 0:
                                    g00 = g * value[n, r00, m, d]
                                    cuda.atomic.add(grad_value, (n, r00, m, d), w00 * ga)
                                if r01 >= 0:
                                    g01 = g * value[n, r01, m, d]
                                    cuda.atomic.add(grad_value, (n, r01, m, d), w01 * ga)
                                if r10 >= 0:
                                    g10 = g * value[n, r10, m, d]
                                    cuda.atomic.add(grad_value, (n, r10, m, d), w10 * ga)
                                if r11 >= 0:
                                    g11 = g * value[n, r11, m, d]
                                    cuda.atomic.add(grad_value, (n, r11, m, d), w11 * ga)
                                part_a += w00 * g00 + w01 * g01 + w10 * g10 + w11 * g11
                                part_x += (one - fy) * (g01 - g00) + fy * (g11 - g10)
                                part_y += (one - fx) * (g10 - g00) + fx * (g11 - g01)
                    if use_shuffle:
                        # Groups are uniform: a group with nothing to add skips the shuffles.
                        if inside:
                            part_a, part_x, part_y = group_sum3(part_a, part_x, part_y, buf, tib, lane, G)
                    else:
                        part_a, part_x, part_y = group_sum3(part_a, part_x, part_y, buf, tib, lane, G)
                    if inside and lane == 0:
                        # Only lane 0 writes; several tiles of one group add up in turn.
                        grad_attn[n, q, m, l, p] += part_a
                        grad_loc[n, q, m, l, p, 0] += nbt(W) * a * part_x
                        grad_loc[n, q, m, l, p, 1] += nbt(H) * a * part_y

    return forward_kernel, backward_kernel


_KERNELS = {}


def _kernels(dtype: torch.dtype, reduction: str, block: int):
    """Kernels for one (dtype, reduction, block), built on first use and kept for the process."""
    key = (dtype, reduction, block)
    if key not in _KERNELS:
        nbt = numba.float32 if dtype == torch.float32 else numba.float64
        _KERNELS[key] = _make_kernels(nbt, reduction == "shuffle", block)
    return _KERNELS[key]


# --------------------------------------------------------------------------------------
# Launch helpers
# --------------------------------------------------------------------------------------

def _default_reduction() -> str:
    return "shared" if is_simulator() else "shuffle"


_EXTERNAL_STREAMS = {}


def _numba_stream(device: torch.device):
    """Numba's handle on PyTorch's current stream of ``device`` (kept per raw stream pointer)."""
    ptr = torch.cuda.current_stream(device).cuda_stream
    key = (device.index, ptr)
    stream = _EXTERNAL_STREAMS.get(key)
    if stream is None:
        stream = _EXTERNAL_STREAMS[key] = cuda.external_stream(ptr)
    return stream


class _Launch:
    """Hands tensors to Numba and gives the launch stream, for the simulator or a real GPU.

    On a GPU, ``with cuda.gpus[i]`` pushes device i's primary context (the one
    PyTorch uses too) for the launch and pops it afterwards, so tensors on any
    GPU work whatever the current device is.
    """

    def __init__(self, device: torch.device):
        self.sim = is_simulator()
        self.device = device
        self._ctx = None

    def __enter__(self):
        if not self.sim:
            # Launch on the tensors' GPU, on PyTorch's current stream of that GPU.
            self._ctx = cuda.gpus[self.device.index]
            self._ctx.__enter__()
            self.stream = _numba_stream(self.device)
        else:
            self.stream = 0
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)

    def arr(self, t: torch.Tensor):
        """Zero-copy view for the kernel: a device array on the GPU, a NumPy array in the simulator."""
        t = t.detach()
        if not t.is_contiguous():
            t = t.contiguous()
        if self.sim:
            return t.numpy()
        return cuda.as_cuda_array(t, sync=False)


def _config(n_groups: int, G: int, block: int):
    threads = n_groups * G
    return max(1, (threads + block - 1) // block), block


def forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            reduction: str | None = None, group_size: int | None = None) -> torch.Tensor:
    """Run the forward kernel. Returns ``(N, Lq, M, D)`` on the inputs' device.

    ``reduction`` / ``group_size`` override the defaults (tests use them to exercise
    the multi-lane and multi-tile code paths on tiny inputs).
    """
    N, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    out = torch.zeros((N, Lq, M, D), dtype=value.dtype, device=value.device)
    if out.numel() == 0:
        return out
    reduction = reduction or _default_reduction()
    block = SIM_BLOCK_THREADS if is_simulator() else BLOCK_THREADS
    G = group_size or pick_group_size(D)
    fwd_kernel, _ = _kernels(value.dtype, reduction, block)
    grid, block = _config(N * Lq * M, G, block)
    with _Launch(value.device) as ln:
        fwd_kernel[grid, block, ln.stream](
            ln.arr(value), ln.arr(spatial_shapes.to(torch.int64)), ln.arr(level_start_index.to(torch.int64)),
            ln.arr(sampling_locations), ln.arr(attention_weights), ln.arr(out), G)
    return out


def backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_out,
             reduction: str | None = None, group_size: int | None = None):
    """Run the backward kernel; ``grad_out`` is ``(N, Lq, M, D)``.

    Returns ``(grad_value, grad_sampling_locations, grad_attention_weights)``.
    """
    N, S, M, D = value.shape
    Lq = sampling_locations.shape[1]
    grad_value = torch.zeros_like(value, memory_format=torch.contiguous_format)
    grad_loc = torch.zeros_like(sampling_locations, memory_format=torch.contiguous_format)
    grad_attn = torch.zeros_like(attention_weights, memory_format=torch.contiguous_format)
    if N * Lq * M * D == 0:
        return grad_value, grad_loc, grad_attn
    reduction = reduction or _default_reduction()
    block = SIM_BLOCK_THREADS if is_simulator() else BLOCK_THREADS
    G = group_size or pick_group_size(D)
    _, bwd_kernel = _kernels(value.dtype, reduction, block)
    grid, block = _config(N * Lq * M, G, block)
    with _Launch(value.device) as ln:
        bwd_kernel[grid, block, ln.stream](
            ln.arr(value), ln.arr(spatial_shapes.to(torch.int64)), ln.arr(level_start_index.to(torch.int64)),
            ln.arr(sampling_locations), ln.arr(attention_weights), ln.arr(grad_out),
            ln.arr(grad_value), ln.arr(grad_loc), ln.arr(grad_attn), G)
    return grad_value, grad_loc, grad_attn


class MSDeformAttnNumbaCUDA(torch.autograd.Function):
    """Autograd wrapper around the two kernels (``reduction`` / ``group_size`` as in ``forward``)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                reduction=None, group_size=None):
        N, S, M, D = value.shape
        Lq = sampling_locations.shape[1]
        out = forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                      reduction, group_size)
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        ctx.options = (reduction, group_size)
        return out.view(N, Lq, M * D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        N, S, M, D = value.shape
        Lq = sampling_locations.shape[1]
        grad_out = grad_output.reshape(N, Lq, M, D).to(value.dtype).contiguous()
        gv, gl, ga = backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              grad_out, *ctx.options)
        need = ctx.needs_input_grad
        return (gv if need[0] else None, None, None, gl if need[3] else None, ga if need[4] else None,
                None, None)


def ms_deform_attn_numba_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                              reduction: str | None = None, group_size: int | None = None):
    """Numba CUDA multi-scale deformable attention (no input checks; see ``ms_deform_attn``)."""
    return MSDeformAttnNumbaCUDA.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights, reduction, group_size)
