"""The grouped GRU pass with a hand-written backward computes exactly what ``nn.GRU`` computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mql_lightning.modules.context import ContextEncoder, encode
from mql_lightning.modules.gru import gru_last_state

WEIGHTS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def _grus(groups: int, width: int, hidden: int) -> list[nn.GRU]:
    torch.manual_seed(0)
    return [nn.GRU(width, hidden, batch_first=True) for _ in range(groups)]


def _stacked(grus: list[nn.GRU]) -> list[torch.Tensor]:
    return [torch.stack([getattr(g, name) for g in grus]) for name in WEIGHTS]


@pytest.mark.parametrize(
    ("groups", "batch", "steps", "width", "hidden"), [(1, 7, 5, 4, 3), (2, 16, 20, 27, 20), (3, 1, 1, 2, 5)]
)
def test_last_state_and_weight_gradients_match_nn_gru(
    groups: int, batch: int, steps: int, width: int, hidden: int
) -> None:
    grus = _grus(groups, width, hidden)
    x = torch.randn(batch, steps, width)
    expected = torch.stack([g(x)[1][-1] for g in grus])
    got = gru_last_state(x, *_stacked(grus))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    upstream = torch.randn(groups, batch, hidden)
    params = [p for g in grus for p in g.parameters()]
    want = torch.autograd.grad(expected, params, upstream)
    have = torch.autograd.grad(got, params, upstream)
    for w, h in zip(want, have, strict=True):
        torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-5)


def test_gradients_reach_only_the_groups_that_require_them() -> None:
    trained, frozen = _grus(2, 4, 3)
    frozen.requires_grad_(False)
    x = torch.randn(5, 6, 4)
    gru_last_state(x, *_stacked([trained, frozen])).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
    assert all(p.grad is None for p in frozen.parameters())


def test_bf16_autocast_runs_the_recurrence_in_float32() -> None:
    (gru,) = _grus(1, 4, 3)
    x = torch.randn(5, 6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = gru_last_state(x, *_stacked([gru]))
    assert z.dtype == torch.float32
    torch.testing.assert_close(z[0], gru(x)[1][-1], rtol=1e-5, atol=1e-6)


def test_encode_groups_encoders_and_runs_a_shared_one_once() -> None:
    torch.manual_seed(1)
    a, b = ContextEncoder(4, 3), ContextEncoder(4, 3)
    history = torch.randn(8, 5, 4)
    z_a, z_b, z_a_again = encode([a, b, a], history)
    torch.testing.assert_close(z_a, a.gru(history)[1][-1])
    torch.testing.assert_close(z_b, b.gru(history)[1][-1])
    assert z_a_again is z_a


def test_encode_calls_encoders_it_cannot_group() -> None:
    class Mean(nn.Module):
        output_dim = 4

        def forward(self, history: torch.Tensor) -> torch.Tensor:
            return history.mean(1)

    history = torch.randn(3, 5, 4)
    (z,) = encode([Mean()], history)
    torch.testing.assert_close(z, history.mean(1))


def test_encoder_without_gradients_equals_the_grouped_pass() -> None:
    torch.manual_seed(2)
    encoder = ContextEncoder(4, 3)
    history = torch.randn(6, 5, 4)
    with torch.no_grad():
        fast = encoder(history)  # torch's own GRU loop
    grouped = encoder(history)  # the hand-written pass (parameters require gradients)
    assert grouped.requires_grad
    torch.testing.assert_close(fast, grouped.detach(), rtol=1e-5, atol=1e-6)
