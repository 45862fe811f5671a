"""Modules of models pruned by hf_rankprune with a per-layer ("ragged") plan.

`RankPrunedGatedDeltaNet` is a gated-delta-rule layer with its own head counts and an explicit value->key head map
(so key groups may have unequal sizes); its forward reproduces the stock Qwen3-Next / Qwen3.5 forward (conv, gates,
gated norm, cache handling) and calls hf_rankprune's kernel dispatch with the map. Its weights use the contiguous
Qwen3.5 layout (`in_proj_qkv [q all | k all | v all]`, `in_proj_z`, `in_proj_b`, `in_proj_a`) for every
gated-delta-rule family; what the families differ in inside a layer (gate activation, beta scale, norm eps) comes
from the config (`rankprune_layer_options`, written by the family's adapter).

The other recurrences' ragged layers are their stock layer classes with their own head counts, made by factories:
`rankpruned_kda_layer_class` (Kimi delta attention: no head groups, so a head count is all a layer needs) and
`rankpruned_ssd_layer_class` (Mamba2 SSD: heads and groups, a head -> group map, and the gated norm's statistics taken
per group; Falcon-H1's mixer projects and gates differently: `_SSD_VARIANTS`). Their forwards call the package's
kernels; the conv kernels, gates and norms are the stock modules'.

`rankpruned_model_class` makes the ragged counterpart of a stock CausalLM (or vision-language model): its pruned linear
layers are rebuilt from the language model's `rankprune_plan` at construction, so `from_pretrained` loads pruned
checkpoints. Their model types read checkpoints through the stock type's checkpoint conversion
(`register_conversion_mapping`). The adapters declare which stock classes get one (`hf_rankprune.arch.registry`).

Self-contained (imports torch, transformers and its sibling files only): this file is copied next to pruned
checkpoints for `trust_remote_code=True` users who do not have hf_rankprune installed, with lines at its end that
define the checkpoint's classes; the kernels then come from the copied torch references
(`rankprune_<recurrence>_naive.py`).
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.integrations.accelerate import force_accelerate_hooks
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    apply_mask_to_padding_states,
    causal_conv1d_fn,
    causal_conv1d_update,
)

from .configuration_rankpruned import RANKPRUNED_SUFFIX

try:
    from hf_rankprune.kernels import (
        chunk_gated_delta_rule,
        chunk_kimi_delta_attention,
        fused_recurrent_gated_delta_rule,
        fused_recurrent_kimi_delta_attention,
        ssd_chunk_scan,
        ssd_step,
    )
except ImportError:  # copied next to a checkpoint and loaded with trust_remote_code, without hf_rankprune
    from .rankprune_gated_delta_rule_naive import naive_chunk_gated_delta_rule as chunk_gated_delta_rule
    from .rankprune_gated_delta_rule_naive import naive_recurrent_gated_delta_rule as fused_recurrent_gated_delta_rule
    from .rankprune_kimi_delta_attention_naive import naive_chunk_kimi_delta_attention as chunk_kimi_delta_attention
    from .rankprune_kimi_delta_attention_naive import (
        naive_recurrent_kimi_delta_attention as fused_recurrent_kimi_delta_attention,
    )
    from .rankprune_mamba2_ssd_naive import naive_ssd_chunk_scan as ssd_chunk_scan
    from .rankprune_mamba2_ssd_naive import naive_ssd_step as ssd_step

PLAN_CONFIG_KEY = "rankprune_plan"
LAYER_OPTIONS_KEY = "rankprune_layer_options"
# what the gated-delta-rule families differ in, inside a layer (defaults: Qwen3-Next / Qwen3.5); the family's adapter
# writes its values into the language model's config when it builds ragged layers (`ragged_layer_options`)
DEFAULT_LAYER_OPTIONS = {"gate_activation": "silu", "beta_scale": 1.0, "norm_eps": None, "norm_weight_in_fp32": False}


def layer_options(config) -> dict:
    """The ragged layer options recorded in `config` over the defaults (`norm_eps` None: `config.rms_norm_eps`)."""
    options = {**DEFAULT_LAYER_OPTIONS, **(getattr(config, LAYER_OPTIONS_KEY, None) or {})}
    if options["norm_eps"] is None:
        options["norm_eps"] = config.rms_norm_eps
    return options


class RankPrunedRMSNormGated(nn.Module):
    """Gated RMSNorm over one value head (the stock gated-delta-rule `RMSNormGated`: the gate's activation and
    whether the weight multiplies in fp32 vary by family)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, activation: str = "silu", weight_in_fp32: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        self.activation = activation
        self.weight_in_fp32 = weight_in_fp32

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight_in_fp32:
            hidden_states = self.weight.float() * hidden_states
        else:
            hidden_states = self.weight * hidden_states.to(input_dtype)
        hidden_states = hidden_states * ACT2FN[self.activation](gate.to(torch.float32))
        return hidden_states.to(input_dtype)


class RankPrunedGatedDeltaNet(nn.Module):
    """A gated-delta-rule layer with `num_key_heads` key heads, `num_value_heads` value heads and value head j
    reading key head `value_to_key[j]`."""

    def __init__(self, config, layer_idx: int, num_key_heads: int, num_value_heads: int, value_to_key) -> None:
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_k_heads = int(num_key_heads)
        self.num_v_heads = int(num_value_heads)
        self.head_k_dim = config.linear_key_head_dim
        self.head_v_dim = config.linear_value_head_dim
        self.key_dim = self.head_k_dim * self.num_k_heads
        self.value_dim = self.head_v_dim * self.num_v_heads
        self.conv_kernel_size = config.linear_conv_kernel_dim
        self.layer_idx = layer_idx
        self.activation = config.hidden_act
        options = layer_options(config)
        self.layer_norm_epsilon = options["norm_eps"]
        self.beta_scale = float(options["beta_scale"])
        self.layer_type = "linear_attention"

        self.conv_dim = self.key_dim * 2 + self.value_dim
        self.conv1d = nn.Conv1d(
            in_channels=self.conv_dim,
            out_channels=self.conv_dim,
            bias=False,
            kernel_size=self.conv_kernel_size,
            groups=self.conv_dim,
            padding=self.conv_kernel_size - 1,
        )
        self.dt_bias = nn.Parameter(torch.ones(self.num_v_heads))
        self.A_log = nn.Parameter(torch.zeros(self.num_v_heads))
        self.norm = RankPrunedRMSNormGated(
            self.head_v_dim,
            eps=self.layer_norm_epsilon,
            activation=options["gate_activation"],
            weight_in_fp32=bool(options["norm_weight_in_fp32"]),
        )
        self.out_proj = nn.Linear(self.value_dim, self.hidden_size, bias=False)
        self.in_proj_qkv = nn.Linear(self.hidden_size, self.key_dim * 2 + self.value_dim, bias=False)
        self.in_proj_z = nn.Linear(self.hidden_size, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(self.hidden_size, self.num_v_heads, bias=False)
        self.in_proj_a = nn.Linear(self.hidden_size, self.num_v_heads, bias=False)

        mapping = [int(k) for k in value_to_key]
        if len(mapping) != self.num_v_heads or any(not 0 <= k < self.num_k_heads for k in mapping):
            raise ValueError(
                f"layer {layer_idx}: value_to_key {mapping} does not map {self.num_v_heads} value heads "
                f"onto {self.num_k_heads} key heads."
            )
        self.register_buffer("value_to_key", torch.tensor(mapping, dtype=torch.long), persistent=True)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, num_k_heads={self.num_k_heads}, num_v_heads={self.num_v_heads}"

    @force_accelerate_hooks("conv1d")
    def forward(self, hidden_states: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None, **kwargs):
        if cache is None:
            cache = kwargs.pop("cache_params", None) or kwargs.pop("past_key_values", None)
        hidden_states = apply_mask_to_padding_states(hidden_states, attention_mask)
        batch_size, seq_len, _ = hidden_states.shape
        if cache is not None:
            conv_state = cache.get_conv_state(self.layer_idx, state_idx=0)
            recurrent_state = cache.get_recurrent_state(self.layer_idx, state_idx=0)
        else:
            conv_state, recurrent_state = None, None

        mixed_qkv = self.in_proj_qkv(hidden_states).transpose(1, 2)
        z = self.in_proj_z(hidden_states).reshape(batch_size, seq_len, -1, self.head_v_dim)
        b = self.in_proj_b(hidden_states)
        a = self.in_proj_a(hidden_states)

        if conv_state is not None and seq_len == 1 and not cache.is_recording_past(self.layer_idx):
            mixed_qkv = causal_conv1d_update(
                mixed_qkv, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.activation
            )
        else:
            if cache is not None:
                mixed_qkv = cache.update_conv_state(mixed_qkv, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
            mixed_qkv = causal_conv1d_fn(
                mixed_qkv, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation=self.activation
            )
            if cache is not None:
                mixed_qkv = mixed_qkv[:, :, -seq_len:]

        mixed_qkv = mixed_qkv.transpose(1, 2)
        query, key, value = torch.split(mixed_qkv, [self.key_dim, self.key_dim, self.value_dim], dim=-1)
        query = query.reshape(batch_size, seq_len, -1, self.head_k_dim)
        key = key.reshape(batch_size, seq_len, -1, self.head_k_dim)
        value = value.reshape(batch_size, seq_len, -1, self.head_v_dim)

        beta = b.sigmoid()
        if self.beta_scale != 1.0:
            beta = beta * self.beta_scale
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)
        value_to_key = self.value_to_key.to(query.device)
        kernel = (
            fused_recurrent_gated_delta_rule
            if recurrent_state is not None and seq_len == 1
            else chunk_gated_delta_rule
        )
        core_attn_out, last_recurrent_state = kernel(
            query,
            key,
            value,
            g=g,
            beta=beta,
            value_to_key=value_to_key,
            initial_state=recurrent_state,
            output_final_state=cache is not None,
            use_qk_l2norm_in_kernel=True,
            cu_seqlens=kwargs.get("cu_seq_lens_q"),
        )
        if cache is not None:
            cache.update_recurrent_state(last_recurrent_state, self.layer_idx)

        core_attn_out = core_attn_out.reshape(-1, self.head_v_dim)
        z = z.reshape(-1, self.head_v_dim)
        core_attn_out = self.norm(core_attn_out, z)
        core_attn_out = core_attn_out.reshape(batch_size, seq_len, -1)
        return self.out_proj(core_attn_out)


def _kimi_delta_attention_forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs):
    """The stock Kimi-delta-attention forward (Kimi-Linear, Bailing hybrid, GLM-5 Next: the same code), calling
    hf_rankprune's kernel dispatch; the conv kernels, forget gate and gated norm are the stock layer's own."""
    if cache is None:
        cache = kwargs.pop("cache_params", None) or kwargs.pop("past_key_values", None)
    stock = sys.modules[self.stock_layer_class.__module__]
    hidden_states = stock.apply_mask_to_padding_states(hidden_states, attention_mask)
    batch_size, seq_len = hidden_states.shape[:2]
    hidden_shape = (batch_size, seq_len, -1, self.head_dim)
    projections = (self.q_proj(hidden_states), self.k_proj(hidden_states), self.v_proj(hidden_states))
    mixed_qkv = torch.cat(projections, dim=-1).transpose(1, 2)
    if cache is not None:
        conv_state = cache.get_conv_state(self.layer_idx, state_idx=0)
        recurrent_state = cache.get_recurrent_state(self.layer_idx, state_idx=0)
    else:
        conv_state, recurrent_state = None, None
    weight = self.conv1d.weight.squeeze(1)
    if conv_state is not None and seq_len == 1:
        mixed_qkv = stock.causal_conv1d_update(mixed_qkv, conv_state, weight, self.conv1d.bias, self.activation)
    else:
        if cache is not None:
            mixed_qkv = cache.update_conv_state(mixed_qkv, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
        mixed_qkv = stock.causal_conv1d_fn(mixed_qkv, weight, self.conv1d.bias, activation=self.activation)
        mixed_qkv = mixed_qkv[:, :, -seq_len:]
    query, key, value = (
        x.reshape(hidden_shape) for x in torch.split(mixed_qkv.transpose(1, 2), [self.qkv_dim] * 3, dim=-1)
    )
    kernel = (
        fused_recurrent_kimi_delta_attention
        if recurrent_state is not None and seq_len == 1
        else chunk_kimi_delta_attention
    )
    core_attn_out, last_recurrent_state = kernel(
        query,
        key,
        value,
        g=self.forget_gate(hidden_states),
        beta=torch.sigmoid(self.b_proj(hidden_states)),
        initial_state=recurrent_state,
        output_final_state=cache is not None,
        use_qk_l2norm_in_kernel=True,
        cu_seqlens=kwargs.get("cu_seq_lens_q"),
    )
    if cache is not None:
        cache.update_recurrent_state(last_recurrent_state.to(torch.float32), self.layer_idx)
    if hasattr(self, "g_proj"):  # full-rank output gate (Bailing); low-rank g_a_proj -> g_b_proj otherwise
        gate = self.g_proj(hidden_states)
    else:
        gate = self.g_b_proj(self.g_a_proj(hidden_states))
    output = self.o_norm(core_attn_out, gate.view(hidden_shape)).reshape(batch_size, seq_len, -1)
    return self.o_proj(output)


_RAGGED_SUBCLASSES: dict[type, type] = {}


def _ragged_subclass(stock_layer_class: type[nn.Module], factory: str, forward, doc: str, **members) -> type:
    """`RankPruned<stock class>`: the stock layer class with a ragged `__init__` (in `members`) and `forward`, made
    once per stock class; `factory` names the function that makes it, for the remote code written next to
    checkpoints (`write_remote_code`)."""
    if stock_layer_class not in _RAGGED_SUBCLASSES:
        namespace = {
            "forward": force_accelerate_hooks("conv1d")(forward),
            "__module__": __name__,
            "__doc__": f"`{stock_layer_class.__name__}` {doc} (a ragged-pruned layer).",
            "stock_layer_class": stock_layer_class,
            "layer_factory": factory,
            **members,
        }
        name = f"RankPruned{stock_layer_class.__name__}"
        _RAGGED_SUBCLASSES[stock_layer_class] = type(name, (stock_layer_class,), namespace)
    return _RAGGED_SUBCLASSES[stock_layer_class]


def rankpruned_kda_layer_class(stock_layer_class: type[nn.Module]) -> type[nn.Module]:
    """The ragged layer class of a stock Kimi-delta-attention layer class: the stock layer with its own number of
    heads. KDA has no key-head groups (value head h reads key head h), so a layer is fully described by its head
    count; its submodules and parameter names are the stock ones (checkpoint conversion and fp32 rules apply as for
    stock layers), and its forward calls hf_rankprune's kernels."""

    def __init__(self, config, layer_idx: int, num_key_heads: int, num_value_heads: int, value_to_key) -> None:
        heads, mapping = int(num_value_heads), [int(k) for k in value_to_key]
        if int(num_key_heads) != heads or mapping != list(range(heads)):
            raise ValueError(
                f"layer {layer_idx}: a Kimi delta attention layer pairs value head h with key head h; got "
                f"{num_key_heads} key heads, {num_value_heads} value heads and value_to_key {mapping}."
            )
        layer_config = copy.copy(config)
        layer_config.linear_num_heads = heads
        stock_layer_class.__init__(self, layer_config, layer_idx)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, num_heads={self.num_heads}"

    return _ragged_subclass(stock_layer_class, "rankpruned_kda_layer_class", _kimi_delta_attention_forward,
                            "with its own number of heads", __init__=__init__, extra_repr=extra_repr)  # fmt: skip


def _grouped_gated_norm(norm: nn.Module, hidden_states, gate, head_to_group: torch.Tensor, head_dim: int,
                        groups: int, norm_before_gate: bool = False, weight_in_fp32: bool = False):  # fmt: skip
    """The Mamba2 gated RMSNorm (gate before the norm) with its statistics taken over each group's heads, whatever
    the group sizes: the stock norm with `group_size = I / G` when the groups are equal and consecutive.
    `weight_in_fp32` (Falcon-H1's `FalconH1RMSNormGated`): the weight multiplies in fp32 and, with
    `norm_before_gate`, the gate comes after the norm."""
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(torch.float32)
    if not norm_before_gate:
        hidden_states = hidden_states * F.silu(gate.to(torch.float32))
    heads = hidden_states.view(*hidden_states.shape[:-1], -1, head_dim)
    per_head = heads.pow(2).mean(-1)
    sums = per_head.new_zeros(*per_head.shape[:-1], groups).index_add_(-1, head_to_group, per_head)
    variance = (sums / torch.bincount(head_to_group, minlength=groups).to(sums))[..., head_to_group]
    heads = heads * torch.rsqrt(variance + norm.variance_epsilon)[..., None]
    if not weight_in_fp32:
        return norm.weight * heads.reshape(hidden_states.shape).to(input_dtype)
    hidden_states = norm.weight * heads.reshape(hidden_states.shape)
    if norm_before_gate:
        hidden_states = hidden_states * F.silu(gate.to(torch.float32))
    return hidden_states.to(input_dtype)


def _ssd_project(self, hidden_states: torch.Tensor) -> torch.Tensor:
    return self.in_proj(hidden_states)


def _ssd_finish(self, scan_output: torch.Tensor, gate: torch.Tensor, head_to_group: torch.Tensor) -> torch.Tensor:
    return _grouped_gated_norm(self.norm, scan_output, gate, head_to_group, self.head_dim, self.n_groups)


def _ssd_forward(self, hidden_states: torch.Tensor, cache=None, attention_mask=None, **kwargs):
    """The stock Mamba2 mixer forward (Mamba2, Nemotron-H, Bamba, Granite-4.0-H, Zamba2: the same code; Falcon-H1
    with its own input projection and output gating, `_SSD_VARIANTS`) with heads reading B/C through `value_to_key`
    (head -> group) and the gated norm's statistics taken per group; the conv kernels are the stock layer's own, the
    scan calls hf_rankprune's SSD kernels."""
    if cache is None:
        cache = kwargs.pop("cache_params", None) or kwargs.pop("past_key_values", None)
    stock = sys.modules[self.stock_layer_class.__module__]
    batch_size, seq_len, _ = hidden_states.shape
    dtype = hidden_states.dtype
    if cache is not None:
        conv_state = cache.get_conv_state(self.layer_idx, state_idx=0)
        recurrent_state = cache.get_recurrent_state(self.layer_idx, state_idx=0)
    else:
        conv_state, recurrent_state = None, None
    hidden_states = stock.apply_mask_to_padding_states(hidden_states, attention_mask)
    projected_states = self.project(hidden_states)
    A = -torch.exp(self.A_log.float())
    gate, xbc, dt = projected_states.split([self.intermediate_size, self.conv_dim, self.num_heads], dim=-1)
    xbc = xbc.transpose(1, 2)
    weight = self.conv1d.weight.squeeze(1)
    if conv_state is not None and seq_len == 1 and not cache.is_recording_past(self.layer_idx):
        xbc = stock.causal_conv1d_update(xbc, conv_state, weight, self.conv1d.bias, activation=self.activation)
    else:
        if cache is not None:
            xbc = cache.update_conv_state(xbc, self.layer_idx, conv_kernel_size=self.conv_kernel_size)
        xbc = stock.causal_conv1d_fn(xbc, weight, self.conv1d.bias, activation=self.activation)
        if cache is not None:
            xbc = xbc[:, :, -seq_len:]
    xbc = stock.apply_mask_to_padding_states(xbc.transpose(1, 2), attention_mask)
    groups_width = self.n_groups * self.ssm_state_size
    x, B, C = torch.split(xbc, [self.intermediate_size, groups_width, groups_width], dim=-1)
    head_to_group = self.value_to_key.to(x.device)
    if recurrent_state is not None and seq_len == 1:
        # the stock decoding step applies no time_step_limit (its prefill does)
        scan_output, state = ssd_step(
            recurrent_state, x.view(batch_size, self.num_heads, self.head_dim), dt.view(batch_size, self.num_heads),
            A, B.view(batch_size, self.n_groups, -1), C.view(batch_size, self.n_groups, -1), head_to_group,
            D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
        )  # fmt: skip
    else:
        scan_output, state = ssd_chunk_scan(
            x.view(batch_size, seq_len, self.num_heads, self.head_dim), dt, A,
            B.view(batch_size, seq_len, self.n_groups, -1), C.view(batch_size, seq_len, self.n_groups, -1),
            head_to_group, chunk_size=self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
            dt_limit=self.time_step_limit, initial_state=recurrent_state, output_final_state=cache is not None,
        )  # fmt: skip
    if cache is not None:
        cache.update_recurrent_state(state, layer_idx=self.layer_idx)
    scan_output = self.finish(scan_output.reshape(batch_size, seq_len, -1), gate, head_to_group)
    return self.out_proj(scan_output.to(dtype))


def _falcon_h1_project(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """Falcon-H1's input projection: the input scaled by `ssm_in_multiplier`, in_proj's rows by `mup_vector`."""
    return self.in_proj(hidden_states * self.ssm_in_multiplier) * self.mup_vector


def _falcon_h1_finish(self, scan_output: torch.Tensor, gate: torch.Tensor, head_to_group: torch.Tensor):
    """y * silu(z) without a norm (`mamba_rms_norm=False`: heads do not interact), else the gated norm with its
    statistics per group, the gate before or after it (`mamba_norm_before_gate`), the weight in fp32."""
    if not self.mamba_rms_norm:
        return scan_output * F.silu(gate)
    return _grouped_gated_norm(self.norm, scan_output, gate, head_to_group, self.head_dim, self.n_groups,
                               norm_before_gate=self.norm.norm_before_gate, weight_in_fp32=True)  # fmt: skip


def _falcon_h1_mup_vector(mixer: nn.Module, multipliers) -> torch.Tensor:
    """`compute_mup_vector` at a Falcon-H1 mixer's own size: `ssm_multipliers` over its z / x / B / C / dt rows."""
    inner, groups_width = mixer.num_heads * mixer.head_dim, mixer.n_groups * mixer.ssm_state_size
    sizes = (inner, inner, groups_width, groups_width, mixer.num_heads)
    return torch.cat([torch.full((size,), float(m)) for size, m in zip(sizes, multipliers)]).view(1, 1, -1)


def _falcon_h1_ssd_resize(mixer: nn.Module, config) -> None:
    """Falcon-H1's extras at the mixer's own size: `mup_vector`, which `FalconH1Model` registers on stock mixers
    (non-persistent, from the config), here from the layer's own geometry (surgery then loads the kept rows)."""
    mixer.register_buffer("mup_vector", _falcon_h1_mup_vector(mixer, config.ssm_multipliers), persistent=False)
    mixer.groups_time_state_size = mixer.n_groups * mixer.ssm_state_size
    if hasattr(mixer.norm, "n_groups"):
        mixer.norm.n_groups = mixer.n_groups  # unused by the ragged forward (its groups may be unequal)


def _falcon_h1_init_mup_vectors(model: nn.Module) -> None:
    """Every Falcon-H1 mixer's `mup_vector` (stock or ragged), at its own size. It is in no checkpoint:
    `from_pretrained` fills it through `FalconH1Model`'s weight init, which transformers skips in custom-code models
    (a ragged model class), so a loaded ragged model would keep the stock layers' buffers uninitialised."""
    multipliers = model.config.get_text_config().ssm_multipliers
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "mup_vector", None), torch.Tensor) and hasattr(module, "ssm_state_size"):
                module.mup_vector.copy_(_falcon_h1_mup_vector(module, multipliers))


# stock Mamba2 mixers whose forward differs from Mamba2's, by class name: (input projection, output gating, the
# layer's extras at its size, the model's buffers a ragged model class must initialise itself)
_SSD_VARIANTS = {
    "FalconH1Mixer": (_falcon_h1_project, _falcon_h1_finish, _falcon_h1_ssd_resize, _falcon_h1_init_mup_vectors),
}


def _resize_ssd_mixer(mixer: nn.Module, num_heads: int, num_groups: int) -> None:
    """Give a stock Mamba2 mixer (built at its config's size) `num_heads` heads in `num_groups` groups: every
    parameter whose size depends on them is rebuilt (uninitialised: the caller loads weights), dtypes kept."""
    head_dim, state_size, hidden = mixer.head_dim, mixer.ssm_state_size, mixer.hidden_size
    inner = num_heads * head_dim
    conv_dim = inner + 2 * num_groups * state_size
    kernel = mixer.conv1d.kernel_size[0]

    def like(old: torch.Tensor, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(*shape, dtype=old.dtype, device=old.device))

    mixer.num_heads, mixer.n_groups, mixer.intermediate_size, mixer.conv_dim = num_heads, num_groups, inner, conv_dim
    for name, rows, cols in (("in_proj", inner + conv_dim + num_heads, hidden), ("out_proj", hidden, inner)):
        old = getattr(mixer, name)
        new = nn.Linear(cols, rows, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
        setattr(mixer, name, new)
    old = mixer.conv1d
    mixer.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel, groups=conv_dim, padding=kernel - 1,
                             bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)  # fmt: skip
    for name in ("dt_bias", "A_log", "D"):
        setattr(mixer, name, like(getattr(mixer, name), num_heads))
    if getattr(mixer.norm, "weight", None) is not None:  # Falcon-H1 without `mamba_rms_norm`: nn.Identity
        mixer.norm.weight = like(mixer.norm.weight, inner)
        mixer.norm.group_size = inner // num_groups  # unused by the ragged forward (its groups may be unequal)


def rankpruned_ssd_layer_class(stock_layer_class: type[nn.Module]) -> type[nn.Module]:
    """The ragged layer class of a stock Mamba2 mixer class: the stock mixer with its own numbers of heads and groups
    and an explicit head -> group map (`value_to_key`, a persistent buffer), so a plan may leave groups of unequal
    sizes. Parameter names are the stock ones (checkpoint conversion applies as for stock layers)."""
    variant = _SSD_VARIANTS.get(stock_layer_class.__name__, (_ssd_project, _ssd_finish, None, None))
    project, finish, resize_extras, init_model_buffers = variant

    def __init__(self, config, layer_idx: int, num_key_heads: int, num_value_heads: int, value_to_key) -> None:
        mapping = [int(g) for g in value_to_key]
        if len(mapping) != int(num_value_heads) or sorted(set(mapping)) != list(range(int(num_key_heads))):
            raise ValueError(
                f"layer {layer_idx}: value_to_key {mapping} must map {num_value_heads} heads onto all of "
                f"{num_key_heads} groups."
            )
        stock_layer_class.__init__(self, config, layer_idx)
        _resize_ssd_mixer(self, int(num_value_heads), int(num_key_heads))
        if resize_extras is not None:
            resize_extras(self, config)
        self.register_buffer("value_to_key", torch.tensor(mapping, dtype=torch.long), persistent=True)

    def extra_repr(self) -> str:
        return f"layer_idx={self.layer_idx}, num_heads={self.num_heads}, n_groups={self.n_groups}"

    members = {"__init__": __init__, "extra_repr": extra_repr, "project": project, "finish": finish}
    if init_model_buffers is not None:
        members["init_model_buffers"] = staticmethod(init_model_buffers)
    return _ragged_subclass(stock_layer_class, "rankpruned_ssd_layer_class", _ssd_forward,
                            "with its own heads and head -> group map", **members)  # fmt: skip


def pruned_layer_specs(config) -> dict[int, tuple[int, int, list[int]]]:
    """{layer: (num_key_heads, num_value_heads, value_to_key)} of the layers `config.rankprune_plan` prunes."""
    plan = getattr(config, PLAN_CONFIG_KEY, None) or {}
    specs = {}
    for layer in plan.get("layers", []):
        kept_values, kept_keys = layer["kept_value_heads"], layer["kept_key_heads"]
        if kept_values != list(range(layer["num_value_heads"])) or kept_keys != list(range(layer["num_key_heads"])):
            specs[int(layer["layer"])] = (len(kept_keys), len(kept_values), list(layer["value_to_key"]))
    return specs


def _linear_layer_path(decoder_layer: nn.Module, layer_attribute: str | tuple[str, ...]) -> str:
    """The path (in `decoder_layer`) of its linear layer: `layer_attribute`, or the first of several paths (dotted
    for nested modules) that the decoder layer has (families whose kinds of layer hold it in different places)."""
    paths = (layer_attribute,) if isinstance(layer_attribute, str) else tuple(layer_attribute)
    for path in paths:
        try:
            decoder_layer.get_submodule(path)
        except AttributeError:
            continue
        return path
    raise AttributeError(f"{type(decoder_layer).__name__} has none of {paths}")


def build_pruned_layers(
    model: nn.Module, layer_attribute: str | tuple[str, ...], layer_class: type[nn.Module]
) -> None:
    """Replace each linear layer that the language model's `rankprune_plan` prunes (the `layer_attribute` of its
    decoder layer: an attribute, a dotted path, or several such paths, the first the decoder layer has) by a
    `layer_class` of its shape."""
    text_config = model.config.get_text_config()
    specs = pruned_layer_specs(text_config)
    for index, decoder_layer in enumerate(model.get_decoder().layers):
        if index in specs:
            num_key_heads, num_value_heads, value_to_key = specs[index]
            owner_path, _, name = _linear_layer_path(decoder_layer, layer_attribute).rpartition(".")
            owner = decoder_layer.get_submodule(owner_path) if owner_path else decoder_layer
            old = getattr(owner, name)
            reference = next(old.parameters())
            new = layer_class(text_config, index, num_key_heads, num_value_heads, value_to_key)
            setattr(owner, name, new.to(device=reference.device, dtype=reference.dtype))


def rankpruned_model_class(
    stock_model_class: type,
    config_class: type,
    layer_attribute: str | tuple[str, ...] = "linear_attn",
    layer_class: type[nn.Module] = RankPrunedGatedDeltaNet,
) -> type:
    """The ragged-pruned model class of `stock_model_class` (e.g. `Qwen3_5ForCausalLM` with config
    `Qwen3_5TextRankPrunedConfig` -> `Qwen3_5TextRankPrunedForCausalLM`): the stock model whose pruned linear layers
    are rebuilt from the plan at construction, so `from_pretrained` loads pruned checkpoints."""
    stock_name = stock_model_class.__name__
    name = config_class.__name__.removesuffix("Config") + stock_name[stock_name.index("For") :]

    def __init__(self, config):
        stock_model_class.__init__(self, config)
        build_pruned_layers(self, layer_attribute, layer_class)

    namespace = {
        "__init__": __init__,
        "__module__": __name__,
        "__doc__": f"`{stock_name}` with the ragged-pruned linear layers of its `rankprune_plan`.",
        "config_class": config_class,
        "ragged_layer_attribute": layer_attribute,
        "ragged_layer_class": layer_class,
        "__annotations__": {"config": config_class},
    }
    init_model_buffers = getattr(layer_class, "init_model_buffers", None)
    if init_model_buffers is not None:  # buffers transformers' init leaves alone in custom-code models (Falcon-H1)

        def initialize_weights(self):
            stock_model_class.initialize_weights(self)
            init_model_buffers(self)

        namespace["initialize_weights"] = initialize_weights
    return type(name, (stock_model_class,), namespace)


def register_conversion_mapping(config_class: type) -> None:
    """Give a `*_rankpruned` model type its stock type's checkpoint conversion.

    `save_pretrained` writes weights in the stock checkpoint form (per-expert MoE keys, the stock key prefixes), so a
    pruned checkpoint has the same layout as the original and as stock (uniform) pruned checkpoints, which serving
    engines and other tools read. Loading must then apply the same conversion as the stock type (fuse the experts);
    transformers looks it up by model type, and skips custom code unless the type was registered by the user, so
    this runs where the class is defined: in the package and in `trust_remote_code=True` copies alike.
    """
    stock_mapping = get_checkpoint_conversion_mapping(config_class.model_type.removesuffix(RANKPRUNED_SUFFIX))
    if stock_mapping:
        register_checkpoint_conversion_mapping(config_class.model_type, stock_mapping, overwrite=True)
