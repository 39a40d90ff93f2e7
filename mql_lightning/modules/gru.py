"""The last hidden state of one-layer GRUs over short windows, with a hand-written backward pass.

The context encoders run a one-layer GRU over short windows (H = 20 steps at batch 256) four times per update.
At those sizes ``nn.GRU`` spends its time on per-operation overhead and on strided gate slices, not on arithmetic.
:func:`gru_last_states` computes the same function (``nn.GRU``'s equations, its parameters, its initial zero state)
for several GRUs that read the same windows at once, in one of two implementations:

* on CPU in float32 (bf16 autocast included), the compiled kernel of :mod:`mql_lightning.modules.gru_kernel`;
* elsewhere (GPU, float64, or where numba is missing or fails to compile) the torch implementation below, which is
  also the reference the kernel is tested against. It hoists the input projection of all time steps out of the time
  loop into one matrix product, keeps the state feature-major (``(hidden, batch)``), so that every gate is a
  contiguous block of rows and each step is seven contiguous operations written into preallocated buffers, and
  writes backpropagation through time out by hand (about a dozen operations per step, the weight gradients of all
  steps in one batched product at the end) instead of recording it operation by operation with autograd.

Only the last hidden state is returned and no gradient flows into the input sequence (the history windows are data).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from types import ModuleType

import torch
from torch.autograd.function import FunctionCtx


def gru_last_states(
    inputs: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]], compiled: bool = True
) -> torch.Tensor:
    """Last hidden states of G one-layer GRUs started from zeros over the same sequences, in one grouped pass.

    Computes what ``nn.GRU(batch_first=True)`` computes for each of the G weight sets (gates in its order: reset,
    update, new). Grouping GRUs that read the same windows (an actor's and a critic's encoder, or their two target
    copies) shares every per-operation overhead between them.

    Args:
        inputs: ``(B, T, I)`` sequences, oldest first, shared by the G GRUs.
        weights: For each GRU, ``(weight_ih (3H, I), weight_hh (3H, H), bias_ih (3H,), bias_hh (3H,))``.
        compiled: Use the compiled kernel where it applies (CPU, float32 or CPU autocast) and numba is available;
            ``False`` always runs the torch implementation (the reference).

    Returns:
        ``(G, B, H)`` hidden states after the last step. Differentiable in the weights and biases, not in ``inputs``.
    """
    if uses_kernel(inputs, weights, compiled):
        return compiled_kernel().gru_last_states(inputs, weights)
    return _GRULastState.apply(inputs, *(torch.stack([group[k] for group in weights]) for k in range(4)))


def uses_kernel(inputs: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]], compiled: bool = True) -> bool:
    """Whether :func:`gru_last_states` runs these arguments through the compiled kernel (see there)."""
    if not compiled or inputs.device.type != "cpu":
        return False
    # CPU autocast casts everything to float32 first (custom_fwd); float64 stays with the torch implementation.
    float32 = torch.is_autocast_enabled("cpu") or all(
        t.dtype == torch.float32 for t in (inputs, *(w for group in weights for w in group))
    )
    return float32 and compiled_kernel() is not None


@functools.cache
def compiled_kernel() -> ModuleType | None:
    """The compiled kernel's module, compiled (or loaded from numba's disk cache) on first use; ``None`` if unusable.

    Imported here, not with the package: importing numba and compiling take time that only a run which encodes
    contexts should spend. Where numba is missing or compiling fails, this warns once and the torch implementation
    runs instead (same results to float rounding, slower).
    """
    try:
        from mql_lightning.modules import gru_kernel

        gru_kernel.compile_kernels()
    except Exception as err:  # an import error, or any failure of numba to compile on this platform
        warnings.warn(
            f"the compiled GRU kernel is unavailable ({type(err).__name__}: {err}); using the torch implementation",
            RuntimeWarning, stacklevel=3,
        )
        return None
    return gru_kernel


class _GRULastState(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(
        ctx: FunctionCtx,
        inputs: torch.Tensor,
        weight_ih: torch.Tensor,
        weight_hh: torch.Tensor,
        bias_ih: torch.Tensor,
        bias_hh: torch.Tensor,
    ) -> torch.Tensor:
        batch, steps, width = inputs.shape
        groups, three_h, hidden = weight_hh.shape
        # tanh(a) = 2 sigmoid(2a) - 1, and sigmoid is several times cheaper than tanh on CPU: scale the new gate's
        # weights and biases by 2 (its recurrent part is kept scaled: ghn2 = 2 (W_hn h + b_hn)).
        scale = inputs.new_ones(three_h, 1)
        scale[2 * hidden :] = 2.0
        # Both biases of the reset and update gates enter additively: fold them into the hoisted input projection.
        # The new gate's recurrent bias sits inside r * (W_hn h + b_hn) and stays separate.
        folded = bias_ih.clone()
        folded[:, : 2 * hidden] += bias_hh[:, : 2 * hidden]
        # Every step's input gates of every group in one product over time-major rows (t, b), then laid out
        # (T, G, 3H, B) so that each step's gates are contiguous blocks of rows, and so is everything the loop writes.
        x = inputs.transpose(0, 1).reshape(steps * batch, width)
        w_ih = (weight_ih * scale).reshape(groups * three_h, width)
        gi = torch.addmm((folded.unsqueeze(2) * scale).reshape(-1, 1), w_ih, x.t())
        gi = gi.view(groups, three_h, steps, batch).permute(2, 0, 1, 3).contiguous()
        w_hh = weight_hh * scale
        b_hn2 = 2.0 * bias_hh[:, 2 * hidden :].unsqueeze(2)
        minus_one = inputs.new_full((1, 1, 1), -1.0)

        states = inputs.new_empty(steps + 1, groups, hidden, batch)
        states[0].zero_()
        rz = inputs.new_empty(steps, groups, 2 * hidden, batch)
        n = inputs.new_empty(steps, groups, hidden, batch)
        ghn2 = inputs.new_empty(steps, groups, hidden, batch)
        gh = inputs.new_zeros(groups, three_h, batch)
        gh_rz, gh_n = gh[:, : 2 * hidden], gh[:, 2 * hidden :]
        # Per-step views, made once (unbind is one call; indexing in the loop would be one call per view).
        gi_rz, gi_n = gi[:, :, : 2 * hidden].unbind(0), gi[:, :, 2 * hidden :].unbind(0)
        r, z = rz[:, :, :hidden].unbind(0), rz[:, :, hidden:].unbind(0)
        h, rz_t, n_t, ghn2_t = states.unbind(0), rz.unbind(0), n.unbind(0), ghn2.unbind(0)
        for t in range(steps):
            if t > 0:  # h_0 = 0, so the first recurrent product is zero
                torch.bmm(w_hh, h[t], out=gh)
            torch.add(gi_rz[t], gh_rz, out=rz_t[t]).sigmoid_()
            torch.add(gh_n, b_hn2, out=ghn2_t[t])
            torch.addcmul(gi_n[t], r[t], ghn2_t[t], out=n_t[t]).sigmoid_()
            torch.add(minus_one, n_t[t], alpha=2.0, out=n_t[t])  # n = 2 sigmoid(2a) - 1 = tanh(a)
            torch.lerp(n_t[t], h[t], z[t], out=h[t + 1])  # h_t = (1 - z) n + z h_{t-1}
        ctx.save_for_backward(x, weight_hh, states, rz, n, ghn2)
        return states[steps].transpose(1, 2).contiguous()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: FunctionCtx, grad_last: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight_hh, states, rz, n, ghn2 = ctx.saved_tensors
        steps, groups, hidden, batch = n.shape
        # Local derivatives of every step at once, outside the time loop: s (1 - s) of the sigmoid gates, 1 - n^2 of
        # the tanh, h_{t-1} - n (dh_t / dz) and the unscaled W_hn h + b_hn (da_n / dr).
        d_sig = torch.addcmul(rz, rz, rz, value=-1.0)
        d_tanh = torch.addcmul(torch.ones_like(n), n, n, value=-1.0)
        h_minus_n = states[:steps] - n
        ghn = 0.5 * ghn2
        # Rows [da_n | da_r | da_z | d(ghn)]: rows 0:3H are the input-gate gradient in (n, r, z) order and rows H:4H
        # the recurrent-gate gradient in (r, z, n) order, both contiguous blocks.
        grads = n.new_empty(steps, groups, 4 * hidden, batch)
        da_n, dr = grads[:, :, :hidden].unbind(0), grads[:, :, hidden : 2 * hidden].unbind(0)
        dz, d_rz = grads[:, :, 2 * hidden : 3 * hidden].unbind(0), grads[:, :, hidden : 3 * hidden].unbind(0)
        dghn, d_gh = grads[:, :, 3 * hidden :].unbind(0), grads[:, :, hidden:].unbind(0)
        r, z = rz[:, :, :hidden].unbind(0), rz[:, :, hidden:].unbind(0)
        d_sig, d_tanh, h_minus_n, ghn = d_sig.unbind(0), d_tanh.unbind(0), h_minus_n.unbind(0), ghn.unbind(0)
        w_hh_t = weight_hh.detach().transpose(1, 2).contiguous()  # (G, H, 3H), columns in (r, z, n) order
        dh = grad_last.transpose(1, 2).contiguous()  # (G, H, B)
        for t in range(steps - 1, -1, -1):
            dh_z = dh * z[t]
            torch.sub(dh, dh_z, out=da_n[t]).mul_(d_tanh[t])  # dn = dh (1 - z), then through the tanh
            torch.mul(da_n[t], ghn[t], out=dr[t])
            torch.mul(dh, h_minus_n[t], out=dz[t])
            d_rz[t].mul_(d_sig[t])  # through the sigmoids
            torch.mul(da_n[t], r[t], out=dghn[t])
            if t > 0:
                dh = torch.baddbmm(dh_z, w_hh_t, d_gh[t])
        # Weight gradients of all steps at once: gate gradients as (G, rows, T*B) against the time-major inputs and
        # the previous states (h_0 = 0 contributes nothing to the recurrent weights' gradient).
        grads = grads.permute(1, 2, 0, 3).reshape(groups, 4 * hidden, steps * batch)
        d_gi, d_gh = grads[:, : 3 * hidden], grads[:, hidden:]
        grad_w_ih = grad_w_hh = grad_b_ih = grad_b_hh = None
        if ctx.needs_input_grad[1]:
            grad_w_ih = _reorder_n_first(torch.matmul(d_gi, x), hidden)
        if ctx.needs_input_grad[2]:
            previous = states[:steps].permute(1, 2, 0, 3).reshape(groups, hidden, steps * batch)
            grad_w_hh = torch.bmm(d_gh, previous.transpose(1, 2))
        if ctx.needs_input_grad[3]:
            grad_b_ih = _reorder_n_first(d_gi.sum(2), hidden)
        if ctx.needs_input_grad[4]:
            grad_b_hh = d_gh.sum(2)
        return None, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def _reorder_n_first(grad: torch.Tensor, hidden: int) -> torch.Tensor:
    """Rows (dim 1) in (n, r, z) order back to ``nn.GRU``'s (r, z, n)."""
    return torch.cat([grad[:, hidden:], grad[:, :hidden]], 1)
