"""Inference-state memory of a hybrid linear-attention model at a context length.

One example per layer. A linear-attention (gated delta rule) layer keeps a matrix state per value head,
`num_heads x head_k_dim x head_v_dim x state_dtype_bytes` (fp32: 4 bytes) independent of the context length,
plus a causal-conv state `conv_dim x (conv_kernel - 1) x conv_dtype_bytes`. A full-attention layer keeps keys
and values, `2 x num_heads (KV heads) x head_dim x context_length x kv_dtype_bytes`. Everything scales
with `batch_size`. Per-layer head counts may differ (pruned models).
"""

import datasets
import evaluate

_DESCRIPTION = "Bytes of linear-attention state and of full-attention KV cache at a given context length."
_KWARGS_DESCRIPTION = """
Args (one entry per layer):
    layer_types: "linear_attention" or "full_attention".
    num_heads: value heads (linear) or key/value heads (full attention).
    head_k_dim: key head dim (linear) or head_dim (full attention).
    head_v_dim: value head dim (linear) or head_dim (full attention).
    conv_dims: channels of the linear layer's causal conv (0 for full attention or none).
    conv_kernels: kernel size of that conv (0 if none).
Keyword args:
    context_length (int, required), batch_size (1), kv_dtype_bytes (2), state_dtype_bytes (4),
    conv_dtype_bytes (defaults to kv_dtype_bytes).
Returns:
    linear_state_bytes, conv_state_bytes, kv_cache_bytes, total_bytes, num_linear_layers,
    num_full_attention_layers, linear_value_heads, context_length; linear_state_bytes_bf16 (the recurrent state kept
    in bf16, as servers can); sequences_per_gib and sequences_per_gib_bf16_state (sequences of context_length tokens
    whose whole inference state fits in 1 GiB, per sequence figures regardless of batch_size).
"""

_GIB = 2**30
_LINEAR = {"linear_attention"}
_FULL = {"full_attention", "sliding_attention", "attention"}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Memory(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "layer_types": datasets.Value("string"),
                    "num_heads": datasets.Value("int64"),
                    "head_k_dim": datasets.Value("int64"),
                    "head_v_dim": datasets.Value("int64"),
                    "conv_dims": datasets.Value("int64"),
                    "conv_kernels": datasets.Value("int64"),
                }
            ),
        )

    def _compute(
        self,
        layer_types,
        num_heads,
        head_k_dim,
        head_v_dim,
        conv_dims,
        conv_kernels,
        context_length=None,
        batch_size=1,
        kv_dtype_bytes=2,
        state_dtype_bytes=4,
        conv_dtype_bytes=None,
    ):
        if context_length is None or int(context_length) < 0:
            raise ValueError("memory needs a context_length >= 0")
        conv_dtype_bytes = kv_dtype_bytes if conv_dtype_bytes is None else conv_dtype_bytes
        linear = conv = kv = 0
        n_linear = n_full = v_heads = 0
        for kind, heads, dk, dv, cdim, ck in zip(
            layer_types, num_heads, head_k_dim, head_v_dim, conv_dims, conv_kernels
        ):
            if kind in _LINEAR:
                n_linear += 1
                v_heads += heads
                linear += heads * dk * dv * state_dtype_bytes
                conv += cdim * max(ck - 1, 0) * conv_dtype_bytes
            elif kind in _FULL:
                n_full += 1
                kv += 2 * heads * dk * int(context_length) * kv_dtype_bytes
            else:
                raise ValueError(f"unknown layer type {kind!r}")
        b = int(batch_size)
        # the same state in bf16 (vLLM mamba_ssm_cache_dtype, SGLang --mamba-ssm-dtype): the saving without pruning
        linear_bf16 = linear * 2 // state_dtype_bytes
        return {
            "linear_state_bytes": linear * b,
            "linear_state_bytes_bf16": linear_bf16 * b,
            "sequences_per_gib": _GIB // (linear + conv + kv) if linear + conv + kv else 0,
            "sequences_per_gib_bf16_state": _GIB // (linear_bf16 + conv + kv) if linear_bf16 + conv + kv else 0,
            "conv_state_bytes": conv * b,
            "kv_cache_bytes": kv * b,
            "total_bytes": (linear + conv + kv) * b,
            "num_linear_layers": n_linear,
            "num_full_attention_layers": n_full,
            "linear_value_heads": v_heads,
            "context_length": int(context_length),
        }
