"""Kimi delta attention kernels: torch reference vs transformers, Triton (interpreter, fp32) vs torch, dispatch, autograd.

The Triton tests (named `test_triton_*`) skip themselves unless the Triton interpreter is active and are run by
`test_triton_suite_under_interpreter` in one pytest subprocess with `TRITON_INTERPRET=1` set from the start
(see `_triton_interpreter.py`). Shapes are tiny: the interpreter costs milliseconds per token and head.
"""

from __future__ import annotations

import functools
import inspect
import sys

import pytest
import torch
import torch.nn.functional as F
from _triton_interpreter import (
    FakeCuda,
    interpreter_active,
    require_interpreter,
    run_under_interpreter,
    stub_kernel_modules,
)
from transformers.models.kimi_linear import modeling_kimi_linear as kimi_linear

from hf_rankprune import kernels
from hf_rankprune.kernels import (
    chunk_kimi_delta_attention,
    fused_recurrent_kimi_delta_attention,
    naive_chunk_kimi_delta_attention,
    naive_recurrent_kimi_delta_attention,
    use_backend,
)
from hf_rankprune.kernels.backend import ENV_VAR

# transformers' torch implementations, unwrapped from the hub/fla kernel dispatch (fla must never run on CPU)
hf_chunk = inspect.unwrap(kimi_linear.chunk_kimi_delta_attention)
hf_recurrent = inspect.unwrap(kimi_linear.recurrent_kimi_delta_attention)

CHUNK_MODULE = "hf_rankprune.kernels.kimi_delta_attention.chunk"
RECURRENT_MODULE = "hf_rankprune.kernels.kimi_delta_attention.fused_recurrent"
# the KDA chunk kernel calls a jit helper of the gated delta rule's chunk module: that one is (re)loaded first
TRITON_MODULES = ("hf_rankprune.kernels.gated_delta_rule.chunk", CHUNK_MODULE, RECURRENT_MODULE)
TRITON_TESTS = "test_triton_"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """These tensors are tiny: on a shared, busy CPU, torch's intra-op threads cost far more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(B=2, T=20, H=2, K=16, V=16, l2=True, seed=0, dtype=torch.float32, init=False, N=None, decay=2.0):
    """Random KDA inputs; g is a per-key-channel log decay (logsigmoid(x + decay) <= 0)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    if not l2:  # keep the recurrence bounded without normalisation
        q, k = F.normalize(q, dim=-1) * 1.5, F.normalize(k, dim=-1) * 0.9
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, K, generator=gen) + decay)
    beta = torch.rand(B, T, H, generator=gen)
    h0 = torch.randn(N or B, H, K, V, generator=gen) * 0.5 if init else None
    q, k, v, g, beta = (x.to(dtype) for x in (q, k, v, g, beta))
    return q, k, v, g, beta, h0


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def cumulative(lengths):
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])


# --------------------------------------------------------------------------------------------------
# torch reference vs transformers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("H", [1, 3])
@pytest.mark.parametrize("T", [1, 63, 100, 130])
@pytest.mark.parametrize("init", [False, True])
@pytest.mark.parametrize("l2", [True, False])
def test_torch_reference_matches_transformers(H, T, init, l2):
    q, k, v, g, beta, h0 = make_inputs(T=T, H=H, K=16, V=24, l2=l2, init=init)
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o_c, s_c = naive_chunk_kimi_delta_attention(q, k, v, g, beta, **kw)
    o_r, s_r = naive_recurrent_kimi_delta_attention(q, k, v, g, beta, **kw)
    for (o, s), theirs in (((o_c, s_c), hf_chunk), ((o_r, s_r), hf_recurrent)):
        o_ref, s_ref = theirs(q, k, v, g, beta, **kw)
        assert o.shape == (2, T, H, 24) and o.dtype == torch.float32
        assert s.shape == (2, H, 16, 24) and s.dtype == torch.float32
        assert_close(o, o_ref)
        assert_close(s, s_ref)
    # chunked and recurrent agree with each other, and the dispatched functions run them on CPU
    assert_close(o_c, o_r, atol=2e-5, rtol=2e-5)
    assert_close(s_c, s_r, atol=2e-5, rtol=2e-5)
    o_d, s_d = chunk_kimi_delta_attention(q, k, v, g, beta, **kw)
    assert torch.equal(o_d, o_c) and torch.equal(s_d, s_c)
    o_d, s_d = fused_recurrent_kimi_delta_attention(q, k, v, g, beta, **kw)
    assert torch.equal(o_d, o_r) and torch.equal(s_d, s_r)


def test_strong_decay_is_stable():
    """Per-channel log decays down to -40 a token: exp(G_i - G_j) is only ever taken of non-positive exponents."""
    q, k, v, g, beta, h0 = make_inputs(B=1, T=70, H=2, init=True)
    g = g * torch.rand(g.shape, generator=torch.Generator().manual_seed(1)) * 40
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_c, s_c = naive_chunk_kimi_delta_attention(q, k, v, g, beta, **kw)
    o_r, s_r = naive_recurrent_kimi_delta_attention(q, k, v, g, beta, **kw)
    assert torch.isfinite(o_c).all() and torch.isfinite(s_c).all()
    assert_close(o_c, o_r)
    assert_close(s_c, s_r)


def test_single_token_decode_continues_prefill():
    q, k, v, g, beta, _ = make_inputs(T=66, H=3, K=16, V=24)
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_full, s_full = chunk_kimi_delta_attention(q, k, v, g, beta, **kw)
    _, state = chunk_kimi_delta_attention(*(x[:, :65] for x in (q, k, v, g, beta)), **kw)
    o_last, state = fused_recurrent_kimi_delta_attention(*(x[:, 65:] for x in (q, k, v, g, beta)), initial_state=state,
                                                         **kw)
    assert_close(o_last, o_full[:, 65:])
    assert_close(state, s_full)


def test_scale_argument():
    q, k, v, g, beta, _ = make_inputs(T=10, l2=False)
    for fn in (naive_chunk_kimi_delta_attention, naive_recurrent_kimi_delta_attention):
        o, _ = fn(q, k, v, g, beta, scale=0.3)
        o_ref, _ = fn(q * 0.3 * 16**0.5, k, v, g, beta)
        assert_close(o, o_ref)


@pytest.mark.parametrize("fn", [naive_chunk_kimi_delta_attention, naive_recurrent_kimi_delta_attention])
def test_cu_seqlens_matches_separate_sequences(fn):
    lengths = [7, 70, 0, 1, 22]
    q, k, v, g, beta, h0 = make_inputs(B=1, T=sum(lengths), H=3, init=True, N=len(lengths))
    cu = cumulative(lengths)
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    o, s = fn(q, k, v, g, beta, initial_state=h0, cu_seqlens=cu, **kw)
    assert o.shape == v.shape and s.shape == h0.shape
    for i in range(len(lengths)):
        a, b = cu[i], cu[i + 1]
        o_i, s_i = fn(*(x[:, a:b] for x in (q, k, v, g, beta)), initial_state=h0[i:i + 1], **kw)
        assert_close(o[:, a:b], o_i)
        assert_close(s[i:i + 1], s_i)


def test_chunk_state_callback_sees_the_states_at_chunk_boundaries():
    T = 150
    q, k, v, g, beta, h0 = make_inputs(T=T, H=3, K=16, V=24, init=True)
    kw = dict(initial_state=h0, use_qk_l2norm_in_kernel=True)
    seen = []
    o, s = naive_chunk_kimi_delta_attention(q, k, v, g, beta, **kw, output_final_state=True,
                                            chunk_state_callback=lambda i, state: seen.append((i, state.clone())))
    assert [i for i, _ in seen] == [0, 1, 2]
    for (_, state), end in zip(seen, (64, 128, T)):
        _, s_ref = naive_recurrent_kimi_delta_attention(*(x[:, :end] for x in (q, k, v, g, beta)), **kw,
                                                        output_final_state=True)
        assert state.shape == (2, 3, 16, 24)
        assert_close(state, s_ref, atol=2e-5, rtol=2e-5)
    assert torch.equal(seen[-1][1], s)
    # the callback changes nothing
    o2, _ = naive_chunk_kimi_delta_attention(q, k, v, g, beta, **kw)
    assert torch.equal(o, o2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_close_to_fp32(dtype):
    q, k, v, g, beta, h0 = make_inputs(T=70, H=3, init=True, dtype=dtype)
    for fn in (chunk_kimi_delta_attention, fused_recurrent_kimi_delta_attention):
        o, s = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
        assert o.dtype == dtype and s.dtype == torch.float32
        o32, s32 = fn(*(x.float() for x in (q, k, v, g, beta)), initial_state=h0, output_final_state=True,
                      use_qk_l2norm_in_kernel=True)
        assert_close(o.float(), o32, atol=2e-2, rtol=2e-2)
        assert_close(s, s32, atol=1e-4, rtol=1e-4)  # state computed in fp32 from the same (half) inputs


def test_empty_sequence():
    q, k, v, g, beta, h0 = make_inputs(B=2, T=0, H=3, init=True)
    for fn in (naive_chunk_kimi_delta_attention, naive_recurrent_kimi_delta_attention):
        o, s = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True)
        assert o.shape == (2, 0, 3, 16)
        assert_close(s, h0)


def test_input_validation():
    q, k, v, g, beta, _ = make_inputs(T=4, H=3)
    fn = chunk_kimi_delta_attention
    with pytest.raises(ValueError, match="per key channel"):
        fn(q, k, v, g[..., 0], beta)  # a gated-delta-rule style [B, T, H] decay
    with pytest.raises(ValueError, match="must be 4-D"):
        fn(q[0], k, v, g, beta)
    with pytest.raises(ValueError, match="same shape"):
        fn(q[..., :8], k, v, g, beta)
    with pytest.raises(ValueError, match="no head"):
        fn(q, k, v[:, :, :1], g, beta)
    with pytest.raises(ValueError, match="beta"):
        fn(q, k, v, g, beta[..., :1])
    with pytest.raises(ValueError, match="batch size must be 1"):
        fn(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="end at T"):
        fn(q[:1], k[:1], v[:1], g[:1], beta[:1], cu_seqlens=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="non-decreasing"):
        fn(q[:1], k[:1], v[:1], g[:1], beta[:1], cu_seqlens=torch.tensor([0, 3, 1, 4]))
    with pytest.raises(ValueError, match="initial_state"):
        fn(q, k, v, g, beta, initial_state=torch.zeros(2, 3, 16, 8))
    with pytest.raises(ValueError, match="fixed-length"):
        naive_chunk_kimi_delta_attention(q[:1], k[:1], v[:1], g[:1], beta[:1], cu_seqlens=torch.tensor([0, 4]),
                                         chunk_state_callback=lambda i, s: None)
    with pytest.raises(ValueError, match="chunk_size"):
        naive_chunk_kimi_delta_attention(q, k, v, g, beta, chunk_size=0)


def test_triton_head_dim_limit_checked_before_launch():
    pytest.importorskip("triton")
    q, k, v, g, beta, _ = make_inputs(B=1, T=2, H=1, K=256, V=16)
    for fn in (chunk_kimi_delta_attention, fused_recurrent_kimi_delta_attention):
        with pytest.raises(ValueError, match="up to 128"):
            fn(q, k, v, g, beta, backend="triton")


# --------------------------------------------------------------------------------------------------
# autograd through the torch path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [naive_chunk_kimi_delta_attention, naive_recurrent_kimi_delta_attention])
def test_gradcheck_double(fn):
    if fn is naive_chunk_kimi_delta_attention:  # small chunks: several chunks and a padded one, a quick gradcheck
        fn = functools.partial(naive_chunk_kimi_delta_attention, chunk_size=2)
    q, k, v, g, beta, h0 = make_inputs(B=1, T=5, H=2, K=4, V=3, init=True)
    inputs = [x.double().requires_grad_() for x in (q, k, v, g, beta, h0)]

    def f(q, k, v, g, beta, h0):
        return fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_grads_match_transformers_autograd():
    q, k, v, g, beta, h0 = make_inputs(T=70, H=2, init=True)
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    grads = {}
    for name in ("ours", "hf", "dispatch_forced_triton"):
        leaves = [x.clone().requires_grad_() for x in (q, k, v, g, beta, h0)]
        if name == "ours":
            o, s = naive_chunk_kimi_delta_attention(*leaves[:5], initial_state=leaves[5], **kw)
        elif name == "hf":
            o, s = hf_chunk(*leaves[:5], initial_state=leaves[5], **kw)
        else:  # requires_grad inputs fall back to the differentiable torch path, whatever backend is asked for
            o, s = chunk_kimi_delta_attention(*leaves[:5], initial_state=leaves[5], **kw, backend="triton")
        (o.pow(2).sum() + s.sum()).backward()
        grads[name] = [x.grad for x in leaves]
    for a, b, c in zip(grads["ours"], grads["hf"], grads["dispatch_forced_triton"]):
        assert_close(a, b, atol=1e-4, rtol=1e-4)
        assert_close(a, c)


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_triton(monkeypatch):
    """Stub Triton modules in place of the KDA kernel modules: the dispatcher's routing, without a GPU."""
    return stub_kernel_modules(
        monkeypatch, {CHUNK_MODULE: {"chunk_kimi_delta_attention_fwd": "chunk"}, RECURRENT_MODULE: {"fused_recurrent_kimi_delta_attention_fwd": "fused_recurrent"}}
    )


@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
def test_dispatch_rules(fake_triton, monkeypatch, op):
    pytest.importorskip("triton")  # "auto" picks Triton on CUDA tensors only when triton is importable
    fn = chunk_kimi_delta_attention if op == "chunk" else fused_recurrent_kimi_delta_attention
    q, k, v, g, beta, h0 = make_inputs(B=1, T=3, H=1, init=True)
    cu = torch.tensor([0, 3])
    args = (q, k, v, g, beta, 0.5, h0, True, True, cu)
    cuda_args = (q.as_subclass(FakeCuda), *args[1:])

    def routed(*a, **kw):
        fake_triton.clear()
        out = fn(*a, **kw)
        assert len(fake_triton) <= 1
        return fake_triton[0] if fake_triton else out

    # auto: CUDA -> Triton with every argument in order, CPU -> torch
    name, passed = routed(*cuda_args)
    assert name == op and passed[1:] == args[1:] and passed[0] is cuda_args[0]
    o, s = routed(*args)
    assert s.shape == h0.shape and torch.is_tensor(o)
    # the argument, the context, the environment
    assert routed(*args, backend="triton")[0] == op
    assert torch.is_tensor(routed(*cuda_args, backend="torch")[0])
    with use_backend("triton"):
        assert routed(*args)[0] == op
        assert torch.is_tensor(routed(*args, backend="torch")[0])
    monkeypatch.setenv(ENV_VAR, "triton")
    assert routed(*args)[0] == op
    # gradients force the torch reference; under no_grad they do not
    leaf = h0.clone().requires_grad_()
    o, s = routed(*args[:6], leaf, *args[7:], backend="triton")
    assert o.grad_fn is not None and s.grad_fn is not None
    with torch.no_grad():
        assert routed(*args[:6], leaf, *args[7:], backend="triton")[0] == op


def test_cpu_auto_calls_never_load_the_kda_triton_kernels(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    for name in (CHUNK_MODULE, RECURRENT_MODULE):
        monkeypatch.delitem(sys.modules, name, raising=False)
    q, k, v, g, beta, _ = make_inputs(B=1, T=3, H=1)
    chunk_kimi_delta_attention(q, k, v, g, beta)
    fused_recurrent_kimi_delta_attention(q, k, v, g, beta)
    assert CHUNK_MODULE not in sys.modules and RECURRENT_MODULE not in sys.modules
    if interpreter_active():
        return
    pytest.importorskip("triton")
    for fn in (chunk_kimi_delta_attention, fused_recurrent_kimi_delta_attention):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            fn(q, k, v, g, beta, backend="triton")


def test_kernels_public_api():
    for name in ("chunk_kimi_delta_attention", "fused_recurrent_kimi_delta_attention",
                 "naive_chunk_kimi_delta_attention", "naive_recurrent_kimi_delta_attention"):
        assert name in kernels.__all__
    params = list(inspect.signature(chunk_kimi_delta_attention).parameters)
    assert params == list(inspect.signature(fused_recurrent_kimi_delta_attention).parameters)
    assert params == [*inspect.signature(naive_recurrent_kimi_delta_attention).parameters, "backend"]
    naive_chunk = list(inspect.signature(naive_chunk_kimi_delta_attention).parameters)
    assert naive_chunk == [*params[:-1], "chunk_size", "chunk_state_callback"]


def test_naive_reference_is_self_contained():
    """naive.py is copied next to checkpoints for trust_remote_code users: torch and the standard library only."""
    import ast

    from hf_rankprune.kernels.kimi_delta_attention import naive

    tree = ast.parse(inspect.getsource(naive))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in naive.py"
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "torch"} | set(sys.stdlib_module_names), imported


# --------------------------------------------------------------------------------------------------
# Triton kernels under the interpreter (fp32) vs the torch reference
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_kernels():
    require_interpreter(TRITON_MODULES)


def test_triton_suite_under_interpreter():
    """Run the Triton tests of this file in a pytest subprocess with TRITON_INTERPRET=1 from the start."""
    run_under_interpreter(__file__, TRITON_TESTS)


TRITON_CASES = [  # (B, T, H, K, V, init, l2): several chunks, odd head counts and dims, two V blocks, one token
    (1, 70, 1, 24, 24, True, True),
    (2, 9, 3, 16, 32, False, False),
    (1, 5, 1, 32, 128, True, True),
    (2, 1, 3, 24, 24, True, False),
]


@pytest.mark.parametrize("case", TRITON_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
def test_triton_matches_torch(triton_kernels, op, case):
    B, T, H, K, V, init, l2 = case
    if op == "fused_recurrent" and T > 16:
        T = 16  # the recurrent kernel is for decoding; keep the interpreter run short
    q, k, v, g, beta, h0 = make_inputs(B=B, T=T, H=H, K=K, V=V, init=init, l2=l2, seed=3)
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    fn = chunk_kimi_delta_attention if op == "chunk" else fused_recurrent_kimi_delta_attention
    ref = naive_chunk_kimi_delta_attention if op == "chunk" else naive_recurrent_kimi_delta_attention
    o, s = fn(q, k, v, g, beta, **kw, backend="triton")
    assert o.grad_fn is None
    o_ref, s_ref = ref(q, k, v, g, beta, **kw)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    assert_close(o, o_ref)
    assert_close(s, s_ref)
    o2, s2 = fn(q, k, v, g, beta, initial_state=h0, use_qk_l2norm_in_kernel=l2, backend="triton")
    assert s2 is None
    assert_close(o2, o)


@pytest.mark.parametrize("op", ["chunk", "fused_recurrent"])
def test_triton_cu_seqlens(triton_kernels, op, monkeypatch):
    lengths = [3, 66, 0, 1] if op == "chunk" else [3, 0, 1, 5]
    H = 1 if op == "chunk" else 3
    q, k, v, g, beta, h0 = make_inputs(B=1, T=sum(lengths), H=H, K=24, V=24, init=True, N=len(lengths), seed=5)
    fn = chunk_kimi_delta_attention if op == "chunk" else fused_recurrent_kimi_delta_attention
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cumulative(lengths))
    monkeypatch.setenv(ENV_VAR, "triton")
    o, s = fn(q, k, v, g, beta, **kw)
    o_ref, s_ref = fn(q, k, v, g, beta, **kw, backend="torch")
    assert_close(o, o_ref)
    assert_close(s, s_ref)


def test_triton_strong_decay_and_decode_after_prefill(triton_kernels):
    q, k, v, g, beta, h0 = make_inputs(B=1, T=67, H=1, init=True, seed=6)
    g = g * torch.rand(g.shape, generator=torch.Generator().manual_seed(1)) * 40
    kw = dict(output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_full, s_full = naive_chunk_kimi_delta_attention(q, k, v, g, beta, initial_state=h0, **kw)
    kw["backend"] = "triton"
    o_pre, state = chunk_kimi_delta_attention(*(x[:, :66] for x in (q, k, v, g, beta)), initial_state=h0, **kw)
    o_last, state = fused_recurrent_kimi_delta_attention(*(x[:, 66:] for x in (q, k, v, g, beta)),
                                                         initial_state=state, **kw)
    assert_close(torch.cat([o_pre, o_last], dim=1), o_full)
    assert_close(state, s_full)


def test_triton_runs_a_ragged_pruned_model(triton_kernels):
    """A ragged-pruned Kimi-Linear model's layers call the dispatch: prefill (chunk) and a decoding step (recurrent)
    on the Triton kernels give the torch reference's logits."""
    from _pruning_reference import PLANS
    from conftest import build_tiny_model

    from hf_rankprune.arch import model_geometry
    from hf_rankprune.plan import PrunePlan
    from hf_rankprune.surgery import apply_plan

    model = build_tiny_model("kimi_linear")
    apply_plan(model, PrunePlan.from_kept_heads(model_geometry(model), PLANS["global"]))
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    logits = {}
    for backend in ("torch", "triton"):
        with torch.no_grad(), use_backend(backend):
            prefill = model(ids, use_cache=True)
            step = model(ids[:, -1:], past_key_values=prefill.past_key_values, use_cache=True)
        logits[backend] = (prefill.logits, step.logits)
    assert_close(logits["triton"][0], logits["torch"][0])
    assert_close(logits["triton"][1], logits["torch"][1])
