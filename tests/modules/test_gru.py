"""The grouped GRU pass (compiled kernel and torch implementation) computes exactly what ``nn.GRU`` computes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mql_lightning.modules import gru
from mql_lightning.modules.context import ContextEncoder, encode
from mql_lightning.modules.gru import compiled_kernel, gru_last_states, uses_kernel

# (groups, batch, steps, width, hidden): batch 1, one step, odd and even widths and hidden sizes, hidden sizes that
# leave every remainder of the kernels' blocks of four state rows and four gate rows, and of their 4 x 3 blocks of
# sums (hidden 1, 2, 3, 5, 6, 7, 20), several groups.
SHAPES = [(1, 1, 1, 1, 1), (1, 7, 5, 4, 3), (2, 16, 20, 27, 20), (3, 1, 1, 2, 5), (2, 33, 4, 5, 6), (3, 9, 7, 6, 7),
          (1, 3, 2, 3, 2)]
IMPLEMENTATIONS = pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "torch"])


def _grus(groups: int, width: int, hidden: int, dtype: torch.dtype = torch.float32) -> list[nn.GRU]:
    torch.manual_seed(0)
    return [nn.GRU(width, hidden, batch_first=True, dtype=dtype) for _ in range(groups)]


def _weights(grus: list[nn.GRU]) -> list[list[nn.Parameter]]:
    return [[g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0] for g in grus]


def _params(grus: list[nn.GRU]) -> list[nn.Parameter]:
    return [p for g in grus for p in g.parameters()]


def test_the_kernel_is_the_default_on_cpu_in_float32_and_not_in_float64() -> None:
    assert compiled_kernel() is not None, "numba is a dependency: the kernel must compile here"
    x = torch.randn(2, 3, 4)
    assert uses_kernel(x, _weights(_grus(1, 4, 3)))
    assert not uses_kernel(x, _weights(_grus(1, 4, 3)), compiled=False)
    assert not uses_kernel(x.double(), _weights(_grus(1, 4, 3, torch.float64)))


@IMPLEMENTATIONS
@pytest.mark.parametrize(("groups", "batch", "steps", "width", "hidden"), SHAPES)
def test_last_state_and_weight_gradients_match_nn_gru(
    compiled: bool, groups: int, batch: int, steps: int, width: int, hidden: int
) -> None:
    grus = _grus(groups, width, hidden)
    x = torch.randn(batch, steps + 1, width)[:, 1:]  # a strided window, as the replay serves it
    expected = torch.stack([g(x)[1][-1] for g in grus])
    got = gru_last_states(x, _weights(grus), compiled=compiled)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)

    upstream = torch.randn(groups, batch, hidden)
    want = torch.autograd.grad(expected, _params(grus), upstream)
    have = torch.autograd.grad(got, _params(grus), upstream)
    for w, h in zip(want, have, strict=True):
        torch.testing.assert_close(h, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("groups", "batch", "steps", "width", "hidden"), SHAPES)
def test_kernel_and_torch_implementation_agree_in_values_and_gradients(
    groups: int, batch: int, steps: int, width: int, hidden: int
) -> None:
    grus = _grus(groups, width, hidden)
    x = torch.randn(batch, steps, width)
    upstream = torch.randn(groups, batch, hidden)
    results = []
    for compiled in (True, False):
        z = gru_last_states(x, _weights(grus), compiled=compiled)
        results.append((z, torch.autograd.grad(z, _params(grus), upstream)))
    (z_kernel, g_kernel), (z_torch, g_torch) = results
    torch.testing.assert_close(z_kernel, z_torch, rtol=1e-5, atol=1e-6)
    for k, t in zip(g_kernel, g_torch, strict=True):
        torch.testing.assert_close(k, t, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("groups", "batch", "steps", "width", "hidden"), SHAPES)
def test_kernel_without_gradients_gives_the_differentiable_pass_bit_for_bit(
    groups: int, batch: int, steps: int, width: int, hidden: int
) -> None:
    # Without gradients the kernel keeps only the current step's gates and states, not every step's: same arithmetic.
    grus = _grus(groups, width, hidden)
    x = torch.randn(batch, steps + 1, width)[:, 1:]
    differentiable = gru_last_states(x, _weights(grus))
    assert differentiable.requires_grad
    with torch.no_grad():
        assert torch.equal(gru_last_states(x, _weights(grus)), differentiable.detach())


def test_float64_runs_the_torch_implementation_to_float64_precision() -> None:
    grus = _grus(2, 4, 3, torch.float64)
    x = torch.randn(5, 6, 4, dtype=torch.float64)
    got = gru_last_states(x, _weights(grus))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.stack([g(x)[1][-1] for g in grus]), rtol=1e-12, atol=1e-12)


@IMPLEMENTATIONS
def test_gradients_reach_only_the_groups_that_require_them(compiled: bool) -> None:
    trained, frozen = _grus(2, 4, 3)
    frozen.requires_grad_(False)
    x = torch.randn(5, 6, 4)
    gru_last_states(x, _weights([trained, frozen]), compiled=compiled).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.parameters())
    assert all(p.grad is None for p in frozen.parameters())


@IMPLEMENTATIONS
def test_bf16_autocast_runs_the_recurrence_in_float32(compiled: bool) -> None:
    grus = _grus(2, 4, 3)
    x = torch.randn(5, 6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = gru_last_states(x.bfloat16(), _weights(grus), compiled=compiled)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, torch.stack([g(x.bfloat16().float())[1][-1] for g in grus]), rtol=1e-5, atol=1e-6)


def test_kernel_and_torch_implementation_agree_under_bf16_autocast() -> None:
    grus = _grus(2, 27, 15)
    x = torch.randn(64, 20, 27)
    upstream = torch.randn(2, 64, 15)
    results = []
    for compiled in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = gru_last_states(x, _weights(grus), compiled=compiled)
        results.append((z, torch.autograd.grad(z, _params(grus), upstream)))
    (z_kernel, g_kernel), (z_torch, g_torch) = results
    torch.testing.assert_close(z_kernel, z_torch, rtol=1e-5, atol=1e-6)
    for k, t in zip(g_kernel, g_torch, strict=True):
        assert k.dtype == t.dtype == torch.float32
        torch.testing.assert_close(k, t, rtol=1e-4, atol=1e-5)


def test_kernel_propagates_non_finite_values() -> None:
    grus = _grus(1, 4, 3)
    with torch.no_grad():
        grus[0].weight_hh_l0[0, 0] = float("nan")
    z = gru_last_states(torch.randn(5, 6, 4), _weights(grus))
    assert z.isnan().any()


def test_kernel_outputs_and_saved_buffers_survive_later_passes() -> None:
    # Buffers return to the pool only once their graph is freed: a graph kept for a second backward pass and an
    # output kept by the caller must not be overwritten by later passes that reuse pooled buffers.
    grus = _grus(2, 4, 3)
    x, y = torch.randn(8, 5, 4), torch.randn(8, 5, 4)
    z = gru_last_states(x, _weights(grus))
    kept = z.detach().clone()
    first = torch.autograd.grad(z.sum(), _params(grus), retain_graph=True)
    for _ in range(3):
        gru_last_states(y, _weights(grus)).sum().backward()
        with torch.no_grad():
            gru_last_states(y, _weights(grus))
    torch.testing.assert_close(z.detach(), kept, rtol=0, atol=0)
    again = torch.autograd.grad(z.sum(), _params(grus))
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_kernel_runs_under_inference_mode_and_trains_afterwards() -> None:
    grus = _grus(1, 4, 3)
    x = torch.randn(7, 5, 4)
    with torch.inference_mode():
        acted = gru_last_states(x, _weights(grus))
    z = gru_last_states(x, _weights(grus))  # reuses the buffers the inference-mode pass used
    z.sum().backward()
    torch.testing.assert_close(z.detach(), acted.clone(), rtol=0, atol=0)
    assert all(p.grad is not None for p in grus[0].parameters())


def test_a_kernel_that_fails_to_compile_falls_back_to_torch_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from mql_lightning.modules import gru_kernel

    def broken() -> None:
        raise RuntimeError("no LLVM target for this CPU")

    monkeypatch.setattr(gru_kernel, "compile_kernels", broken)
    gru.compiled_kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="compiled GRU kernel is unavailable.*no LLVM target"):
            assert gru.compiled_kernel() is None
        grus = _grus(1, 4, 3)
        x = torch.randn(5, 6, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not at every call
            z = gru_last_states(x, _weights(grus))
        torch.testing.assert_close(z[0], grus[0](x)[1][-1], rtol=1e-5, atol=1e-6)
    finally:
        gru.compiled_kernel.cache_clear()


def test_compiling_the_kernel_draws_no_random_numbers() -> None:
    # A run resumed in a process that compiles the kernel later than the uninterrupted run did must draw the same.
    gru.compiled_kernel.cache_clear()
    state = torch.get_rng_state()
    try:
        assert gru.compiled_kernel() is not None
        assert torch.equal(torch.get_rng_state(), state)
    finally:
        gru.compiled_kernel.cache_clear()


def test_encode_groups_encoders_and_runs_a_shared_one_once() -> None:
    torch.manual_seed(1)
    a, b = ContextEncoder(4, 3), ContextEncoder(4, 3)
    history = torch.randn(8, 5, 4)
    z_a, z_b, z_a_again = encode([a, b, a], history)
    torch.testing.assert_close(z_a, a.gru(history)[1][-1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z_b, b.gru(history)[1][-1], rtol=1e-5, atol=1e-6)
    assert z_a_again is z_a


def test_encode_records_no_graph_for_frozen_encoders() -> None:
    torch.manual_seed(3)
    trained, frozen = ContextEncoder(4, 3), ContextEncoder(4, 3)
    frozen.requires_grad_(False)
    history = torch.randn(8, 5, 4)
    z_trained, z_frozen = encode([trained, frozen], history)
    assert z_trained.requires_grad and z_frozen.grad_fn is None
    torch.testing.assert_close(z_frozen, frozen.gru(history)[1][-1], rtol=1e-5, atol=1e-6)


def test_encode_calls_encoders_it_cannot_group() -> None:
    class Mean(nn.Module):
        output_dim = 4

        def forward(self, history: torch.Tensor) -> torch.Tensor:
            return history.mean(1)

    history = torch.randn(3, 5, 4)
    (z,) = encode([Mean()], history)
    torch.testing.assert_close(z, history.mean(1))


@pytest.mark.parametrize("implementation", ["compiled", "torch", "nn"])
def test_encoder_without_gradients_equals_the_grouped_pass(implementation: str) -> None:
    torch.manual_seed(2)
    encoder = ContextEncoder(4, 3, implementation=implementation)
    history = torch.randn(6, 5, 4)
    with torch.no_grad():
        fast = encoder(history)  # no graph: the kernel, or torch's own GRU loop
    grouped = encoder(history)  # the differentiable pass (parameters require gradients)
    assert grouped.requires_grad
    torch.testing.assert_close(fast, grouped.detach(), rtol=1e-5, atol=1e-6)


def test_the_three_encoder_implementations_give_the_same_contexts_and_gradients() -> None:
    torch.manual_seed(3)
    reference = ContextEncoder(4, 3, implementation="nn")
    history = torch.randn(7, 5, 4)
    reference(history).square().sum().backward()
    for implementation in ("compiled", "torch"):
        encoder = ContextEncoder(4, 3, implementation=implementation)
        encoder.load_state_dict(reference.state_dict())
        z = encoder(history)
        torch.testing.assert_close(z, reference(history), rtol=1e-5, atol=1e-6)
        z.square().sum().backward()
        for ours, theirs in zip(encoder.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="implementation must be"):
        ContextEncoder(4, 3, implementation="cuda")
