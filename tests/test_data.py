"""Calibration data: every input kind, the builtin suite, determinism, sharding and every bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from pydoc_data.topics import topics

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import build_tiny_tokenizer
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from hf_rankprune.data import (
    BUILTIN_CATEGORIES,
    CalibrationDataError,
    CalibrationSamples,
    TextSource,
    builtin_texts,
    describe_samples,
    load_calibration_samples,
)
from hf_rankprune.data import sources as data_sources


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(vocab_size=600)


@pytest.fixture(scope="module")
def raw_tokenizer(tokenizer) -> Tokenizer:
    return tokenizer.backend_tokenizer


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _stream(tokenizer, texts: list[str]) -> list[int]:
    out: list[int] = []
    for text in texts:
        if out:
            out.append(tokenizer.eos_token_id)
        out.extend(_ids(tokenizer, text))
    return out


def _contained(window: torch.Tensor, stream: list[int]) -> bool:
    w = window.tolist()
    first = w[0]
    return any(stream[i : i + len(w)] == w for i, t in enumerate(stream) if t == first)


def _texts(n: int = 6) -> list[str]:
    keys = sorted(topics)[40 : 40 + n]
    return [topics[k] for k in keys]


def _check(samples: CalibrationSamples, n: int, seq_len: int, category: str, stream: list[int]) -> None:
    assert samples.input_ids.shape == (n, seq_len)
    assert samples.input_ids.dtype == torch.long
    assert samples.categories == [category] * n
    assert len(samples) == n
    for row in samples.input_ids:
        assert _contained(row, stream)
    # windows do not overlap: all distinct rows for a source this long
    assert len({tuple(r.tolist()) for r in samples.input_ids}) == n


# --------------------------------------------------------------------------------------------------- input kinds
def test_text_source(tokenizer):
    texts = _texts()
    samples = load_calibration_samples(TextSource(texts), tokenizer, num_samples=5, seq_len=32, seed=1)
    _check(samples, 5, 32, "custom", _stream(tokenizer, texts))
    named = load_calibration_samples(TextSource(texts, name="mine"), tokenizer, 2, 16)
    assert named.categories == ["mine", "mine"]


def test_txt_file_is_one_document(tokenizer, tmp_path):
    text = "\n\n".join(_texts(3))
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    samples = load_calibration_samples(str(path), tokenizer, 4, 24)
    _check(samples, 4, 24, "notes", _ids(tokenizer, text))
    assert tokenizer.eos_token_id not in samples.input_ids  # one document: no separators inside
    assert torch.equal(load_calibration_samples(path, tokenizer, 4, 24).input_ids, samples.input_ids)  # PathLike


def test_jsonl_file(tokenizer, tmp_path):
    texts = _texts()
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n\n", "utf-8")
    samples = load_calibration_samples(str(path), tokenizer, 6, 20, seed=3)
    _check(samples, 6, 20, "docs", _stream(tokenizer, texts))


def test_parquet_file(tokenizer, tmp_path):
    texts = _texts()
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), path)
    samples = load_calibration_samples(str(path), tokenizer, 3, 40)
    _check(samples, 3, 40, "corpus", _stream(tokenizer, texts))


def test_datasets_objects(tokenizer):
    texts = _texts()
    ds = datasets.Dataset.from_dict({"text": texts, "label": [0] * len(texts)})
    samples = load_calibration_samples(ds, tokenizer, 4, 32)
    _check(samples, 4, 32, "dataset", _stream(tokenizer, texts))
    iterable = ds.to_iterable_dataset()
    again = load_calibration_samples(iterable, tokenizer, 4, 32)
    _check(again, 4, 32, "dataset", _stream(tokenizer, texts))


def test_other_tokenizer_kinds(raw_tokenizer, tokenizer):
    texts = _texts(3)
    expected = load_calibration_samples(TextSource(texts), tokenizer, 3, 16)

    class EncodeOnly:  # e.g. tiktoken-like: encode(text) without keyword arguments
        eos_token_id = tokenizer.eos_token_id

        def encode(self, text):
            return raw_tokenizer.encode(text, add_special_tokens=False).ids

    assert torch.equal(load_calibration_samples(TextSource(texts), EncodeOnly(), 3, 16).input_ids, expected.input_ids)
    # a bare tokenizers.Tokenizer has no eos: documents are joined directly, still valid windows
    bare = load_calibration_samples(TextSource(texts), raw_tokenizer, 3, 16)
    assert bare.input_ids.shape == (3, 16)


def test_hub_dataset_streams_when_online(tokenizer, monkeypatch):
    texts = _texts()
    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict({"text": texts}).to_iterable_dataset()

    monkeypatch.setattr(data_sources, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    samples = load_calibration_samples("wikitext:wikitext-2-raw-v1:validation", tokenizer, 3, 16)
    _check(samples, 3, 16, "wikitext", _stream(tokenizer, texts))
    load_calibration_samples(["hf:someone/corpus"], tokenizer, 1, 16)
    assert calls == [("wikitext", "wikitext-2-raw-v1", "validation", True), ("someone/corpus", None, "train", True)]


def test_mixed_specs_spread_evenly(tokenizer, tmp_path):
    path = tmp_path / "extra.txt"
    path.write_text(_texts(1)[0], encoding="utf-8")
    samples = load_calibration_samples(
        ["builtin:math", str(path), TextSource(_texts(2), name="mine")], tokenizer, 8, 16
    )
    assert describe_samples(samples) == {"math": 3, "extra": 3, "mine": 2}
    assert samples.categories[:3] == ["math", "extra", "mine"]  # round-robin interleaving


# ---------------------------------------------------------------------------------------------------- builtin
def test_builtin_suite_all_categories(tokenizer):
    samples = load_calibration_samples(None, tokenizer, num_samples=12, seq_len=48)
    assert samples.input_ids.shape == (12, 48)
    counts = describe_samples(samples)
    assert list(counts) == list(BUILTIN_CATEGORIES)
    assert sorted(counts.values(), reverse=True) == [3, 3, 2, 2, 2]
    assert samples.categories[:5] == list(BUILTIN_CATEGORIES)
    assert torch.equal(load_calibration_samples("builtin", tokenizer, 12, 48).input_ids, samples.input_ids)
    assert int(samples.input_ids.max()) < len(tokenizer)


@pytest.mark.parametrize("category", BUILTIN_CATEGORIES)
def test_builtin_single_category_fills_many_windows(tokenizer, category):
    samples = load_calibration_samples(f"builtin:{category}", tokenizer, num_samples=6, seq_len=256)
    assert samples.input_ids.shape == (6, 256)
    assert samples.categories == [category] * 6


def test_builtin_text_content(tokenizer):
    technical = load_calibration_samples("builtin:technical", tokenizer, 2, 64)
    pydoc_text = "".join(topics.values())
    eos = tokenizer.eos_token_id
    for row in technical.input_ids.tolist():
        cut = row.index(eos) if eos in row else len(row)
        piece = max(row[:cut], row[cut + 1 :], key=len)  # the longer part inside one topic
        assert tokenizer.decode(piece)[4:-4] in pydoc_text
    long_docs = builtin_texts("long_context", 3, min_chars=5000)
    assert all(len(d) >= 5000 and "\n\n* * *\n\n" in d for d in long_docs)
    math = load_calibration_samples("builtin:math", tokenizer, 2, 128)
    assert all("The answer is" in tokenizer.decode(r.tolist()) for r in math.input_ids)


def _smallest_period(row: list[int], limit: int = 8) -> int | None:
    for p in range(1, limit + 1):
        if all(row[i] == row[i + p] for i in range(len(row) - p)):
            return p
    return None


@pytest.mark.parametrize("category", ["repetition_char", "repetition_number"])
def test_repetition_categories_repeat_one_pattern(tokenizer, category):
    samples = load_calibration_samples(f"builtin:{category}", tokenizer, 8, 100, seed=5)
    units = set()
    for row in samples.input_ids.tolist():
        period = _smallest_period(row)
        assert period is not None, row[:20]
        unit = tokenizer.decode(row[:period])
        units.add(unit)
        if category == "repetition_char":
            assert len(unit) == 1 and not unit.isascii()
        else:
            assert re.fullmatch(r" \d{4}", unit)
        assert tokenizer.decode(row[: period * 3]) == unit * 3
    assert len(units) > 1  # the unit varies from sample to sample


def test_math_worked_answers_are_right():
    problems = builtin_texts("math", 300, seed=7)
    assert len(set(problems)) > 250
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    for problem in problems:
        match = re.fullmatch(r"Question: (.+)\nSolution: (.+)\. The answer is (\d+)\.", problem)
        assert match, problem
        steps = match.group(2).split("; ")
        last = None
        for step in steps:
            a, op, b, c = re.fullmatch(r"(\d+) ([-+*/]) (\d+) = (\d+)", step).groups()
            assert ops[op](int(a), int(b)) == int(c), problem
            last = int(c)
        assert last == int(match.group(3))
        # every number the question gives is used in the solution
        for number in re.findall(r"\d+", match.group(1)):
            assert re.search(rf"\b{number}\b", match.group(2)), problem


# ------------------------------------------------------------------------------------------ determinism, shard
def test_determinism(tokenizer):
    a = load_calibration_samples(None, tokenizer, 10, 32, seed=0)
    b = load_calibration_samples(None, tokenizer, 10, 32, seed=0)
    c = load_calibration_samples(None, tokenizer, 10, 32, seed=1)
    assert torch.equal(a.input_ids, b.input_ids) and a.categories == b.categories
    assert not torch.equal(a.input_ids, c.input_ids)
    texts = _texts()
    d = load_calibration_samples(TextSource(texts), tokenizer, 4, 16, seed=0)
    e = load_calibration_samples(TextSource(texts), tokenizer, 4, 16, seed=2)
    assert torch.equal(d.input_ids, load_calibration_samples(TextSource(texts), tokenizer, 4, 16, seed=0).input_ids)
    assert not torch.equal(d.input_ids, e.input_ids)


def test_same_samples_in_another_process(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    here = load_calibration_samples(None, tokenizer, 10, 32, seed=4)
    script = textwrap.dedent(
        f"""
        import sys
        from transformers import PreTrainedTokenizerFast
        from hf_rankprune.data import load_calibration_samples
        tok = PreTrainedTokenizerFast.from_pretrained({str(tmp_path / "tok")!r})
        s = load_calibration_samples(None, tok, 10, 32, seed=4)
        print(s.input_ids.tolist())
        """
    )
    env_root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=env_root, timeout=120
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here.input_ids.tolist()


def test_shard_partitions_exactly(tokenizer):
    samples = load_calibration_samples(None, tokenizer, 11, 16)
    for world in (1, 2, 3, 4, 16):
        shards = [samples.shard(rank, world) for rank in range(world)]
        assert sum(len(s) for s in shards) == len(samples)
        for rank, shard in enumerate(shards):
            assert torch.equal(shard.input_ids, samples.input_ids[rank::world])
            assert shard.categories == samples.categories[rank::world]
            assert shard.input_ids.shape[1] == 16
    with pytest.raises(ValueError, match="rank=2"):
        samples.shard(2, 2)
    with pytest.raises(ValueError, match="world_size=0"):
        samples.shard(0, 0)
    batches = list(samples.batches(4))
    assert [len(c) for _, c in batches] == [4, 4, 3]
    assert torch.equal(torch.cat([b for b, _ in batches]), samples.input_ids)


def test_short_data_is_cycled_with_a_warning(tokenizer):
    text = _texts(1)[0]
    n_tokens = len(_ids(tokenizer, text))
    seq_len = n_tokens // 2
    with pytest.warns(UserWarning, match="repeated"):
        samples = load_calibration_samples(TextSource([text]), tokenizer, 5, seq_len)
    assert samples.input_ids.shape == (5, seq_len)


# ---------------------------------------------------------------------------------------------------- errors
def _raises(match: str, data, tokenizer, num_samples: int = 2, seq_len: int = 16, **kwargs):
    with pytest.raises(CalibrationDataError, match=match) as info:
        load_calibration_samples(data, tokenizer, num_samples, seq_len, **kwargs)
    assert isinstance(info.value, ValueError)
    return info.value


def test_bad_arguments(tokenizer):
    _raises("num_samples=0 must be >= 1", None, tokenizer, num_samples=0)
    _raises("seq_len=0 must be >= 1", None, tokenizer, seq_len=0)
    _raises("num_samples=True must be an int", None, tokenizer, num_samples=True)
    _raises("seq_len=2.5 must be an int", None, tokenizer, seq_len=2.5)
    _raises("tokenizer is None", None, None)


def test_empty_sources(tokenizer, tmp_path):
    _raises("empty list", [], tokenizer)
    _raises("TextSource 'custom' is empty", TextSource([]), tokenizer)
    _raises("TextSource 'blank' is empty", TextSource(["", "  \n"], name="blank"), tokenizer)
    for name, content in (("empty.txt", ""), ("empty.jsonl", "\n")):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        _raises(re.escape(str(path)) + ".* is empty", str(path), tokenizer)
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"text": pa.array([], type=pa.string())}), path)
    _raises(re.escape(str(path)) + ".* is empty", str(path), tokenizer)
    _raises("datasets object 'dataset' is empty", datasets.Dataset.from_dict({"text": []}), tokenizer)


def test_wrong_fields(tokenizer, tmp_path):
    path = tmp_path / "wrong.jsonl"
    path.write_text(json.dumps({"content": "x", "meta": 1}) + "\n", encoding="utf-8")
    error = _raises("no 'text' field", str(path), tokenizer)
    assert "'content'" in str(error) and "'meta'" in str(error) and "line 1" in str(error)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    _raises("line 2 is not valid JSON", str(path), tokenizer)
    path = tmp_path / "nums.jsonl"
    path.write_text('{"text": 3}\n', encoding="utf-8")
    _raises("not a string", str(path), tokenizer)
    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    _raises("no 'text' column \\(columns seen: 'body'\\)", str(path), tokenizer)
    _raises("no 'text' column \\(columns seen: 'body'\\)", datasets.Dataset.from_dict({"body": ["x"]}), tokenizer)
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})})
    _raises("pass one split", splits, tokenizer)


def test_too_short_user_data(tokenizer):
    n = len(_ids(tokenizer, "a short text"))
    message = f"has only {n} tokens, but one sample of seq_len=500 needs 500"
    _raises(message, TextSource(["a short text"]), tokenizer, 1, 500)


def test_bad_specs(tokenizer, tmp_path, monkeypatch):
    error = _raises("Unknown builtin category 'poetry'", "builtin:poetry", tokenizer)
    assert all(c in str(error) for c in BUILTIN_CATEGORIES)
    _raises("does not exist", str(tmp_path / "missing.jsonl"), tokenizer)
    _raises("does not exist", "./nowhere/data", tokenizer)
    path = tmp_path / "table.csv"
    path.write_text("text\nhello\n", encoding="utf-8")
    _raises("Unsupported calibration file type '.csv'", str(path), tokenizer)
    _raises("is a directory", str(tmp_path), tokenizer)
    _raises("TextSource", ["The quick brown fox jumps over the lazy dog."], tokenizer)  # raw text is not a spec
    _raises("Unsupported calibration data spec of type int", 42, tokenizer)
    _raises("write 'builtin'", [None], tokenizer)
    _raises("Bad dataset spec", "hf:a:b:c:d", tokenizer)
    with pytest.raises(ValueError, match="list of texts, not a single string"):
        TextSource("one text")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    error = _raises("cannot reach the Hugging Face Hub", "wikitext:wikitext-2-raw-v1:train", tokenizer)
    assert "local" in str(error) and "builtin" in str(error)
    _raises("cannot reach the Hugging Face Hub", ["builtin", "hf:someone/corpus"], tokenizer)
