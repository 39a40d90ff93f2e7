"""The GRU recurrence and its backward pass compiled for the CPU with numba: the default pass of the context encoders.

:mod:`mql_lightning.modules.gru` holds the torch implementation (the reference, and the fallback on other devices,
for float64, and where numba is missing); this module computes the same function. Matrix products with long inner
dimensions stay torch calls (the input projection of all time steps, the weight gradients of all steps); the
recurrence, a loop of tiny dependent steps that torch can only run as dozens of small operations each, is one
compiled loop nest per direction:

* every array is batch-innermost (``(group, row, time, batch)``), so that every innermost loop runs over the batch
  with unit stride and vectorises; gates of one step are rows, and the weight gradients of all steps are products of
  ``(rows, time x batch)`` views without any copy;
* tanh and the sigmoid (``0.5 tanh(x / 2) + 0.5``) are a rational function the loops vectorise (a call to ``exp``
  would not vectorise without Intel's SVML);
* buffers come from a small pool and return to it when the autograd graph that saved them is freed, so an update
  allocates no large buffers; a pass without gradients (the target encoders, the frozen critic encoder) keeps only
  the current step's gates and states, which stay in the cache, instead of every step's for a backward pass;
* the biases are added in the recurrence, not by the input projection's matrix product (a bias there is a copy of
  the product's whole output before the product).

Three things make such loops silently scalar (several times slower, results unchanged), and are avoided here:
numba's default ``error_model="python"`` (a zero check on every division), signed loop indices (a wraparound select
for negative indices on every access: every index here is unsigned), and reading one row of an array while writing
another row of the same array in one loop (LLVM's runtime overlap check then fails: the state is kept in two scratch
arrays that swap roles every step). ``benchmarks/update_throughput.py`` times the kernel next to the torch
implementation, so a change that de-vectorises it shows there.

Compiled on first use, not at import; ``cache=True`` keeps the machine code on disk, in ``__pycache__`` beside this
file or, where that is not writable (a read-only install), in numba's per-user cache directory
(``~/.cache/numba``, or ``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from math import prod

import numba
import numpy as np
import torch
from torch.autograd.function import FunctionCtx

# FMA contraction, reciprocal division and no signed zeros; not nnan/ninf: a NaN must reach the loss (the model's
# finiteness check), and reassociation is not needed (no loop here is a reduction).
_JIT = {"cache": True, "nogil": True, "error_model": "numpy", "fastmath": {"contract", "arcp", "nsz"}}
# Sums over long rows vectorise only if their additions may be regrouped (into one running sum per vector lane).
_JIT_SUMS = {**_JIT, "fastmath": {"contract", "arcp", "nsz", "reassoc"}}

# tanh(x) = x P(u) / Q(u) with u = (x / 9)^2 for |x| <= 9, and +-1 beyond (tanh(9) = 1 - 3e-8 rounds to 1 in float32):
# a rational least-squares fit of tanh on [0, 9] with positive coefficients (no cancellation), maximum error 4e-7 in
# float32 arithmetic (2e-8 in exact arithmetic).
_CLAMP = np.float32(9.0)
_SCALE = np.float32(1.0 / 81.0)
_P0, _P1, _P2, _P3, _P4 = (np.float32(c) for c in (
    0.9999999064166528, 10.832285335386713, 22.87541525216545, 10.879499527992346, 0.5675291609878145
))
_Q1, _Q2, _Q3, _Q4 = (np.float32(c) for c in (37.83225580994931, 169.54904675052703, 173.854160974014,
                                               33.15710409450823))
_ONE, _HALF, _ZERO = np.float32(1.0), np.float32(0.5), np.float32(0.0)


@numba.njit(inline="always", **_JIT)
def _tanh(x: np.float32) -> np.float32:
    # Clamped with selects that keep a NaN (min/max would drop it).
    x = _CLAMP if x > _CLAMP else x
    x = -_CLAMP if x < -_CLAMP else x
    u = x * x * _SCALE
    p = (((_P4 * u + _P3) * u + _P2) * u + _P1) * u + _P0
    q = (((_Q4 * u + _Q3) * u + _Q2) * u + _Q1) * u + _ONE
    return x * p / q


@numba.njit(inline="always", **_JIT)
def _sigmoid(x: np.float32) -> np.float32:
    return _HALF * _tanh(_HALF * x) + _HALF


# Signatures given up front: every array float32, C-contiguous (so that rows have unit stride and vectorise), except
# the two that arrive as strided views of the caller's tensors and are only read element by element.
_F4 = numba.float32
_A3, _C1, _C2, _C3, _C4 = _F4[:, :, :], _F4[::1], _F4[:, ::1], _F4[:, :, ::1], _F4[:, :, :, ::1]


@numba.njit(numba.void(_A3, _C3), **_JIT)
def _transpose(inputs: np.ndarray, xt: np.ndarray) -> None:
    """``xt[i, t, b] = inputs[b, t, i]``: the windows feature-major, written row by row.

    Time outermost: the entries of one step of all windows (B short rows) stay in the L1 cache while every feature's
    row is gathered from them (feature outermost re-reads all T B rows from L2 once per feature: 1.5x slower at B 256).
    """
    batch, steps, width = np.uint64(inputs.shape[0]), np.uint64(inputs.shape[1]), np.uint64(inputs.shape[2])
    for t in range(steps):
        for i in range(width):
            row = xt[i, t]
            for b in range(batch):
                row[b] = inputs[b, t, i]


@numba.njit(numba.void(_C4, _C3, _C2, _C2, _C2, _C2, _C4, _C4, _C4, _C4, _C4, _C3), **_JIT)
def _forward(
    gi: np.ndarray, w_hh: np.ndarray, b_ih: np.ndarray, b_hh: np.ndarray, h: np.ndarray, h_next: np.ndarray,
    states: np.ndarray, r: np.ndarray, z: np.ndarray, n: np.ndarray, ghn: np.ndarray, last: np.ndarray,
) -> None:
    """The recurrence of G GRUs started from zero.

    Args (G groups, H hidden units, T steps, B sequences):
        gi: ``(G, 3H, T, B)`` input gates without their biases (reset, update, new).
        w_hh: ``(G, 3H, H)`` recurrent weights.
        b_ih, b_hh: ``(G, 3H)`` input and recurrent biases (added here, not by the input projection: a bias in that
            matrix product costs a copy of its whole output, a quarter to a third of the product's time).
        h, h_next: ``(H, B)`` scratch.
        states: ``(G, H, T + 1, B)`` out: the states, ``states[:, :, 0] = 0``.
        r, z, n, ghn: ``(G, H, T, B)`` out: reset and update gates, new gate, and ``W_hn h + b_hn``.
        last: ``(G, B, H)`` out: the last states.

    Without a backward pass to come, ``r``, ``z``, ``n`` and ``ghn`` may have one step (``(G, H, 1, B)``) and
    ``states`` two instead: each step then overwrites the last one's. Every step's values at the update's shapes are
    1.5 MB per group, more than the L2 cache holds; one step's are 77 kB.
    """
    zero, one, four = np.uint64(0), np.uint64(1), np.uint64(4)
    groups, steps, batch = np.uint64(gi.shape[0]), np.uint64(gi.shape[2]), np.uint64(gi.shape[3])
    hidden = np.uint64(w_hh.shape[2])
    two_h = hidden + hidden
    keep = np.uint64(r.shape[2]) == steps  # every step kept for the backward pass, or the current one (same if T = 1)
    for g in range(groups):
        for i in range(hidden):
            hi, s0 = h[i], states[g, i, zero]
            for b in range(batch):
                hi[b] = _ZERO
                s0[b] = _ZERO
        for t in range(steps):
            tk = t if keep else zero
            for i in range(hidden):
                ar, az, an = r[g, i, tk], z[g, i, tk], ghn[g, i, tk]
                gir, giz = gi[g, i, t], gi[g, hidden + i, t]
                br, bz = b_ih[g, i] + b_hh[g, i], b_ih[g, hidden + i] + b_hh[g, hidden + i]
                b_in, bn = b_ih[g, two_h + i], b_hh[g, two_h + i]
                for b in range(batch):
                    ar[b] = gir[b] + br
                    az[b] = giz[b] + bz
                    an[b] = bn
                if t > zero:  # h_0 = 0 adds nothing
                    # The recurrent products of unit i's three gates, four state rows at a time: one load and store
                    # of each running sum per four multiply-adds.
                    wr, wz, wn = w_hh[g, i], w_hh[g, hidden + i], w_hh[g, two_h + i]
                    k = zero
                    while k + four <= hidden:
                        k1, k2, k3 = k + one, k + one + one, k + four - one
                        h0, h1, h2, h3 = h[k], h[k1], h[k2], h[k3]
                        r0, r1, r2, r3 = wr[k], wr[k1], wr[k2], wr[k3]
                        z0, z1, z2, z3 = wz[k], wz[k1], wz[k2], wz[k3]
                        n0, n1, n2, n3 = wn[k], wn[k1], wn[k2], wn[k3]
                        for b in range(batch):
                            x0, x1, x2, x3 = h0[b], h1[b], h2[b], h3[b]
                            ar[b] += r0 * x0 + r1 * x1 + r2 * x2 + r3 * x3
                            az[b] += z0 * x0 + z1 * x1 + z2 * x2 + z3 * x3
                            an[b] += n0 * x0 + n1 * x1 + n2 * x2 + n3 * x3
                        k += four
                    while k < hidden:
                        hk, r0, z0, n0 = h[k], wr[k], wz[k], wn[k]
                        for b in range(batch):
                            x0 = hk[b]
                            ar[b] += r0 * x0
                            az[b] += z0 * x0
                            an[b] += n0 * x0
                        k += one
                gin, nt, hi, hn = gi[g, two_h + i, t], n[g, i, tk], h[i], h_next[i]
                st = states[g, i, t + one if keep else zero]
                for b in range(batch):
                    rr = _sigmoid(ar[b])
                    zz = _sigmoid(az[b])
                    nn = _tanh(gin[b] + b_in + rr * an[b])
                    ar[b] = rr
                    az[b] = zz
                    nt[b] = nn
                    v = nn + zz * (hi[b] - nn)  # h_t = (1 - z) n + z h_{t-1}
                    hn[b] = v
                    st[b] = v
            h, h_next = h_next, h
        for i in range(hidden):
            hi = h[i]
            for b in range(batch):
                last[g, b, i] = hi[b]


@numba.njit(**_JIT_SUMS)
def _dots(a: np.ndarray, b: np.ndarray, out: np.ndarray, length: int) -> None:
    """``out[i, j] = sum(a[i, :length] * b[j, :length])``, four rows of ``a`` by three of ``b`` at a time.

    Twelve running sums in registers per pass over the two blocks (torch's matrix product is two to three times
    slower at these shapes: a long inner dimension and a tiny result).
    """
    zero, one, three, four = np.uint64(0), np.uint64(1), np.uint64(3), np.uint64(4)
    m, n, length = np.uint64(a.shape[0]), np.uint64(b.shape[0]), np.uint64(length)
    i = zero
    while i < m:
        # Past the last full block, rows (and below, columns) repeat the block's first: the same sums, written twice.
        i1 = i + one if i + one < m else i
        i2 = i + one + one if i + one + one < m else i
        i3 = i + four - one if i + four - one < m else i
        a0, a1, a2, a3 = a[i], a[i1], a[i2], a[i3]
        j = zero
        while j < n:
            j1 = j + one if j + one < n else j
            j2 = j + one + one if j + one + one < n else j
            b0, b1, b2 = b[j], b[j1], b[j2]
            s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = s30 = s31 = s32 = _ZERO
            for k in range(length):
                x0, x1, x2, x3, y0, y1, y2 = a0[k], a1[k], a2[k], a3[k], b0[k], b1[k], b2[k]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
            out[i3, j2], out[i3, j1], out[i3, j] = s32, s31, s30
            out[i2, j2], out[i2, j1], out[i2, j] = s22, s21, s20
            out[i1, j2], out[i1, j1], out[i1, j] = s12, s11, s10
            out[i, j2], out[i, j1], out[i, j] = s02, s01, s00
            j += three
        i += four


@numba.njit(**_JIT_SUMS)
def _row_sums(a: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = sum(a[i])``."""
    for i in range(np.uint64(a.shape[0])):
        row, total = a[i], _ZERO
        for k in range(np.uint64(a.shape[1])):
            total += row[k]
        out[i] = total


@numba.njit(numba.void(_A3, _C3, _C4, _C4, _C4, _C4, _C4, _C3, _C2, _C2, _C4, _C3, _C3, _C2, _C2), **_JIT)
def _backward(
    dh_last: np.ndarray, w_hh: np.ndarray, states: np.ndarray, r: np.ndarray, z: np.ndarray, n: np.ndarray,
    ghn: np.ndarray, xt: np.ndarray, dh: np.ndarray, dh_prev: np.ndarray, grads: np.ndarray, gw_ih: np.ndarray,
    gw_hh: np.ndarray, gb_ih: np.ndarray, gb_hh: np.ndarray,
) -> None:
    """Backpropagation through time of :func:`_forward`, and the gradients of the weights and biases.

    Args (as in :func:`_forward`):
        dh_last: ``(G, B, H)`` gradient of the last states.
        xt: ``(I, T, B)`` the inputs.
        dh, dh_prev: ``(H + 1, B)`` scratch (row H: a spare row, see below).
        grads: ``(G, 4H, T, B)`` scratch: gradients of the gates' pre-activations, rows ``[r | z | W_hn h + b_hn |
            n]``: rows ``0:3H`` are the recurrent gates' (``nn.GRU``'s order), rows ``0:2H`` and ``3H:4H`` the input
            gates'.
        gw_ih, gw_hh, gb_ih, gb_hh: ``(G, 3H, I)``, ``(G, 3H, H)``, ``(G, 3H)``, ``(G, 3H)`` out: the gradients.
    """
    zero, one, four = np.uint64(0), np.uint64(1), np.uint64(4)
    groups, hidden = np.uint64(r.shape[0]), np.uint64(r.shape[1])
    steps, batch = np.uint64(r.shape[2]), np.uint64(r.shape[3])
    two_h = hidden + hidden
    three_h = two_h + hidden
    length = steps * batch
    inputs = xt.reshape((xt.shape[0], xt.shape[1] * xt.shape[2]))
    for spare in (dh[hidden], dh_prev[hidden]):  # finite (it only ever gains zero-weighted terms), never read
        for b in range(batch):
            spare[b] = _ZERO
    for g in range(groups):
        for i in range(hidden):
            dst = dh[i]
            for b in range(batch):
                dst[b] = dh_last[g, b, i]
        for back in range(steps):
            t = steps - one - back
            for i in range(hidden):
                d, rr, zz, nn, gh, hp = dh[i], r[g, i, t], z[g, i, t], n[g, i, t], ghn[g, i, t], states[g, i, t]
                gr, gz = grads[g, i, t], grads[g, hidden + i, t]
                gg, gn = grads[g, two_h + i, t], grads[g, three_h + i, t]
                dp = dh_prev[i]
                for b in range(batch):
                    db, rb, zb, nb = d[b], rr[b], zz[b], nn[b]
                    dan = db * (_ONE - zb) * (_ONE - nb * nb)  # through n's tanh
                    gr[b] = dan * gh[b] * rb * (_ONE - rb)  # through r's sigmoid
                    gz[b] = db * (hp[b] - nb) * zb * (_ONE - zb)  # through z's sigmoid
                    gg[b] = dan * rb
                    gn[b] = dan
                    dp[b] = db * zb
            if t > zero:
                # dh_{t-1} = dh_t z + W_hh^T (the recurrent gates' gradients): two state rows by four gate rows at a
                # time (each gate row loaded once for both state rows). Past the last row of an odd H, the second is
                # the spare row H with zero weights.
                w = w_hh[g]
                k = zero
                while k < hidden:
                    k1 = k + one
                    # The spare row's weights: any real column's, times zero.
                    c1, m1 = (k1, _ONE) if k1 < hidden else (k, _ZERO)
                    dp0, dp1 = dh_prev[k], dh_prev[k1]
                    j = zero
                    while j + four <= three_h:
                        j1, j2, j3 = j + one, j + one + one, j + four - one
                        a0, a1, a2, a3 = grads[g, j, t], grads[g, j1, t], grads[g, j2, t], grads[g, j3, t]
                        u0, u1, u2, u3 = w[j, k], w[j1, k], w[j2, k], w[j3, k]
                        v0, v1, v2, v3 = m1 * w[j, c1], m1 * w[j1, c1], m1 * w[j2, c1], m1 * w[j3, c1]
                        for b in range(batch):
                            x0, x1, x2, x3 = a0[b], a1[b], a2[b], a3[b]
                            dp0[b] += u0 * x0 + u1 * x1 + u2 * x2 + u3 * x3
                            dp1[b] += v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3
                        j += four
                    while j < three_h:
                        a0, u0, v0 = grads[g, j, t], w[j, k], m1 * w[j, c1]
                        for b in range(batch):
                            x0 = a0[b]
                            dp0[b] += u0 * x0
                            dp1[b] += v0 * x0
                        j += one
                    k += one + one
                dh, dh_prev = dh_prev, dh
        # Sums over all steps and sequences: the recurrent gates' gradients against the previous states (rows of
        # (T + 1) B values, of which the first T B are h_0 ... h_{T-1}), the input gates' against the inputs.
        rows = grads[g].reshape((grads.shape[1], grads.shape[2] * grads.shape[3]))
        previous = states[g].reshape((states.shape[1], states.shape[2] * states.shape[3]))
        _dots(rows[:three_h], previous, gw_hh[g], length)
        _dots(rows[:two_h], inputs, gw_ih[g, :two_h], length)
        _dots(rows[three_h:], inputs, gw_ih[g, two_h:], length)
        _row_sums(rows[:three_h], gb_hh[g])
        _row_sums(rows[:two_h], gb_ih[g, :two_h])
        _row_sums(rows[three_h:], gb_ih[g, two_h:])


class _Pool:
    """Flat float32 buffers by size, handed out and taken back; at most ``limit`` bytes kept while unused.

    One buffer per pass, cut into the pass's arrays: no large buffer is allocated (and paged in) per update.
    """

    def __init__(self, limit: int = 256 << 20) -> None:
        self.limit, self.kept = limit, 0
        self.free: OrderedDict[int, list[np.ndarray]] = OrderedDict()
        self.lock = threading.Lock()

    def take(self, size: int) -> np.ndarray:
        with self.lock:
            stack = self.free.get(size)
            if stack:
                self.free.move_to_end(size)
                self.kept -= stack[-1].nbytes
                return stack.pop()
        return _aligned(size)

    def give(self, buffer: np.ndarray) -> None:
        with self.lock:
            self.free.setdefault(buffer.size, []).append(buffer)
            self.kept += buffer.nbytes
            while self.kept > self.limit:  # least recently used sizes first
                size, stack = next(iter(self.free.items()))
                self.kept -= stack.pop().nbytes
                if not stack:
                    del self.free[size]


_POOL = _Pool()
_LINE = 64  # bytes in a cache line


def _aligned(size: int) -> np.ndarray:
    """``size`` float32 values starting on a cache line (numpy aligns to 16 bytes only).

    At batch 256 every row of the kernels' arrays then starts on a cache line too, so that no vector load or store
    straddles two lines: the forward pass took 1.2x, forward and backward 1.1x the time on 16-byte boundaries.
    """
    raw = np.empty(size + _LINE // 4, dtype=np.float32)
    start = (-raw.ctypes.data % _LINE) // 4
    return raw[start : start + size]


def _carve(buffer: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Consecutive C-contiguous arrays of the given shapes in ``buffer``."""
    arrays, start = [], 0
    for shape in shapes:
        size = prod(shape)
        arrays.append(buffer[start : start + size].reshape(shape))
        start += size
    return arrays


def _take(*shapes: tuple[int, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A pool buffer just large enough for arrays of the given shapes, and those arrays in it."""
    buffer = _POOL.take(sum(prod(shape) for shape in shapes))
    return buffer, _carve(buffer, *shapes)


def _forward_shapes(groups: int, width: int, hidden: int, steps: int, batch: int, kept: int) -> list[tuple[int, ...]]:
    """The forward pass's arrays in its buffer: ``xt, gi, states, r, z, n, ghn, h, h_next`` (see :func:`_forward`),
    with ``kept`` steps of the gates and states."""
    gate = (groups, hidden, kept, batch)
    return [(width, steps, batch), (groups, 3 * hidden, steps, batch), (groups, hidden, kept + 1, batch), gate, gate,
            gate, gate, (hidden, batch), (hidden, batch)]


def gru_last_states(inputs: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """:func:`mql_lightning.modules.gru.gru_last_states` on float32 CPU tensors, with the compiled recurrence."""
    flat = [w for group in weights for w in group]
    if torch.is_grad_enabled() and any(w.requires_grad for w in flat):
        return _CompiledGRU.apply(inputs, len(weights), *flat)
    with torch.autocast("cpu", enabled=False):  # as custom_fwd does for the differentiable pass
        last, buffer, _ = _forward_pass(inputs.float(), len(weights), *(w.float() for w in flat), keep=False)
    _POOL.give(buffer)
    return last


def compile_kernels() -> None:
    """Compile the kernels (or load them from numba's disk cache) and run them once on tiny arrays."""
    # Whatever mode the first caller is in (acting under no_grad, validating under inference mode, autocast).
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        # Fixed values, not random ones: compiling must not draw from the run's global random streams.
        weights = [[torch.full(shape, 0.1, requires_grad=True) for shape in ((3, 2), (3, 1), (3,), (3,))]]
        gru_last_states(torch.ones(1, 2, 2), weights).sum().backward()


def _forward_pass(
    inputs: torch.Tensor, groups: int, *weights: torch.Tensor, keep: bool = True
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """The last states, the pool buffer holding what the backward pass needs (``keep``; without it, scratch), and the
    recurrent weights ``(G, 3H, H)``, contiguous (the backward pass reads them too)."""
    batch, steps, width = inputs.shape
    hidden = weights[1].shape[1]
    if groups == 1:
        w_ih, w_hh, b_ih, b_hh = (w.detach().unsqueeze(0).contiguous() for w in weights)
    else:
        w_ih, w_hh, b_ih, b_hh = (torch.stack(weights[k::4]).detach() for k in range(4))
    buffer, (xt, gi, states, r, z, n, ghn, h, h_next) = _take(
        *_forward_shapes(groups, width, hidden, steps, batch, steps if keep else 1)
    )
    _transpose(inputs.detach().numpy(), xt)
    # The input gates of all steps in one product, (G 3H, I) x (I, T B): the kernel's (T, B) blocks (biases added by
    # the kernel).
    torch.mm(w_ih.reshape(-1, width), torch.from_numpy(xt).view(width, -1),
             out=torch.from_numpy(gi).view(groups * 3 * hidden, -1))
    last = inputs.new_empty(groups, batch, hidden)
    _forward(gi, w_hh.numpy(), b_ih.numpy(), b_hh.numpy(), h, h_next, states, r, z, n, ghn, last.numpy())
    return last, buffer, w_hh


class _CompiledGRU(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx: FunctionCtx, inputs: torch.Tensor, groups: int, *weights: torch.Tensor) -> torch.Tensor:
        last, buffer, ctx.w_hh = _forward_pass(inputs, groups, *weights)
        ctx.shape, ctx.buffer = (groups, inputs.shape[2], weights[1].shape[1], inputs.shape[1], inputs.shape[0]), buffer
        # The buffer goes back to the pool when the graph that saved it is freed (after the backward pass, or at
        # once without one); never earlier, so that a graph kept for a second backward pass stays valid.
        weakref.finalize(ctx, _POOL.give, buffer)
        return last

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: FunctionCtx, grad_last: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        groups, width, hidden, steps, batch = ctx.shape
        shapes = _forward_shapes(groups, width, hidden, steps, batch, steps)
        xt, _, states, r, z, n, ghn, _, _ = _carve(ctx.buffer, *shapes)
        scratch, (grads, dh, dh_prev) = _take((groups, 4 * hidden, steps, batch), *[(hidden + 1, batch)] * 2)
        gw_ih, gw_hh = grad_last.new_empty(groups, 3 * hidden, width), grad_last.new_empty(groups, 3 * hidden, hidden)
        gb_ih, gb_hh = grad_last.new_empty(groups, 3 * hidden), grad_last.new_empty(groups, 3 * hidden)
        _backward(grad_last.numpy(), ctx.w_hh.numpy(), states, r, z, n, ghn, xt, dh, dh_prev, grads,
                  gw_ih.numpy(), gw_hh.numpy(), gb_ih.numpy(), gb_hh.numpy())
        _POOL.give(scratch)
        per_group = zip(gw_ih, gw_hh, gb_ih, gb_hh, strict=True)
        return None, None, *(g for group in per_group for g in group)
