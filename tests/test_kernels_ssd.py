"""Mamba2 SSD kernels with a head->group map: the torch reference vs transformers' `mamba2_chunk_scan` and
`mamba2_selective_state_update`, ragged maps vs transformers on B/C expanded to one group per head, prefill + decoding
steps, the chunk-state callback, autograd, validation and dispatch; the Triton kernels (interpreter, fp32) vs the
torch reference. Tiny shapes throughout.

The Triton tests (named `test_triton_*`) skip themselves unless the Triton interpreter is active and are run by
`test_triton_suite_under_interpreter` in one pytest subprocess with `TRITON_INTERPRET=1` set from the start
(see `_triton_interpreter.py`).
"""

from __future__ import annotations

import ast
import inspect
import sys

import pytest
import torch
from _triton_interpreter import (
    FakeCuda,
    interpreter_active,
    require_interpreter,
    run_under_interpreter,
    stub_kernel_modules,
)
from transformers.models.nemotron_h import modeling_nemotron_h as nemotron_h

from hf_rankprune import kernels
from hf_rankprune.kernels import backend as backend_module
from hf_rankprune.kernels import (
    naive_ssd_chunk_scan,
    naive_ssd_step,
    ssd_chunk_scan,
    ssd_step,
    use_backend,
)
from hf_rankprune.kernels.backend import ENV_VAR

# transformers' torch implementations, unwrapped from the hub kernel dispatch (byte-identical in mamba2, bamba,
# granitemoehybrid, zamba2, falcon_h1)
hf_scan = inspect.unwrap(nemotron_h.mamba2_chunk_scan)
hf_step = inspect.unwrap(nemotron_h.mamba2_selective_state_update)

CHUNK_MODULE = "hf_rankprune.kernels.mamba2_ssd.chunk"
RECURRENT_MODULE = "hf_rankprune.kernels.mamba2_ssd.fused_recurrent"
# the step kernel calls the chunk module's dt helper: that module is (re)loaded first
TRITON_MODULES = (CHUNK_MODULE, RECURRENT_MODULE)
TRITON_TESTS = "test_triton_"

INF = float("inf")
RAGGED = [2, 0, 2, 1, 0]  # H = 5 heads over G = 3 groups of sizes 2, 1, 2, out of order


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(Bt=2, T=20, H=4, P=8, G=2, N=16, seed=0, init=False, dtype=torch.float32):
    """Random SSD inputs: x, dt (raw), A (negative), B, C, D, dt_bias, initial state."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(Bt, T, H, P, generator=gen)
    dt = torch.randn(Bt, T, H, generator=gen)
    A = -(torch.rand(H, generator=gen) * 2 + 0.1)
    B = torch.randn(Bt, T, G, N, generator=gen)
    C = torch.randn(Bt, T, G, N, generator=gen)
    D = torch.randn(H, generator=gen)
    dt_bias = torch.randn(H, generator=gen) * 0.5
    h0 = torch.randn(Bt, H, P, N, generator=gen) if init else None
    x, dt, B, C = (t.to(dtype) for t in (x, dt, B, C))
    return x, dt, A, B, C, D, dt_bias, h0


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def hf_reference(x, dt, A, B, C, D, dt_bias, h0, chunk_size, dt_softplus, dt_limit):
    return hf_scan(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, initial_states=h0, dt_softplus=dt_softplus,
                   dt_limit=dt_limit, return_final_states=True)


# --------------------------------------------------------------------------------------------------
# chunk scan vs transformers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 100, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("dt_softplus", [True, False])
def test_chunk_scan_matches_transformers(T, chunk_size, init, dt_softplus):
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=T, init=init, seed=T)
    for dt_limit in ((0.0, INF), (0.001, INF), (0.05, 0.8)):
        y, s = naive_ssd_chunk_scan(x, dt, A, B, C, chunk_size=chunk_size, D=D, dt_bias=dt_bias,
                                    dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=h0,
                                    output_final_state=True)
        y_ref, s_ref = hf_reference(x, dt, A, B, C, D, dt_bias, h0, chunk_size, dt_softplus, dt_limit)
        assert y.shape == (2, T, 4, 8) and y.dtype == y_ref.dtype == torch.float32
        assert s.shape == (2, 4, 8, 16) and s.dtype == torch.float32
        assert_close(y, y_ref)
        assert_close(s, s_ref)
    # the dispatched entry runs the same reference on CPU
    y_d, s_d = ssd_chunk_scan(x, dt, A, B, C, chunk_size=chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                              dt_limit=dt_limit, initial_state=h0, output_final_state=True)
    assert torch.equal(y_d, y) and torch.equal(s_d, s)


def test_optional_arguments_match_transformers():
    """No D, no dt_bias, one group for all heads, and a single head per group."""
    for G in (1, 4):
        x, dt, A, B, C, _, _, h0 = make_inputs(T=37, G=G, init=True, seed=G)
        y, s = naive_ssd_chunk_scan(x, dt, A, B, C, chunk_size=16, dt_softplus=True, initial_state=h0,
                                    output_final_state=True)
        y_ref, s_ref = hf_reference(x, dt, A, B, C, None, None, h0, 16, True, (0.0, INF))
        assert_close(y, y_ref)
        assert_close(s, s_ref)
        assert naive_ssd_chunk_scan(x, dt, A, B, C, dt_softplus=True)[1] is None


def test_chunk_size_does_not_change_the_result():
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=45, H=5, G=3, init=True)
    ref = naive_ssd_chunk_scan(x, dt, A, B, C, RAGGED, chunk_size=64, D=D, dt_bias=dt_bias, dt_softplus=True,
                               initial_state=h0, output_final_state=True)
    for chunk_size in (1, 7, 16, 45):
        y, s = naive_ssd_chunk_scan(x, dt, A, B, C, torch.tensor(RAGGED), chunk_size=chunk_size, D=D,
                                    dt_bias=dt_bias, dt_softplus=True, initial_state=h0, output_final_state=True)
        assert_close(y, ref[0])
        assert_close(s, ref[1])


# --------------------------------------------------------------------------------------------------
# ragged head->group maps: exactly transformers' kernel on B/C expanded to one group per head
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1, 63, 130])
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("head_to_group", [RAGGED, [1, 1, 1, 1, 1], [0, 1, 2, 0, 1]], ids=["ragged", "one", "cyclic"])
def test_ragged_map_matches_transformers_on_expanded_groups(T, init, head_to_group):
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=T, H=5, G=3, init=init, seed=7)
    h2g = torch.tensor(head_to_group)
    y, s = naive_ssd_chunk_scan(x, dt, A, B, C, h2g, chunk_size=16, D=D, dt_bias=dt_bias, dt_softplus=True,
                                dt_limit=(0.001, INF), initial_state=h0, output_final_state=True)
    y_ref, s_ref = hf_reference(x, dt, A, B[:, :, h2g], C[:, :, h2g], D, dt_bias, h0, 16, True, (0.001, INF))
    assert_close(y, y_ref)
    assert_close(s, s_ref)


def test_consecutive_map_equals_none():
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=30, H=6, G=3, init=True)
    kw = dict(chunk_size=16, D=D, dt_bias=dt_bias, dt_softplus=True, initial_state=h0, output_final_state=True)
    y, s = naive_ssd_chunk_scan(x, dt, A, B, C, None, **kw)
    y2, s2 = naive_ssd_chunk_scan(x, dt, A, B, C, torch.tensor([0, 0, 1, 1, 2, 2]), **kw)
    assert torch.equal(y, y2) and torch.equal(s, s2)
    # expanding B/C to one group per head (identity map) is the same computation
    h2g = torch.tensor([0, 0, 1, 1, 2, 2])
    y3, s3 = naive_ssd_chunk_scan(x, dt, A, B[:, :, h2g], C[:, :, h2g], None, **kw)
    assert_close(y3, y)
    assert_close(s3, s)


# --------------------------------------------------------------------------------------------------
# decoding step
# --------------------------------------------------------------------------------------------------


def _hf_step(state, x, dt, A, B, C, D, dt_bias, dt_softplus):
    """transformers' step (mamba_ssm's layout) takes dt/D/dt_bias expanded to [.., P], A to [H, P, N], and updates
    `state` in place."""
    P, N = x.shape[-1], B.shape[-1]
    state = state.clone()
    y = hf_step(state, x, dt[..., None].expand(*dt.shape, P), A[:, None, None].expand(-1, P, N), B, C,
                D=D[:, None].expand(-1, P), dt_bias=dt_bias[:, None].expand(-1, P), dt_softplus=dt_softplus)
    return y, state


@pytest.mark.parametrize("dt_softplus", [True, False])
@pytest.mark.parametrize("head_to_group", [None, RAGGED], ids=["consecutive", "ragged"])
def test_step_matches_transformers(dt_softplus, head_to_group):
    H, G = (4, 2) if head_to_group is None else (5, 3)
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=1, H=H, G=G, init=True, seed=3)
    x, dt, B, C = x[:, 0], dt[:, 0], B[:, 0], C[:, 0]
    state = h0.clone()
    # transformers' step applies no dt clamp: (-inf, inf) reproduces it for raw (possibly negative) steps
    y, s = naive_ssd_step(state, x, dt, A, B, C, head_to_group, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                          dt_limit=(-INF, INF))
    assert torch.equal(state, h0)  # not modified in place
    if head_to_group is None:
        y_ref, s_ref = _hf_step(h0, x, dt, A, B, C, D, dt_bias, dt_softplus)
    else:
        h2g = torch.tensor(head_to_group)
        y_ref, s_ref = _hf_step(h0, x, dt, A, B[:, h2g], C[:, h2g], D, dt_bias, dt_softplus)
    assert y.shape == x.shape and y.dtype == x.dtype and s.dtype == torch.float32
    assert_close(y, y_ref)
    assert_close(s, s_ref)
    y_d, s_d = ssd_step(state, x, dt, A, B, C, head_to_group, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                        dt_limit=(-INF, INF))
    assert torch.equal(y_d, y) and torch.equal(s_d, s)


def test_step_half_inputs():
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=1, H=5, G=3, init=True, dtype=torch.bfloat16)
    args = (x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], RAGGED)
    y, s = naive_ssd_step(h0, *args, D=D, dt_bias=dt_bias, dt_softplus=True)
    assert y.dtype == torch.bfloat16 and s.dtype == torch.float32
    y32, s32 = naive_ssd_step(h0, *(t.float() for t in args[:5]), RAGGED, D=D, dt_bias=dt_bias, dt_softplus=True)
    assert_close(s, s32)
    assert_close(y.float(), y32, atol=5e-2, rtol=2e-2)


@pytest.mark.parametrize("head_to_group", [None, RAGGED], ids=["consecutive", "ragged"])
def test_prefill_then_steps_continue_the_scan(head_to_group):
    H, G = (4, 2) if head_to_group is None else (5, 3)
    T, prefill = 70, 66
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=T, H=H, G=G, init=True, seed=11)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.001, 2.0))
    y_full, s_full = naive_ssd_chunk_scan(x, dt, A, B, C, head_to_group, chunk_size=16, initial_state=h0,
                                          output_final_state=True, **kw)
    y_pre, state = ssd_chunk_scan(x[:, :prefill], dt[:, :prefill], A, B[:, :prefill], C[:, :prefill], head_to_group,
                                  chunk_size=16, initial_state=h0, output_final_state=True, **kw)
    ys = [y_pre]
    for t in range(prefill, T):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], head_to_group, **kw)
        ys.append(y_t[:, None])
    assert_close(torch.cat(ys, dim=1), y_full)
    assert_close(state, s_full)


def test_chunk_state_callback_sees_the_states_at_chunk_boundaries():
    T = 50
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=T, H=5, G=3, init=True, seed=5)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True)
    # the states step by step
    states, state = [], h0
    for t in range(T):
        _, state = naive_ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], RAGGED, **kw)
        states.append(state)
    seen = []
    y, s = naive_ssd_chunk_scan(x, dt, A, B, C, RAGGED, chunk_size=16, initial_state=h0, output_final_state=True,
                                chunk_state_callback=lambda i, st: seen.append((i, st.clone())), **kw)
    assert [i for i, _ in seen] == [0, 1, 2, 3]
    for (_, st), end in zip(seen, (16, 32, 48, T)):
        assert st.shape == (2, 5, 8, 16)
        assert_close(st, states[end - 1])
    assert torch.equal(seen[-1][1], s)
    y2, _ = naive_ssd_chunk_scan(x, dt, A, B, C, RAGGED, chunk_size=16, initial_state=h0, **kw)
    assert torch.equal(y, y2)  # the callback changes nothing


def test_half_inputs_and_empty_sequence():
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=40, H=5, G=3, init=True, dtype=torch.bfloat16)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, initial_state=h0, output_final_state=True, chunk_size=16)
    y, s = naive_ssd_chunk_scan(x, dt, A, B, C, RAGGED, **kw)
    assert y.dtype == torch.float32 and s.dtype == torch.float32  # fp32 like transformers
    y32, s32 = naive_ssd_chunk_scan(x.float(), dt.float(), A, B.float(), C.float(), RAGGED, **kw)
    assert_close(y, y32)
    assert_close(s, s32)
    y0, s0 = naive_ssd_chunk_scan(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0], RAGGED, **kw)
    assert y0.shape == (2, 0, 5, 8)
    assert torch.equal(s0, h0)


# --------------------------------------------------------------------------------------------------
# autograd
# --------------------------------------------------------------------------------------------------


def test_gradcheck_double():
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(Bt=1, T=5, H=3, P=2, G=2, N=3, init=True)
    inputs = [t.double().requires_grad_() for t in (x, dt, A, B, C, D, dt_bias, h0)]
    h2g = torch.tensor([1, 0, 1])

    def scan(x, dt, A, B, C, D, dt_bias, h0):
        return naive_ssd_chunk_scan(x, dt, A, B, C, h2g, chunk_size=2, D=D, dt_bias=dt_bias, dt_softplus=True,
                                    initial_state=h0, output_final_state=True)

    def step(x, dt, A, B, C, D, dt_bias, h0):
        return naive_ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], h2g, D=D, dt_bias=dt_bias,
                              dt_softplus=True)

    y, s = scan(*inputs)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(step, inputs, eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def test_input_validation():
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=4, H=5, G=3, init=True)
    scan = ssd_chunk_scan
    with pytest.raises(ValueError, match="H % G == 0"):
        scan(x, dt, A, B, C)  # 5 heads, 3 groups, no map
    with pytest.raises(ValueError, match="must be 4-D"):
        scan(x[0], dt, A, B, C, RAGGED)
    with pytest.raises(ValueError, match="dt must have shape"):
        scan(x, dt[..., None], A, B, C, RAGGED)
    with pytest.raises(ValueError, match="B must have shape"):
        scan(x, dt, A, B[:, :2], C, RAGGED)
    with pytest.raises(ValueError, match="same shape"):
        scan(x, dt, A, B, C[..., :8], RAGGED)
    with pytest.raises(ValueError, match="A must have shape"):
        scan(x, dt, A[:4], B, C, RAGGED)
    with pytest.raises(ValueError, match="D must have shape"):
        scan(x, dt, A, B, C, RAGGED, D=D[:, None].expand(5, 8))
    with pytest.raises(ValueError, match="dt_bias must have shape"):
        scan(x, dt, A, B, C, RAGGED, dt_bias=dt_bias[:2])
    with pytest.raises(ValueError, match="initial_state"):
        scan(x, dt, A, B, C, RAGGED, initial_state=h0[..., :4])
    with pytest.raises(ValueError, match="chunk_size"):
        scan(x, dt, A, B, C, RAGGED, chunk_size=0)
    with pytest.raises(ValueError, match="dt_limit"):
        scan(x, dt, A, B, C, RAGGED, dt_limit=(1.0, 0.5))
    with pytest.raises(ValueError, match="dt_limit"):
        scan(x, dt, A, B, C, RAGGED, dt_limit=0.5)
    # head->group maps
    with pytest.raises(ValueError, match=r"\[0, G\)"):
        scan(x, dt, A, B, C, [0, 1, 3, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, G\)"):
        scan(x, dt, A, B, C, [0, 1, -1, 0, 1])
    with pytest.raises(ValueError, match="shape \\[H\\]"):
        scan(x, dt, A, B, C, [0, 1, 2])
    with pytest.raises(ValueError, match="integer"):
        scan(x, dt, A, B, C, torch.tensor(RAGGED, dtype=torch.float32))
    # the step
    step_args = (x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    with pytest.raises(ValueError, match="H % G == 0"):
        ssd_step(h0, *step_args)
    with pytest.raises(ValueError, match="3-D"):
        ssd_step(h0, x, *step_args[1:], RAGGED)
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_step(h0, step_args[0], dt[:, :2], *step_args[2:], RAGGED)
    with pytest.raises(ValueError, match="B must have shape"):
        ssd_step(h0, *step_args[:3], B, step_args[4], RAGGED)
    with pytest.raises(ValueError, match="state must have shape"):
        ssd_step(h0[:1], *step_args, RAGGED)
    with pytest.raises(ValueError, match=r"\[0, G\)"):
        ssd_step(h0, *step_args, [0, 1, 5, 0, 1])


# --------------------------------------------------------------------------------------------------
# dispatch, API, self-containment
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_triton(monkeypatch):
    """Stub Triton modules in place of the SSD kernel modules: the dispatcher's routing, without a GPU."""
    return stub_kernel_modules(
        monkeypatch, {CHUNK_MODULE: {"ssd_chunk_scan_fwd": "chunk"}, RECURRENT_MODULE: {"ssd_step_fwd": "step"}}
    )


@pytest.mark.parametrize("op", ["chunk", "step"])
def test_dispatch_rules(fake_triton, monkeypatch, op):
    pytest.importorskip("triton")  # "auto" picks Triton on CUDA tensors only when triton is importable
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=5, H=5, G=3, init=True)
    h2g = torch.tensor(RAGGED)
    if op == "chunk":
        fn = ssd_chunk_scan
        args = (x, dt, A, B, C, h2g, 16, D, dt_bias, True, (0.001, 2.0), h0, True)
        grad_at = 0  # x
    else:
        fn = ssd_step
        args = (h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], h2g, D, dt_bias, True, (0.001, 2.0))
        grad_at = 0  # state
    cuda_args = (args[0].as_subclass(FakeCuda), *args[1:])

    def routed(*a, **kw):
        fake_triton.clear()
        out = fn(*a, **kw)
        assert len(fake_triton) <= 1
        return fake_triton[0] if fake_triton else out

    # auto: CUDA -> Triton with every argument in order, CPU -> torch
    name, passed = routed(*cuda_args)
    assert name == op and passed[1:] == args[1:] and passed[0] is cuda_args[0]
    y, s = routed(*args)
    assert torch.is_tensor(y) and s.shape == h0.shape
    # the argument, the context, the environment
    assert routed(*args, backend="triton")[0] == op
    assert torch.is_tensor(routed(*cuda_args, backend="torch")[0])
    with use_backend("triton"):
        assert routed(*args)[0] == op
        assert torch.is_tensor(routed(*args, backend="torch")[0])
    monkeypatch.setenv(ENV_VAR, "triton")
    assert routed(*args)[0] == op
    # gradients force the torch reference; under no_grad they do not
    leaf = args[grad_at].clone().requires_grad_()
    grad_args = (*args[:grad_at], leaf, *args[grad_at + 1:])
    y, s = routed(*grad_args, backend="triton")
    assert y.grad_fn is not None and s.grad_fn is not None
    with torch.no_grad():
        assert routed(*grad_args, backend="triton")[0] == op


def test_dispatch_without_triton_runs_the_reference(monkeypatch):
    """auto on CUDA tensors without triton importable: the torch reference."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(backend_module, "triton_available", lambda: False)
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=5, H=5, G=3, init=True)
    y_ref, _ = naive_ssd_chunk_scan(x, dt, A, B, C, RAGGED, D=D)
    y_cuda, _ = ssd_chunk_scan(x.as_subclass(FakeCuda), dt, A, B, C, RAGGED, D=D)
    assert torch.equal(y_cuda.as_subclass(torch.Tensor), y_ref)
    ys_ref, _ = naive_ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], RAGGED, D=D)
    ys_cuda, _ = ssd_step(h0.as_subclass(FakeCuda), x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], RAGGED, D=D)
    assert torch.equal(ys_cuda.as_subclass(torch.Tensor), ys_ref)


def test_cpu_auto_calls_never_load_the_ssd_triton_kernels(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    for name in TRITON_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=3, H=5, G=3, init=True)
    ssd_chunk_scan(x, dt, A, B, C, RAGGED)
    ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], RAGGED)
    assert CHUNK_MODULE not in sys.modules and RECURRENT_MODULE not in sys.modules
    if interpreter_active():
        return
    pytest.importorskip("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ssd_chunk_scan(x, dt, A, B, C, RAGGED, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], RAGGED, backend="triton")


def test_triton_limits_checked_before_launch():
    """State size and dtype limits, and the reference's own checks, fail before any launch (no interpreter needed)."""
    pytest.importorskip("triton")
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(Bt=1, T=2, H=2, G=1, N=264, init=True)
    with pytest.raises(ValueError, match="up to N = 256"):
        ssd_chunk_scan(x, dt, A, B, C, backend="triton")
    with pytest.raises(ValueError, match="up to N = 256"):
        ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], backend="triton")
    with pytest.raises(TypeError, match="fp32, bf16 or fp16"):
        ssd_chunk_scan(x.double(), dt, A, B, C, backend="triton")
    x5, dt5, A5, B5, C5, _, _, _ = make_inputs(Bt=1, T=2, H=5, G=3)
    with pytest.raises(ValueError, match="H % G == 0"):
        ssd_chunk_scan(x5, dt5, A5, B5, C5, backend="triton")
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunk_scan(x, dt, A, B, C, chunk_size=0, backend="triton")
    with pytest.raises(ValueError, match=r"\[0, G\)"):
        ssd_step(h0, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], [0, 1], backend="triton")


def test_kernels_public_api():
    for name in ("ssd_chunk_scan", "ssd_step", "naive_ssd_chunk_scan", "naive_ssd_step"):
        assert name in kernels.__all__
    scan = list(inspect.signature(ssd_chunk_scan).parameters)
    naive_scan = list(inspect.signature(naive_ssd_chunk_scan).parameters)
    assert naive_scan[-1] == "chunk_state_callback" and scan == [*naive_scan[:-1], "backend"]
    assert list(inspect.signature(ssd_step).parameters) == [*inspect.signature(naive_ssd_step).parameters, "backend"]
    assert "Triton" in ssd_chunk_scan.__doc__ and "no Triton" not in ssd_chunk_scan.__doc__
    assert "head_to_group" in ssd_step.__doc__


def test_naive_reference_is_self_contained():
    """naive.py is copied next to checkpoints for trust_remote_code users: torch and the standard library only."""
    from hf_rankprune.kernels.mamba2_ssd import naive

    tree = ast.parse(inspect.getsource(naive))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in naive.py"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "torch"} | set(sys.stdlib_module_names), imported
    assert "hf_rankprune" not in imported


# --------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter (fp32) vs the torch reference
# --------------------------------------------------------------------------------------------------

TRITON_ATOL = TRITON_RTOL = 5e-5  # fp32; the kernel sums over its own 64-token chunks (the reference: 16 here)


@pytest.fixture(scope="module")
def triton_kernels():
    require_interpreter(TRITON_MODULES)


def test_triton_suite_under_interpreter():
    """Run the Triton tests of this file in a pytest subprocess with TRITON_INTERPRET=1 from the start."""
    run_under_interpreter(__file__, TRITON_TESTS)


TRITON_SCAN_CASES = {  # (Bt, T, H, P, G, N, head_to_group, init, softplus, dt_limit)
    "consecutive-2chunks": (2, 70, 4, 8, 2, 16, None, True, True, (0.0, INF)),
    "ragged-odd-PN": (1, 33, 5, 16, 3, 24, RAGGED, False, True, (0.001, 2.0)),
    "ragged-T1-raw-dt": (2, 1, 5, 8, 3, 16, RAGGED, True, False, (-INF, INF)),
    "cyclic-P-blocks": (1, 9, 3, 72, 2, 16, [1, 0, 1], True, False, (0.05, 0.8)),
    "one-group-N136": (1, 40, 2, 20, 1, 136, None, True, True, (0.0, INF)),
}


@pytest.mark.parametrize("case", list(TRITON_SCAN_CASES.values()), ids=list(TRITON_SCAN_CASES))
def test_triton_scan_matches_reference(triton_kernels, case):
    Bt, T, H, P, G, N, head_to_group, init, softplus, dt_limit = case
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(Bt=Bt, T=T, H=H, P=P, G=G, N=N, init=init, seed=T + N)
    h2g = None if head_to_group is None else torch.tensor(head_to_group)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=softplus, dt_limit=dt_limit, initial_state=h0)
    y, s = ssd_chunk_scan(x, dt, A, B, C, h2g, chunk_size=16, output_final_state=True, backend="triton", **kw)
    y_ref, s_ref = naive_ssd_chunk_scan(x, dt, A, B, C, h2g, chunk_size=16, output_final_state=True, **kw)
    assert y.grad_fn is None and y.dtype == s.dtype == torch.float32
    assert y.shape == (Bt, T, H, P) and s.shape == (Bt, H, P, N)
    assert_close(y, y_ref, atol=TRITON_ATOL, rtol=TRITON_RTOL)
    assert_close(s, s_ref, atol=TRITON_ATOL, rtol=TRITON_RTOL)
    # no final state asked for; the chunk size is the kernel's own choice
    y2, s2 = ssd_chunk_scan(x, dt, A, B, C, h2g, chunk_size=7, backend="triton", **kw)
    assert s2 is None
    assert_close(y2, y)


def test_triton_scan_optional_arguments(triton_kernels):
    """No D / dt_bias / initial state; an explicit consecutive map equals None; an empty sequence."""
    x, dt, A, B, C, _, _, h0 = make_inputs(Bt=1, T=20, H=4, P=8, G=2, N=16, init=True, seed=2)
    y, s = ssd_chunk_scan(x, dt, A, B, C, dt_softplus=True, output_final_state=True, backend="triton")
    y_ref, s_ref = naive_ssd_chunk_scan(x, dt, A, B, C, dt_softplus=True, output_final_state=True)
    assert_close(y, y_ref, atol=TRITON_ATOL, rtol=TRITON_RTOL)
    assert_close(s, s_ref, atol=TRITON_ATOL, rtol=TRITON_RTOL)
    y2, s2 = ssd_chunk_scan(x, dt, A, B, C, torch.tensor([0, 0, 1, 1]), dt_softplus=True, output_final_state=True,
                            backend="triton")
    assert torch.equal(y2, y) and torch.equal(s2, s)
    y0, s0 = ssd_chunk_scan(x[:, :0], dt[:, :0], A, B[:, :0], C[:, :0], initial_state=h0, output_final_state=True,
                            backend="triton")
    assert y0.shape == (1, 0, 4, 8) and torch.equal(s0, h0)


@pytest.mark.parametrize("dt_softplus", [True, False])
@pytest.mark.parametrize("head_to_group", [None, RAGGED], ids=["consecutive", "ragged"])
def test_triton_step_matches_reference(triton_kernels, dt_softplus, head_to_group):
    H, G = (4, 2) if head_to_group is None else (5, 3)
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(T=1, H=H, P=24, G=G, N=24, init=True, seed=4)
    args = (x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], head_to_group)
    for dt_limit in ((0.0, INF), (-INF, INF), (0.05, 0.8)):
        state = h0.clone()
        kw = dict(D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
        y, s = ssd_step(state, *args, **kw, backend="triton")
        assert torch.equal(state, h0)  # not modified in place
        y_ref, s_ref = naive_ssd_step(h0, *args, **kw)
        assert y.dtype == torch.float32 and s.dtype == torch.float32 and s.shape == h0.shape
        assert_close(y, y_ref)
        assert_close(s, s_ref)
    y, s = ssd_step(h0, *args, backend="triton")  # no D, no dt_bias
    y_ref, s_ref = naive_ssd_step(h0, *args)
    assert_close(y, y_ref)
    assert_close(s, s_ref)


def test_triton_prefill_then_steps_equal_one_scan(triton_kernels, monkeypatch):
    """Triton prefill (chunk kernel) then Triton decoding steps (environment-selected) = one reference scan."""
    T, prefill = 70, 66
    x, dt, A, B, C, D, dt_bias, h0 = make_inputs(Bt=1, T=T, H=5, P=16, G=3, N=24, init=True, seed=11)
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=True, dt_limit=(0.001, 2.0))
    y_full, s_full = naive_ssd_chunk_scan(x, dt, A, B, C, RAGGED, chunk_size=16, initial_state=h0,
                                          output_final_state=True, **kw)
    monkeypatch.setenv(ENV_VAR, "triton")
    y_pre, state = ssd_chunk_scan(x[:, :prefill], dt[:, :prefill], A, B[:, :prefill], C[:, :prefill], RAGGED,
                                  chunk_size=16, initial_state=h0, output_final_state=True, **kw)
    ys = [y_pre]
    for t in range(prefill, T):
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], RAGGED, **kw)
        ys.append(y_t[:, None])
    assert_close(torch.cat(ys, dim=1), y_full, atol=TRITON_ATOL, rtol=TRITON_RTOL)
    assert_close(state, s_full, atol=TRITON_ATOL, rtol=TRITON_RTOL)


def test_triton_runs_a_ragged_pruned_model(triton_kernels):
    """A ragged-pruned Nemotron-H model's mixers call the dispatch: prefill (chunk scan) and a decoding step on the
    Triton kernels give the torch reference's logits."""
    from _pruning_reference import PLANS
    from conftest import build_tiny_model

    from hf_rankprune.arch import model_geometry
    from hf_rankprune.plan import PrunePlan
    from hf_rankprune.surgery import apply_plan

    model = build_tiny_model("nemotron_h")
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["ragged_groups"]))
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    logits = {}
    for name in ("torch", "triton"):
        with torch.no_grad(), use_backend(name):
            prefill = model(ids, use_cache=True)
            step = model(ids[:, -1:], past_key_values=prefill.past_key_values, use_cache=True)
        logits[name] = (prefill.logits, step.logits)
    assert_close(logits["triton"][0], logits["torch"][0], atol=TRITON_ATOL, rtol=TRITON_RTOL)
    assert_close(logits["triton"][1], logits["torch"][1], atol=TRITON_ATOL, rtol=TRITON_RTOL)
