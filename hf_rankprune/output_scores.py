"""Head-importance scores measured on what a head does to the model's output (next to the rank scores of `scoring`).

For every score here a HIGH score means an IMPORTANT head, so the natural direction removes the LOWEST scores
(`RankPruneConfig.removal_direction()`: "low_rank" unless `direction` says otherwise).

- `kl`: output-KL ablation. For each value head, the head's output is zeroed (a head mask on the input of the
  layer's output projection, from the adapter's `head_output_modules`) and the KL divergence
  KL(p_original || p_ablated) of the next-token distributions is averaged over every position of the calibration
  samples. Cost: one forward per head per batch of samples, plus one unmasked reference forward per batch; heads
  are batched (`heads_per_forward` heads x `batch_size` samples per forward pass), so a model with H value heads,
  N samples and batch size B takes ceil(N / B) * (1 + ceil(H / heads_per_forward)) forward passes (each of
  heads_per_forward * B rows), i.e. about H forwards of the whole calibration set. `kl_greedy` removes one head at
  a time (the lowest KL, within the budget's per-layer limits) and re-scores the remaining heads with the removed
  ones masked: about sum over the removals of the remaining heads, i.e. (removed heads) x H forwards of the
  calibration set at most. Both costs are printed before the work starts.
- `taylor`: first-order importance (Michel et al. 2019): |m_h * dL/dm_h| of a head mask m = 1, L the language-model
  loss of the calibration samples, averaged over batches; one forward and one backward per batch.
- `activation`: Minitron-style (ModelOpt's Mamba importance): per channel of the head (where the family's adapter
  says, `head_activations`: the output projection's input, or for Mamba2 SSD the head's x channels of `in_proj`),
  sqrt(sum over samples of (mean over tokens of |x|)^2), then the L2 norm over the head's channels; one forward per
  batch.
- `decay`: data-free, from `A_log` / `dt_bias`: log of the head's memory length, -log(1 - exp(g)) with
  g = -exp(A_log) * softplus(dt_bias) the per-token log decay at a zero gate input. A head that forgets fast has
  a short memory and a low score. No forward at all.

The retrieval objective (`retrieval_mix`, `answer_weight`): calibration text alone rewards the heads that model
language and ignores the ones that retrieve (on the demo model, kl on text keeps perplexity and drops passkey to
0.51). So `importance_scores` first replaces `retrieval_mix` of the samples by retrieval documents
(`with_retrieval`, `hf_rankprune.data.retrieval`: passkey-like, seeded, disjoint from the evaluation's keys and
filler) whose answer predictions weigh `answer_weight` (every other position 1, padding 0, in the samples'
`weights`). kl averages each position's KL with these weights (sum(w * KL) / sum(w)), taylor its loss
(sum(w * nll) / sum(w) per batch); activation measures on the mixed samples unweighted. Default mix 0.25 with weight
200, chosen on the demo model (12 of 32 heads, 16 x 512 tokens, evaluated on 29,941 held-out tokens and 100
passkey examples; original 54.11 / 1.00):

    kl on             mix 0    0.125/50  0.25/50  0.25/200  0.375/50  0.5/200  1.0/50
    perplexity x      1.133    1.123     1.136    1.125     1.147     1.148    1.163
    passkey           0.51     0.61      0.81     1.00      0.92      0.99     1.00

With weights up to 50 the documents' filler decides (the same heads as weight 1); at 200 the 24 answer predictions
carry about a third of the weight and the retrieval heads stay; more documents keep passkey and cost perplexity.
What was mixed in (documents, answer tokens, weight, or why none: no tokenizer, samples too short) is recorded in
`measured`, and so in the plan and the card.

Every function has the signature `fn(model, samples, config, *, budget=None, progress=True) -> ImportanceScores`
and `SCORE_FUNCTIONS` maps score names to them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .arch import LinearAttentionAdapter, get_adapter
from .config import DATA_SCORES, IMPORTANCE_SCORES, RankPruneConfig
from .data.retrieval import RETRIEVAL_CATEGORY
from .errors import ImportanceScoreError  # noqa: F401 (re-exported)

DEFAULT_HEADS_PER_FORWARD = 4  # kl: heads ablated side by side in one forward pass (rows = heads x batch_size)
KL_POSITION_CHUNK = 128  # kl: positions whose vocabulary distributions are compared at a time (bounds memory)



@dataclass
class ImportanceScores:
    """Per linear layer, one score per value head (HIGH = important), and what was measured to get them."""

    scores: list[np.ndarray]
    measured: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GreedyBudget:
    """What greedy removal may do: `caps[p]` heads at most in linear layer p (0 for protected layers),
    `done(counts)` says when the heads removed so far (per layer) meet the budget, and `heads` is how many removals
    that takes (at most, for a byte target)."""

    caps: list[int]
    done: Callable[[list[int]], bool]
    heads: int


# -- head masks ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def head_masks(adapter: LinearAttentionAdapter, masks: list[torch.Tensor | None]) -> Iterator[None]:
    """Within the block, linear layer p's value head h has its output multiplied by masks[p][..., h]: [num_heads]
    for every row, or [rows, num_heads] per batch row; None leaves the layer alone. Implemented as forward
    pre-hooks on the adapter's `head_output_modules` (the output projections), so the real forward runs."""
    handles = []
    try:
        for (layer, module), mask in zip(adapter.head_output_modules(), masks):
            if mask is None:
                continue

            def hook(_module, args, mask=mask, dv=layer.value_dim):
                x = args[0]
                channels = mask.to(device=x.device, dtype=x.dtype).repeat_interleave(dv, dim=-1)
                if channels.dim() == 2:  # per row: [rows, 1, ..., channels]
                    channels = channels.reshape(channels.shape[0], *([1] * (x.dim() - 2)), channels.shape[1])
                return (x * channels, *args[1:])

            handles.append(module.register_forward_pre_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


# -- helpers -----------------------------------------------------------------------------------------------------


def _prepared(model, samples, config: RankPruneConfig, score: str):
    """(adapter, input_ids, batches, device, weight batches): the weight batches are None for uniform weights, else
    float [rows, L] per batch (samples' `weights`: the weight of the prediction made at each position)."""
    from .calibrate import _as_samples, _input_device

    if samples is None:
        raise ImportanceScoreError(
            f"score={score!r} is measured on calibration samples: pass samples (hf_rankprune.data."
            "load_calibration_samples) or use RankPruner, which loads config.data with the model's tokenizer."
        )
    input_ids, _ = _as_samples(samples, None)
    weights = getattr(samples, "weights", None)
    adapter = get_adapter(model)
    batches = [input_ids[i : i + config.batch_size] for i in range(0, input_ids.shape[0], config.batch_size)]
    weight_batches = None
    if weights is not None:
        weight_batches = [weights[i : i + config.batch_size].float() for i in range(0, weights.shape[0],
                                                                                    config.batch_size)]  # fmt: skip
        if float(weights.sum()) <= 0:
            raise ImportanceScoreError("the samples' weights are all 0: nothing to measure.")
    return adapter, input_ids, batches, _input_device(model), weight_batches


def _measured(score: str, input_ids: torch.Tensor, config: RankPruneConfig, samples=None, **extra) -> dict[str, Any]:
    categories = list(getattr(samples, "categories", None) or [])
    weights = getattr(samples, "weights", None)
    return {
        "score": score,
        "samples": int(input_ids.shape[0]),
        "seq_len": int(input_ids.shape[1]),
        "tokens": int(input_ids.numel()),
        "data": list(config.data) if config.data else "builtin",
        "batch_size": config.batch_size,
        "retrieval_samples": sum(category == RETRIEVAL_CATEGORY for category in categories),
        "token_weights": "uniform" if weights is None else ("unused" if score == "activation" else "per token"),
        **extra,
    }


@contextlib.contextmanager
def _eval_mode(model) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, use_cache=False).logits


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


# -- decay -------------------------------------------------------------------------------------------------------


def decay_scores(model, samples=None, config: RankPruneConfig | None = None, *, budget: GreedyBudget | None = None,
                 progress: bool = True, verbose: bool = True) -> ImportanceScores:  # fmt: skip
    """Data-free: per head, log of its memory length, -log(1 - exp(g)), g = -exp(A_log) * softplus(dt_bias) (the
    per-token log decay at a zero gate input; `samples` are not used). Decreasing in A_log."""
    decays = [g.numpy() for g in get_adapter(model).gate_log_decay()]
    # 1 - exp(g) without cancellation, floored so a head that never forgets (g = -0.0) gets a finite score
    scores = [-np.log(np.maximum(-np.expm1(g), np.finfo(np.float64).tiny)) for g in decays]
    retention = np.exp(np.concatenate(decays))
    return ImportanceScores(
        scores,
        {
            "score": "decay",
            "data": None,
            "forwards": 0,
            "backwards": 0,
            "formula": "-log(1 - exp(g)), g = -exp(A_log) * softplus(dt_bias) (gate input a = 0)",
            "mean_retention_per_token": float(retention.mean()),
        },
    )


# -- activation --------------------------------------------------------------------------------------------------


@torch.no_grad()
def activation_scores(model, samples, config: RankPruneConfig, *, budget: GreedyBudget | None = None,
                      progress: bool = True, verbose: bool = True) -> ImportanceScores:  # fmt: skip
    """Minitron-style: per channel sqrt(sum over samples of (mean over tokens |x|)^2), x the head's channels where
    the adapter reads them (`head_activations`); per head the L2 norm over its channels. One forward per batch."""
    adapter, input_ids, batches, device, _ = _prepared(model, samples, config, "activation")
    modules = adapter.head_activations()
    sums = [torch.zeros(layer.num_value_heads * layer.value_dim, dtype=torch.float64) for layer, _, _ in modules]
    handles = []

    def make_hook(position: int, select):
        def hook(_module, args, output):
            x = select(args, output).detach().abs().float()
            per_sample = x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1)  # [batch, channels]
            sums[position] += per_sample.pow(2).sum(dim=0).to("cpu", torch.float64)

        return hook

    _say(verbose, f"activation: {len(batches)} forwards ({input_ids.shape[0]} samples x {input_ids.shape[1]} tokens)")
    try:
        for position, (_, module, select) in enumerate(modules):
            handles.append(module.register_forward_hook(make_hook(position, select)))
        with _eval_mode(model):
            for batch in tqdm(batches, desc="activation scores", unit="batch", disable=not progress):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    scores = [
        total.sqrt().reshape(layer.num_value_heads, layer.value_dim).norm(dim=1).numpy()
        for total, (layer, _, _) in zip(sums, modules)
    ]
    return ImportanceScores(scores, _measured("activation", input_ids, config, samples, forwards=len(batches),
                                              backwards=0))  # fmt: skip


# -- taylor ------------------------------------------------------------------------------------------------------


def taylor_scores(model, samples, config: RankPruneConfig, *, budget: GreedyBudget | None = None,
                  progress: bool = True, verbose: bool = True) -> ImportanceScores:  # fmt: skip
    """|m_h * dL/dm_h| of a head mask m = 1 (L: mean next-token cross-entropy of a batch; with the samples' token
    weights, the weighted mean, each position's loss weighed by its prediction's weight), averaged over batches.
    One forward and one backward per batch; the model's parameters get no gradients."""
    adapter, input_ids, batches, device, weight_batches = _prepared(model, samples, config, "taylor")
    layers = adapter.linear_layers()
    masks = [torch.ones(layer.num_value_heads, dtype=torch.float32, requires_grad=True) for layer in layers]
    totals = [torch.zeros(layer.num_value_heads, dtype=torch.float64) for layer in layers]
    _say(verbose, f"taylor: {len(batches)} forwards and backwards ({input_ids.shape[0]} samples x "
                   f"{input_ids.shape[1]} tokens)")  # fmt: skip
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in grad_flags:
            parameter.requires_grad_(False)
        with _eval_mode(model), torch.enable_grad(), head_masks(adapter, masks):
            for index, batch in enumerate(tqdm(batches, desc="taylor scores", unit="batch", disable=not progress)):
                batch = batch.to(device)
                logits = _logits(model, batch)
                predicted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
                targets = batch[:, 1:].reshape(-1).to(logits.device)
                if weight_batches is None:
                    loss = torch.nn.functional.cross_entropy(predicted, targets)
                else:
                    weights = weight_batches[index][:, :-1].reshape(-1).to(logits.device)
                    if float(weights.sum()) <= 0:
                        continue  # nothing weighed in this batch
                    nll = torch.nn.functional.cross_entropy(predicted, targets, reduction="none")
                    loss = (nll * weights).sum() / weights.sum()
                grads = torch.autograd.grad(loss, masks, allow_unused=True)
                for total, grad, mask in zip(totals, grads, masks):
                    if grad is not None:
                        total += (mask.detach() * grad.detach()).abs().to(torch.float64)
    finally:
        for parameter, flag in grad_flags:
            parameter.requires_grad_(flag)
    scores = [(total / len(batches)).numpy() for total in totals]
    return ImportanceScores(scores, _measured("taylor", input_ids, config, samples, forwards=len(batches),
                                              backwards=len(batches)))  # fmt: skip


# -- kl ----------------------------------------------------------------------------------------------------------


def _kl_sums(reference: torch.Tensor, logits: torch.Tensor, groups: int,
             weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Sum over samples and positions of KL(p_ref || p) for each of `groups` row blocks of `logits`
    ([groups * B, L, V]; `reference`: log-probabilities [B, L, V]), each position's KL times `weights` [B, L] when
    given."""
    batch, length, vocab = reference.shape
    logits = logits.reshape(groups, batch, length, vocab)
    total = torch.zeros(groups, dtype=torch.float64)
    for start in range(0, length, KL_POSITION_CHUNK):
        ref = reference[:, start : start + KL_POSITION_CHUNK].to(logits.device)
        logp = torch.log_softmax(logits[:, :, start : start + KL_POSITION_CHUNK].float(), dim=-1)
        kl = (ref.exp() * (ref - logp)).sum(dim=-1)  # [groups, B, chunk]
        if weights is not None:
            kl = kl * weights[:, start : start + KL_POSITION_CHUNK].to(kl.device)
        total += kl.sum(dim=(1, 2)).to("cpu", torch.float64)
    return total


class _KLRunner:
    """Scores candidate head ablations on the calibration batches, `heads_per_forward` at a time."""

    def __init__(self, model, adapter, batches, device, heads_per_forward: int, bar, weight_batches=None):
        self.model, self.adapter, self.batches, self.device = model, adapter, batches, device
        self.weight_batches = weight_batches
        self.layers = adapter.linear_layers()
        self.heads_per_forward = heads_per_forward
        self.bar = bar
        self.forwards = 0

    def score(self, candidates: list[tuple[int, int]], removed: list[set[int]]) -> np.ndarray:
        """Mean KL per token (weighted mean with token weights) for each (layer position, head) in `candidates`,
        with the heads in `removed` (per layer position) masked in every row and the candidate masked on top;
        reference: the unmasked model."""
        totals = np.zeros(len(candidates))
        tokens = 0.0
        for index, batch in enumerate(self.batches):
            weights = None if self.weight_batches is None else self.weight_batches[index]
            if weights is not None and float(weights.sum()) <= 0:
                continue  # nothing weighed in this batch
            batch = batch.to(self.device)
            rows = batch.shape[0]
            tokens += batch.numel() if weights is None else float(weights.double().sum())
            reference = torch.log_softmax(_logits(self.model, batch).float(), dim=-1)
            self._tick(1)
            for start in range(0, len(candidates), self.heads_per_forward):
                group = candidates[start : start + self.heads_per_forward]
                masks: list[torch.Tensor | None] = []
                for position, layer in enumerate(self.layers):
                    touched = removed[position] or any(p == position for p, _ in group)
                    if not touched:
                        masks.append(None)
                        continue
                    mask = torch.ones(len(group) * rows, layer.num_value_heads)
                    mask[:, sorted(removed[position])] = 0
                    for j, (p, head) in enumerate(group):
                        if p == position:
                            mask[j * rows : (j + 1) * rows, head] = 0
                    masks.append(mask)
                with head_masks(self.adapter, masks):
                    logits = _logits(self.model, batch.repeat(len(group), 1))
                totals[start : start + len(group)] += _kl_sums(reference, logits, len(group), weights).numpy()
                self._tick(1)
        return totals / tokens

    def _tick(self, count: int) -> None:
        self.forwards += count
        self.bar.update(count)


@torch.no_grad()
def kl_scores(model, samples, config: RankPruneConfig, *, budget: GreedyBudget | None = None, progress: bool = True,
              verbose: bool = True, heads_per_forward: int = DEFAULT_HEADS_PER_FORWARD) -> ImportanceScores:  # fmt: skip
    """Output-KL ablation: per head, the mean over calibration tokens of KL(p_original || p_head zeroed) of the
    next-token distributions. One forward per head per batch (plus one reference forward per batch), with
    `heads_per_forward` heads side by side in a forward of heads_per_forward x batch_size rows; the number of
    forward passes is printed before starting (with `verbose`).

    With `config.kl_greedy` (needs `budget`, from `scoring.greedy_budget`): heads are removed one at a time, the
    lowest KL first within the budget's per-layer limits, and the remaining heads are re-scored with the removed
    ones masked. A removed head's score is the KL of the model with it and every head removed before it (made
    strictly increasing in removal order), so the lowest scores are the greedy removal order; every other head keeps
    the KL of its last round, raised above the last removed head's."""
    adapter, input_ids, batches, device, weight_batches = _prepared(model, samples, config, "kl")
    if isinstance(heads_per_forward, bool) or not isinstance(heads_per_forward, int) or heads_per_forward < 1:
        raise ImportanceScoreError(f"heads_per_forward={heads_per_forward!r} must be an integer >= 1.")
    layers = adapter.linear_layers()
    all_heads = [(p, h) for p, layer in enumerate(layers) for h in range(layer.num_value_heads)]
    per_round = len(batches) * (1 + math.ceil(len(all_heads) / heads_per_forward))
    shape = f"{input_ids.shape[0]} samples x {input_ids.shape[1]} tokens in {len(batches)} batches"
    if config.kl_greedy and budget is None:
        raise ImportanceScoreError("kl_greedy needs the budget (scoring.greedy_budget(adapter, config)).")
    if not config.kl_greedy:
        _say(verbose, f"kl: {len(all_heads)} heads x {len(batches)} batches ({shape}): {per_round} forward passes "
                       f"({len(batches)} reference, the rest {heads_per_forward} heads x {config.batch_size} samples "
                       "each)")  # fmt: skip
        total_forwards = per_round
    else:
        eligible = sum(layers[p].num_value_heads for p, cap in enumerate(budget.caps) if cap > 0)
        steps = min(budget.heads, sum(budget.caps))
        total_forwards = sum(len(batches) * (1 + math.ceil((eligible - s) / heads_per_forward)) for s in range(steps))
        _say(verbose, f"kl greedy: up to {steps} removals, each re-scoring the remaining of {eligible} eligible heads "
                       f"on {shape}: at most {total_forwards} forward passes ({heads_per_forward} heads x "
                       f"{config.batch_size} samples each)")  # fmt: skip
    bar = tqdm(total=total_forwards, desc="kl scores", unit="forward", disable=not progress)
    try:
        with _eval_mode(model):
            runner = _KLRunner(model, adapter, batches, device, heads_per_forward, bar, weight_batches)
            if not config.kl_greedy:
                values = runner.score(all_heads, [set() for _ in layers])
                scores = [np.zeros(layer.num_value_heads) for layer in layers]
                for (p, h), value in zip(all_heads, values):
                    scores[p][h] = value
                order = None
            else:
                scores, order = _greedy(runner, layers, budget)
    finally:
        bar.close()
    measured = _measured("kl", input_ids, config, samples, forwards=runner.forwards, backwards=0,
                         heads_per_forward=heads_per_forward, greedy=bool(config.kl_greedy))  # fmt: skip
    if order is not None:
        measured["greedy_removal_order"] = [[layers[p].index, h] for p, h in order]
    return ImportanceScores(scores, measured)


def _greedy(runner: _KLRunner, layers, budget: GreedyBudget):
    removed: list[set[int]] = [set() for _ in layers]
    latest = [np.zeros(layer.num_value_heads) for layer in layers]
    order: list[tuple[int, int]] = []
    removal_kl: list[float] = []
    while not budget.done([len(r) for r in removed]):
        candidates = [(p, h) for p, layer in enumerate(layers) if len(removed[p]) < budget.caps[p]
                      for h in range(layer.num_value_heads) if h not in removed[p]]  # fmt: skip
        if not candidates:
            break  # the allocator reports the unmet budget
        values = runner.score(candidates, removed)
        for (p, h), value in zip(candidates, values):
            latest[p][h] = value
        best = int(np.argmin(values))  # ties: the first candidate (lowest layer, then head)
        p, h = candidates[best]
        removed[p].add(h)
        order.append((p, h))
        removal_kl.append(float(values[best]))
    scores = [values.copy() for values in latest]
    floor = -np.inf
    for (p, h), value in zip(order, removal_kl):
        floor = value if value > floor else np.nextafter(floor, np.inf)
        scores[p][h] = floor
    for p, layer in enumerate(layers):
        for h in range(layer.num_value_heads):
            if h not in removed[p] and order and scores[p][h] <= floor:
                scores[p][h] = np.nextafter(floor, np.inf)
    return scores, order


SCORE_FUNCTIONS: dict[str, Callable[..., ImportanceScores]] = {
    "kl": kl_scores,
    "taylor": taylor_scores,
    "activation": activation_scores,
    "decay": decay_scores,
}
assert set(SCORE_FUNCTIONS) == set(IMPORTANCE_SCORES)


def importance_scores(model, config: RankPruneConfig, samples=None, *, budget: GreedyBudget | None = None,
                      progress: bool = True, verbose: bool = True, tokenizer: Any = None) -> ImportanceScores:  # fmt: skip
    """`config.score`'s importance scores of `model` (HIGH = important); `samples` for the scores that need data
    (kl, taylor, activation); `budget` for kl_greedy.

    With `config.retrieval_mix` > 0, a data score first replaces that fraction of `samples` by retrieval documents
    (`with_retrieval`; it needs `tokenizer`), unless the samples already hold some (category "retrieval")."""
    if config.score not in SCORE_FUNCTIONS:
        raise ImportanceScoreError(
            f"score={config.score!r} is not an importance score; those are {sorted(SCORE_FUNCTIONS)}."
        )
    if config.score in DATA_SCORES and samples is None:
        raise ImportanceScoreError(
            f"score={config.score!r} is measured on calibration samples and none were given: pass samples, or a "
            "tokenizer to RankPruner so it can load config.data."
        )
    mixed: dict[str, Any] = {}
    if config.score in DATA_SCORES:
        samples, mixed = with_retrieval(samples, tokenizer, config, verbose=verbose)
    result = SCORE_FUNCTIONS[config.score](model, samples, config, budget=budget, progress=progress, verbose=verbose)
    result.measured.update(mixed)
    return result


def with_retrieval(samples, tokenizer: Any, config: RankPruneConfig, *, verbose: bool = False):
    """(samples, record): `samples` with `retrieval_count(N, config.retrieval_mix)` of them replaced by retrieval
    documents (`hf_rankprune.data.retrieval.mix_retrieval`, seeded by `config.seed`, answer tokens weighted by
    `config.answer_weight`), and what was mixed in. Samples that already hold retrieval documents are used as they
    are. Without a tokenizer, or with samples too short for a document, the samples stay as they are and the record
    says why (`retrieval_skipped`)."""
    from .data import CalibrationDataError, CalibrationSamples
    from .data.retrieval import mix_retrieval

    record: dict[str, Any] = {"retrieval_mix": float(config.retrieval_mix)}
    if config.retrieval_mix <= 0:
        return samples, record
    if RETRIEVAL_CATEGORY in (getattr(samples, "categories", None) or []):
        record["retrieval_given"] = True  # documents already in the samples: measured as given
        return samples, record
    if tokenizer is None:
        record["retrieval_skipped"] = "no tokenizer to build retrieval documents with"
    else:
        if not isinstance(samples, CalibrationSamples):
            input_ids = torch.as_tensor(samples, dtype=torch.long)
            samples = CalibrationSamples(input_ids, ["default"] * int(input_ids.shape[0]))
        try:
            samples, info = mix_retrieval(samples, tokenizer, config.retrieval_mix, config.answer_weight, config.seed)
            record.update(info)
            if config.score == "activation":
                record.pop("answer_weight", None)  # activation does not weigh tokens
            return samples, record
        except CalibrationDataError as error:
            record["retrieval_skipped"] = str(error)
    _say(verbose, f"retrieval_mix={config.retrieval_mix}: measured on the calibration text only "
                  f"({record['retrieval_skipped']})")  # fmt: skip
    return samples, record
