"""Inference-state memory of a hybrid linear-attention model at a context length.

One example per layer with a cache, its bytes already computed by hf_rankprune's one memory formula
(`hf_rankprune.memory.model_memory_layers`, from the model's geometry as it is, per-layer head counts of pruned models
included): the linear layers' recurrent state and convolution state, the attention layers' caches (full, sliding
window, indexed). This metric adds them up and derives what a server cares about: the same state in bf16 and the
sequences whose whole inference state fits in 1 GiB.
"""

import datasets
import evaluate

_DESCRIPTION = "Bytes of linear-attention state, convolution state and attention caches at a given context length."
_KWARGS_DESCRIPTION = """
Args (one entry per layer with a cache; bytes for `batch_size` sequences of `context_length` tokens):
    layer_types: "linear_attention", or the attention cache kind ("full_attention", "sliding_attention", ...).
    num_heads: value heads of a linear layer (0 for attention layers).
    state_bytes: recurrent state bytes (linear layers).
    conv_bytes: convolution state bytes (linear layers).
    cache_bytes: attention cache bytes (attention layers).
    fixed_bytes: bytes of states pruning does not change and the context does not grow (e.g. PLE convolutions).
Keyword args:
    context_length (int, required), batch_size (1), state_dtype_bytes (4: the dtype state_bytes were computed in).
Returns:
    linear_state_bytes, conv_state_bytes (with any fixed states), kv_cache_bytes, total_bytes, num_linear_layers,
    num_full_attention_layers (layers with an attention cache of any kind), linear_value_heads, context_length;
    linear_state_bytes_bf16 (the recurrent state kept in bf16, as servers can); sequences_per_gib and
    sequences_per_gib_bf16_state (sequences of context_length tokens whose whole inference state fits in 1 GiB, per
    sequence figures regardless of batch_size).
"""

_GIB = 2**30
_LINEAR = "linear_attention"


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
                    "state_bytes": datasets.Value("int64"),
                    "conv_bytes": datasets.Value("int64"),
                    "cache_bytes": datasets.Value("int64"),
                    "fixed_bytes": datasets.Value("int64"),
                }
            ),
        )

    def _compute(
        self, layer_types, num_heads, state_bytes, conv_bytes, cache_bytes, fixed_bytes, context_length=None,
        batch_size=1, state_dtype_bytes=4,
    ):  # fmt: skip
        if context_length is None or int(context_length) < 0:
            raise ValueError("memory needs a context_length >= 0")
        b = int(batch_size)
        linear_kinds = [kind == _LINEAR for kind in layer_types]
        linear, conv, kv = sum(state_bytes) // b, sum(conv_bytes) // b, sum(cache_bytes) // b  # per sequence
        conv += sum(fixed_bytes) // b  # fixed states sit beside the conv states in the same cache layers
        # the same state in bf16 (vLLM mamba_ssm_cache_dtype, SGLang --mamba-ssm-dtype): the saving without pruning
        linear_bf16 = linear * 2 // int(state_dtype_bytes)
        return {
            "linear_state_bytes": linear * b,
            "linear_state_bytes_bf16": linear_bf16 * b,
            "sequences_per_gib": _GIB // (linear + conv + kv) if linear + conv + kv else 0,
            "sequences_per_gib_bf16_state": _GIB // (linear_bf16 + conv + kv) if linear_bf16 + conv + kv else 0,
            "conv_state_bytes": conv * b,
            "kv_cache_bytes": kv * b,
            "total_bytes": (linear + conv + kv) * b,
            "num_linear_layers": sum(linear_kinds),
            "num_full_attention_layers": len(linear_kinds) - sum(linear_kinds),
            "linear_value_heads": sum(heads for heads, is_linear in zip(num_heads, linear_kinds) if is_linear),
            "context_length": int(context_length),
        }
