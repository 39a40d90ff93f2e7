"""The recurrent task context z_t of MQL (Sec. 3.1.1)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn


class ContextEncoder(L.LightningModule):
    """GRU over the last H transitions ``(a_{t-1}, r_{t-1}, o_{t-1})``; the context is its last hidden state.

    The paper sets z_t to the hidden state of a GRU run over the recent trajectory (Sec. 3.1.1). As in the authors'
    code, every forward pass starts from a zero hidden state and sees a fixed-length window, zero-padded before the
    episode start.

    Args:
        input_dim: Width of one history entry, ``action_dim + 1 + obs_dim`` (linked from the task family).
        hidden_size: Width of the GRU state, i.e. of the context z.
    """

    def __init__(self, input_dim: int, hidden_size: int = 20) -> None:
        super().__init__()
        if input_dim <= 0 or hidden_size <= 0:
            raise ValueError(f"ContextEncoder needs input_dim > 0 and hidden_size > 0, got {input_dim}, {hidden_size}")
        self.input_dim = input_dim
        self.hidden_size = hidden_size
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
        _, h_n = self.gru(history)
        return h_n[-1]
