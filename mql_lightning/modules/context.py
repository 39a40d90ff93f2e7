"""The recurrent task context z_t of MQL (Sec. 3.1.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from torch import nn

from mql_lightning.modules.gru import gru_last_states, uses_kernel


class ContextEncoder(L.LightningModule):
    """GRU over the last H transitions ``(a_{t-1}, r_{t-1}, o_{t-1})``; the context is its last hidden state.

    The paper sets z_t to the hidden state of a GRU run over the recent trajectory (Sec. 3.1.1). As in the authors'
    code, every forward pass starts from a zero hidden state. What the window holds before the episode start is the
    data's choice (``data.history_padding``): zeros by default; the authors' code puts a random-action start entry
    there instead, and grows its evaluation windows from one entry (``data.eval_window``). The parameters live in an
    ``nn.GRU`` (its state-dict layout); the pass itself is :func:`~mql_lightning.modules.gru.gru_last_states`, and
    :func:`encode` runs several encoders over the same windows in one grouped pass.

    Args:
        input_dim: Width of one history entry, ``action_dim + 1 + obs_dim`` (linked from the task family).
        hidden_size: Width of the GRU state, i.e. of the context z.
        implementation: How the recurrence is computed, the same function each way to float rounding: ``compiled``
            (default) with the compiled CPU kernel (float32 on CPU, where numba works; elsewhere as ``torch``);
            ``torch``, this project's grouped torch implementation everywhere (the kernel's reference); ``nn``,
            ``nn.GRU`` itself with autograd, one encoder at a time: the slowest, and the released code's own
            arithmetic (``configs/presets/authors.yaml`` selects it, so that adaptation there matches theirs to float
            rounding rather than to the kernel's).
    """

    def __init__(
        self, input_dim: int, hidden_size: int = 20, implementation: Literal["compiled", "torch", "nn"] = "compiled"
    ) -> None:
        super().__init__()
        if input_dim <= 0 or hidden_size <= 0:
            raise ValueError(f"ContextEncoder needs input_dim > 0 and hidden_size > 0, got {input_dim}, {hidden_size}")
        if implementation not in ("compiled", "torch", "nn"):
            raise ValueError(f"implementation must be 'compiled', 'torch' or 'nn', got {implementation!r}")
        self.input_dim = input_dim
        self.hidden_size = hidden_size
        self.implementation = implementation
        self.gru = nn.GRU(input_dim, hidden_size, batch_first=True)

    @property
    def output_dim(self) -> int:
        """Width of the context z."""
        return self.hidden_size

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Encode a batch of history windows.

        Args:
            history: ``(B, H, input_dim)`` windows, oldest entry first.

        Returns:
            ``(B, hidden_size)`` contexts.
        """
        return encode([self], history)[0]

    def gru_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of the GRU."""
        gru = self.gru
        return gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0


def encode(encoders: Sequence[nn.Module], history: torch.Tensor) -> list[torch.Tensor]:
    """Contexts of several encoders of the same history windows, computed together.

    :class:`ContextEncoder` instances of equal sizes share one grouped recurrent pass (an actor's and a critic's
    encoder, or their two target copies, read the same windows in every TD3 update); an encoder listed twice (a
    shared encoder) is run once; an encoder with ``implementation="nn"`` and any other encoder module are simply
    called. Encoders whose parameters need no
    gradient (the critic's, frozen during the actor step) run without recording a graph, in a group of their own, so
    that no backward pass is spent on them.

    Args:
        encoders: Encoders to run.
        history: ``(B, H, input_dim)`` windows.

    Returns:
        One ``(B, z)`` context per encoder, in order.
    """
    unique: list[nn.Module] = []
    for encoder in encoders:
        if not any(encoder is seen for seen in unique):
            unique.append(encoder)
    grouped = [e for e in unique if isinstance(e, ContextEncoder) and e.implementation != "nn"]
    contexts: dict[int, torch.Tensor] = {}
    for encoder in unique:
        if isinstance(encoder, ContextEncoder) and encoder.implementation == "nn":
            contexts[id(encoder)] = encoder.gru(history)[1][-1]  # nn.GRU itself, its backward by autograd
        elif not isinstance(encoder, ContextEncoder):
            contexts[id(encoder)] = encoder(history)
    groups: dict[tuple[int, int, bool, bool], list[ContextEncoder]] = {}
    for encoder in grouped:
        trained = torch.is_grad_enabled() and any(w.requires_grad for w in encoder.gru_weights())
        key = (encoder.input_dim, encoder.hidden_size, encoder.implementation == "compiled", trained)
        groups.setdefault(key, []).append(encoder)
    for (_, _, compiled, trained), group in groups.items():
        weights = [e.gru_weights() for e in group]
        if not trained and len(group) == 1 and not uses_kernel(history, weights, compiled):
            # One encoder without gradients (acting, evaluation) outside the compiled kernel's reach: torch's own
            # GRU loop (C++, or cuDNN) is faster than a Python-level loop for a single weight set.
            contexts[id(group[0])] = group[0].gru(history)[1][-1]
            continue
        with torch.set_grad_enabled(trained):
            states = gru_last_states(history, weights, compiled=compiled)
        for encoder, z in zip(group, states.unbind(0), strict=True):
            contexts[id(encoder)] = z
    return [contexts[id(e)] for e in encoders]
