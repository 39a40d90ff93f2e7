"""Tests for the recurrent context encoder (Sec. 3.1.1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from mql_lightning.modules.context import ContextEncoder

B, H, C, HIDDEN = 4, 6, 5, 7


@pytest.fixture(autouse=True)
def _single_thread_private_rng() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield
    torch.set_num_threads(threads)


def padded_windows(real: int = 3, seed: int = 1) -> torch.Tensor:
    """``(B, H, C)`` windows whose first ``H - real`` entries are zero padding (an early-episode window)."""
    gen = torch.Generator().manual_seed(seed)
    windows = torch.zeros(B, H, C)
    windows[:, H - real :] = torch.randn(B, real, C, generator=gen)
    return windows


def test_output_shape_is_batch_by_hidden_size() -> None:
    encoder = ContextEncoder(C, hidden_size=HIDDEN)
    assert encoder.output_dim == HIDDEN
    z = encoder(torch.randn(B, H, C))
    assert z.shape == (B, HIDDEN)
    assert torch.isfinite(z).all()


def test_windows_of_another_length_encode_to_the_same_width() -> None:
    encoder = ContextEncoder(C, hidden_size=HIDDEN)
    assert encoder(torch.randn(2, 1, C)).shape == encoder(torch.randn(2, 30, C)).shape == (2, HIDDEN)


def test_context_depends_on_the_order_of_entries() -> None:
    """Not permutation invariant (paper, Remark 2): a reversed or shuffled window gives another z."""
    encoder = ContextEncoder(C, hidden_size=HIDDEN)
    windows = padded_windows()
    with torch.no_grad():
        z = encoder(windows)
        reversed_z = encoder(windows.flip(1))  # padding now at the end
        real = windows[:, H - 3 :]
        swapped = torch.cat([windows[:, : H - 3], real[:, [1, 0, 2]]], 1)  # real entries reordered, padding kept
        swapped_z = encoder(swapped)
    for other in (reversed_z, swapped_z):
        assert not torch.allclose(z, other, atol=1e-4)
        assert ((z - other).abs().amax(dim=1) > 1e-6).all()  # for every window in the batch


def test_context_depends_on_every_real_entry_including_the_oldest() -> None:
    encoder = ContextEncoder(C, hidden_size=HIDDEN)
    windows = padded_windows(real=H)
    changed = windows.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        assert ((encoder(windows) - encoder(changed)).abs().amax(dim=1) > 1e-6).all()


def test_windows_are_encoded_independently_of_the_rest_of_the_batch() -> None:
    encoder = ContextEncoder(C, hidden_size=HIDDEN)
    windows = padded_windows()
    with torch.no_grad():
        together = encoder(windows)
        alone = torch.cat([encoder(windows[i : i + 1]) for i in range(B)])
    torch.testing.assert_close(together, alone)


def test_encoding_starts_from_a_zero_state_each_call() -> None:
    encoder = ContextEncoder(C, hidden_size=HIDDEN)
    windows = padded_windows()
    with torch.no_grad():
        first = encoder(windows)
        encoder(torch.randn(B, H, C))
        torch.testing.assert_close(encoder(windows), first, rtol=0, atol=0)


def test_gradient_reaches_the_gru() -> None:
    encoder = ContextEncoder(C, hidden_size=HIDDEN)
    encoder(padded_windows()).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize(("input_dim", "hidden_size"), [(0, 4), (-1, 4), (5, 0), (5, -3)])
def test_non_positive_dimensions_raise_value_error(input_dim: int, hidden_size: int) -> None:
    with pytest.raises(ValueError):
        ContextEncoder(input_dim, hidden_size=hidden_size)
