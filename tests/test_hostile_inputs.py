"""Hostile inputs and faults (issue 16): one test per class, each trying several instances through the real CLI.

Every refusal: exit 2 and one `error:` line saying what is wrong (bad input), exit 1 for runtime faults, 130 on Ctrl-C,
143 on SIGTERM; nothing written, and nothing of the user's changed (input folders are compared byte for byte).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_model, build_tiny_tokenizer

from hf_rankprune.cli import main
from hf_rankprune.config import ConfigError, RankPruneConfig
from hf_rankprune.data import CalibrationDataError, TextSource, load_calibration_samples
from hf_rankprune.stats import METRICS, RankStats, StatsError
from hf_rankprune.utils import OUTPUT_MARKER, OutputExistsError, atomic_output_dir, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--num-samples", "2", "--seq-len", "64", "--quiet"]


# ------------------------------------------------------------------------------------------------------- helpers
def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error_line(err: str, *patterns: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for pattern in patterns:
        assert pattern in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under `folder` (hidden ones too) with its mode and, for files, its bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        out[path.relative_to(folder).as_posix()] = (info.st_mode, path.read_bytes() if path.is_file() else None)
    return out


class _Deadline(BaseException):
    """Raised by the timer: a hang became a test failure (not an OSError, so the CLI does not swallow it)."""


@contextmanager
def deadline(seconds: float):
    def expire(signum, frame):
        raise _Deadline(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model in models/src (a test may try to overwrite it)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "models" / "src"))


@pytest.fixture(scope="module")
def valid_stats(tiny_model_dir) -> dict:
    """Real rank statistics of the tiny model (2 samples of 64 tokens), as their JSON dict."""
    from hf_rankprune.calibrate import calibrate
    from hf_rankprune.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    config = RankPruneConfig(num_samples=2, seq_len=64, data=["builtin:math"])
    samples = load_calibration_samples(config.data, tokenizer, 2, 64)
    return calibrate(model, samples, config, progress=False).to_dict()


def write_json(path: Path, values) -> Path:
    path.write_text(json.dumps(values), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- 1. the output overlaps an input
def test_output_that_overlaps_an_input_or_the_working_directory_is_refused(model_copy, tmp_path, capsys,
                                                                           monkeypatch):  # fmt: skip
    models = model_copy.parent
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    stats_file = write_json(inputs / "s.json", {"format_version": 1})
    recipe = inputs / "r.yaml"
    recipe.write_text("pruning_stage:\n  pruning_modifiers:\n    RankPruningModifier: {ratio: 0.25}\n")
    data = inputs / "d.txt"
    data.write_text("the state of a head " * 200)
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the user's own file")
    (work / "sub").mkdir()
    (tmp_path / "models" / "link").symlink_to(model_copy)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(work / "sub")
    before = {folder: snapshot(folder) for folder in (models, inputs, work, theirs)}

    cases = [
        (["prune", model_copy, "--stats", stats_file, "--overwrite", "--out", model_copy], "is the input"),
        (["analyze", model_copy, "--overwrite", "--out", model_copy], "is the input"),
        (["analyze", model_copy, "--out", model_copy / "analysis"], "lies inside the input"),
        (["probe", model_copy, "--overwrite", "--out", models], "contains the input"),
        (["analyze", model_copy, "--overwrite", "--out", models / "link"], "is the input"),  # a link to the model
        (["eval", model_copy, "--tasks", "memory", "--out", model_copy / "results.json"], "lies inside the input"),
        (["prune", model_copy, "--overwrite", "--out", ""], "path is empty"),
        (["analyze", model_copy, "--overwrite", "--out", "."], "current working directory"),
        (["analyze", model_copy, "--overwrite", "--out", ".."], "folder holding the current working directory"),
        (["analyze", model_copy, "--overwrite", "--out", "../.."], "contains the input"),
        (["prune", model_copy, "--stats", stats_file, "--overwrite", "--out", stats_file], "is the input"),
        (["prune", model_copy, "--stats", stats_file, "--overwrite", "--out", inputs], "contains the input"),
        (["prune", model_copy, "--recipe", recipe, "--overwrite", "--out", inputs], "contains the input"),
        (["analyze", model_copy, "--data", data, "--overwrite", "--out", inputs], "contains the input"),
        (["analyze", model_copy, "--overwrite", "--out", theirs], f"no {OUTPUT_MARKER} marker"),
        (["eval", model_copy, "--tasks", "memory", "--overwrite", "--out", recipe], "not an earlier results file"),
        (["eval", model_copy, "--tasks", "memory", "--overwrite", "--out", work / "notes.txt"],
         "not an earlier results file"),  # fmt: skip
    ]
    for argv, pattern in cases:
        code, _, err = run_cli(capsys, *argv, *(["--quiet"] if argv[0] in ("analyze", "prune", "probe") else []))
        assert code == 2, (argv, err)
        one_error_line(err, pattern)
    for folder, content in before.items():
        assert snapshot(folder) == content, folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs", "models", "theirs", "work"]

    # --overwrite replaces an earlier output of this tool, and only that
    out = tmp_path / "analysis"
    with atomic_output_dir(out) as staging:
        (staging / "report.md").write_text("old")
    assert (out / OUTPUT_MARKER).is_file()
    code, _, err = run_cli(capsys, "analyze", model_copy, *SMALL, "--data", "builtin:math", "--overwrite", "--out", out)
    assert code == 0, err
    assert (out / "report.json").is_file() and (out / OUTPUT_MARKER).is_file()
    assert snapshot(models) == before[models]


# ------------------------------------------------------------------------------ 2. silent wrong results: --stats
def test_statistics_that_are_invalid_or_belong_to_another_model_are_refused(tiny_model_dir, valid_stats, tmp_path,
                                                                            capsys):  # fmt: skip
    def variant(change) -> dict:
        values = json.loads(json.dumps(valid_stats))
        change(values)
        return values

    category = next(iter(valid_stats["categories"]))

    def set_sum(metric, value, kind="sums"):
        def change(values):
            values["categories"][category][kind][metric][1][2][0] = value

        return change

    def set_field(name, value):
        def change(values):
            values[name] = value

        return change

    def set_count(value):
        def change(values):
            values["categories"][category]["counts"][0] = value

        return change

    def drop_head(values):
        for metric in METRICS:
            values["categories"][category]["sums"][metric][0].pop()

    cap = valid_stats["rank_caps"][1]
    invalid = [
        (variant(set_sum("threshold_rank", float("nan"))), "layer 1, head 2: nan"),
        (variant(set_sum("nuclear_norm", float("inf"))), "head 2: inf"),
        (variant(set_sum("stable_rank", 3.0 * cap * 2)), f"outside [0, {cap}]"),
        (variant(set_sum("entropy_rank", -1.0)), "outside"),
        (variant(set_sum("frobenius_norm", -5.0)), "outside >= 0"),
        (variant(set_count(-2)), "counts must be whole numbers >= 0"),
        (variant(set_field("num_heads", valid_stats["num_heads"][:-1])), "head counts"),
        (variant(drop_head), "shape"),
        (variant(set_field("layers", [0, 0, 3])), "distinct increasing"),
        (variant(set_field("grid", [])), "grid"),
        (variant(set_field("layers", "0,1,3")), "layers must be a list of integers"),
        ([1, 2, 3], "must be a JSON object"),
        (variant(set_field("format_version", 99)), "format_version=99"),
    ]
    for number, (values, pattern) in enumerate(invalid):
        path = write_json(tmp_path / f"bad{number}.json", values)
        with pytest.raises(StatsError) as info:
            RankStats.from_json_file(path)
        assert pattern in str(info.value), (pattern, str(info.value))
    # through the CLI: refused before the model is loaded, with one line, nothing written
    before = snapshot(tiny_model_dir)
    (tmp_path / "stats_folder").mkdir()
    (tmp_path / "garbage.json").write_bytes(bytes(range(256)))
    for stats, pattern in (
        (tmp_path / "bad0.json", "nan"),
        (tmp_path / "stats_folder", "is a folder"),
        (tmp_path / "garbage.json", "not a rank statistics JSON file"),
        (tmp_path / "missing.json", "does not exist"),
    ):
        for command in ("prune", "probe"):
            code, _, err = run_cli(capsys, command, tiny_model_dir, "--stats", stats, "--out", tmp_path / "out")
            assert code == 2, err
            one_error_line(err, pattern)
    assert not (tmp_path / "out").exists()

    # statistics of another model: refused with the reason (plan_from_stats is the one place they meet a model)
    from hf_rankprune.arch import get_adapter
    from hf_rankprune.scoring import plan_from_stats

    adapter = get_adapter(build_tiny_model("qwen3_5"))
    good = RankStats.from_dict(valid_stats)
    plan_from_stats(adapter, good, RankPruneConfig(ratio=0.25))  # the real statistics fit
    foreign = [
        (set_field("layers", [0, 1, 2]), "linear layers [0, 1, 2]"),
        (set_field("num_heads", [8, 6, 8]), "layer 1 has 6 value heads"),
        (set_field("rank_caps", [16, 16, 32]), "rank cap 32"),
    ]
    for change, pattern in foreign:
        values = variant(change)
        if change is foreign[1][0]:  # a consistent file with 6 heads in layer 1
            for kind in ("sums", "squares"):
                for metric in METRICS:
                    values["categories"][category][kind][metric][1] = values["categories"][category][kind][metric][1][:6]
        stats = RankStats.from_dict(values)
        with pytest.raises(StatsError, match="made for another model") as info:
            plan_from_stats(adapter, stats, RankPruneConfig(ratio=0.25))
        assert pattern in str(info.value), str(info.value)
    stats.categories[category].sums["threshold_rank"][0][0, 0] = float("nan")  # in memory, not from a file
    with pytest.raises(StatsError, match="nan"):
        plan_from_stats(adapter, stats, RankPruneConfig(ratio=0.25))
    # end to end: a foreign file through `prune` is one line, exit 2, after the model is read and before any work
    foreign_file = write_json(tmp_path / "foreign.json", variant(set_field("layers", [0, 1, 2])))
    code, _, err = run_cli(capsys, "prune", tiny_model_dir, "--stats", foreign_file, "--out", tmp_path / "out",
                           "--quiet")  # fmt: skip
    assert code == 2
    one_error_line(err, "made for another model", "linear layers [0, 1, 2]")
    assert not (tmp_path / "out").exists() and snapshot(tiny_model_dir) == before


# ----------------------------------------------------------------------------- 3. hangs and runaway memory
class _EmptyTokenizer:
    """What transformers builds when a model folder has no tokenizer files: every text gives no token."""

    eos_token_id = None

    def encode(self, text, add_special_tokens=False):
        return []


def test_no_hang_and_no_runaway_memory(tiny_model_dir, tmp_path, capsys):
    tokenizer = build_tiny_tokenizer()
    with deadline(60):
        # a tokenizer that produces nothing: the endless builtin texts, and user texts, end in an error
        for data in (None, "builtin:technical", "builtin:math", "builtin:long_context",
                     TextSource(["some text"] * 50)):  # fmt: skip
            with pytest.raises(CalibrationDataError, match="tokenizer produced no tokens"):
                load_calibration_samples(data, _EmptyTokenizer(), 2, 64)
        # a model folder without tokenizer files, through the CLI
        bare = tmp_path / "bare"
        build_tiny_model("qwen3_5").save_pretrained(bare)
        before = snapshot(bare)
        code, _, err = run_cli(capsys, "analyze", bare, *SMALL, "--out", tmp_path / "a")
        assert code == 2
        assert "tokenizer" in one_error_line(err)
        assert snapshot(bare) == before and not (tmp_path / "a").exists()

        # recipes: alias bombs, recursive anchors and huge files are refused before anything is built
        laughs = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        laughs += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
        bombs = {
            "laughs.yaml": "\n".join(laughs) + "\nmodel: *i\n",
            "laughs_in_a_key.yaml": "\n".join(laughs[:7]) + "\npruning_stage: {pruning_modifiers: {RankPruningModifier: "
            "{ratio: 0.3, alpha: *g}}}\n",
            "merge_bomb.yaml": "\n".join(laughs[:7]) + "\ncalibration: {<<: {data: *g}}\n",
            "recursive.yaml": "model: &m [*m]\n",
            "huge.yaml": "description: " + "x" * (2 << 20) + "\n",
        }
        for name, text in bombs.items():
            path = tmp_path / name
            path.write_text(text)
            code, _, err = run_cli(capsys, "prune", "--recipe", path, "--out", tmp_path / "p")
            assert code == 2, (name, err)
            line = one_error_line(err, str(path))
            assert len(line) < 600, line
        # an unbounded user value is never formatted whole into a message
        long_value = tmp_path / "long_value.yaml"
        long_value.write_text("pruning_stage: {pruning_modifiers: {RankPruningModifier: {ratio: 0.3}}}\n"
                          "output_dir: [" + ", ".join(["x" * 1000] * 1000) + "]\n")  # fmt: skip
        code, _, err = run_cli(capsys, "prune", "--recipe", long_value, "--out", tmp_path / "p")
        assert code == 2 and len(one_error_line(err, "output_dir=")) < 600
        with pytest.raises(ConfigError) as info:
            RankPruneConfig(grid=list(range(10**6, 0, -1)))
        assert len(str(info.value)) < 300

        # a single-line data file far larger than the samples need: read in parts, only as far as needed
        big = tmp_path / "one_line.txt"
        with open(big, "w", encoding="utf-8") as handle:
            for _ in range(96):
                handle.write("the state of a linear attention head " * 28_000)  # ~1 MB per write, no newline
        assert big.stat().st_size > 90e6
        tracemalloc.start()
        start = time.perf_counter()
        samples = load_calibration_samples(str(big), tokenizer, 2, 128)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert samples.input_ids.shape == (2, 128)
        assert seconds < 10 and peak < 20e6, (seconds, peak)
        big.unlink()
        # the same for one huge document in a .jsonl line and in memory
        huge_line = tmp_path / "huge.jsonl"
        huge_line.write_text(json.dumps({"text": "words of a document " * 500_000}) + "\n")
        start = time.perf_counter()
        assert load_calibration_samples(str(huge_line), tokenizer, 2, 128).input_ids.shape == (2, 128)
        assert load_calibration_samples(TextSource(["words " * 2_000_000]), tokenizer, 2, 128).input_ids.shape == (2, 128)
        assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------- 4. failing only after the work
def test_output_that_cannot_be_created_is_refused_before_any_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import hf_rankprune.cli as cli
    import hf_rankprune.pruner as pruner
    import hf_rankprune.utils as utils

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(cli, "load_model_and_tokenizer", no_work)
    monkeypatch.setattr(pruner.RankPruner, "from_pretrained", no_work)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [(a_file / "out", "is a file, not a folder")]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        cases.append((locked / "out", "no write permission"))
    if Path("/sys").is_dir() and _cannot_write("/sys"):  # usually a read-only filesystem
        cases.append((Path("/sys") / "hf_rankprune_out", "Cannot create the output"))
    for out, pattern in cases:
        for argv in (["analyze", tiny_model_dir, *SMALL], ["prune", tiny_model_dir, "--quiet"],
                     ["probe", tiny_model_dir, "--quiet"], ["eval", tiny_model_dir, "--tasks", "memory"]):  # fmt: skip
            code, _, err = run_cli(capsys, *argv, "--out", out)
            assert code == 2, (argv, err)
            one_error_line(err, pattern)
    # a read-only filesystem (EROFS from the kernel, simulated here)
    real_mkdtemp = utils.tempfile.mkdtemp

    def read_only(*args, **kwargs):
        if ".probe-" in kwargs.get("prefix", ""):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(utils.tempfile, "mkdtemp", read_only)
    for argv in (["analyze", tiny_model_dir, *SMALL], ["eval", tiny_model_dir, "--tasks", "memory"]):
        code, _, err = run_cli(capsys, *argv, "--out", tmp_path / "ro" / "out")
        assert code == 2
        one_error_line(err, "read-only filesystem")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a_file"] + (["locked"] if os.geteuid() else []))


def _cannot_write(folder: str) -> bool:
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(dir=folder))
    except OSError:
        return True
    return False


# ------------------------------------------------------------------------ 5. one `error:` line, never a traceback
def test_faults_end_in_one_error_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import hf_rankprune.report as report

    before = snapshot(tiny_model_dir)
    out = tmp_path / "out"
    # bad input (exit 2): --stats a folder, binary --data files
    (tmp_path / "stats_dir").mkdir()
    code, _, err = run_cli(capsys, "prune", tiny_model_dir, "--stats", tmp_path / "stats_dir", "--out", out)
    assert code == 2
    one_error_line(err, "is a folder")
    for name, content in (("binary.txt", bytes(range(256)) * 64), ("nul.txt", b"text\x00\x00\x00more"),
                          ("binary.jsonl", b'{"text": "fine"}\n' + bytes(range(128, 256)) * 8)):  # fmt: skip
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli(capsys, "analyze", tiny_model_dir, *SMALL, "--data", tmp_path / name, "--out", out)
        assert code == 2, err
        one_error_line(err, "is not a UTF-8 text file", name)

    # runtime faults while the output is written: disk full (exit 1), Ctrl-C (exit 130); nothing left behind
    def failing(exception):
        def write_report(stats, folder, **kwargs):
            Path(folder, "rank_stats.json").write_text("{half")
            raise exception

        return write_report

    for exception, code_expected, pattern in (
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "rank_stats.json"), 1, "No space left on device"),
        (OSError(errno.EIO, os.strerror(errno.EIO)), 1, "Input/output error"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ):
        monkeypatch.setattr(report, "write_report", failing(exception))
        code, _, err = run_cli(capsys, "analyze", tiny_model_dir, *SMALL, "--data", "builtin:math", "--out", out)
        assert code == code_expected, err
        one_error_line(err, pattern)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["binary.jsonl", "binary.txt", "nul.txt", "stats_dir"]
    # the same at the end of `eval` (a results file)
    real_replace = os.replace

    def disk_full(source, target, *args, **kwargs):
        if Path(target).name == "r.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full)
    code, _, err = run_cli(capsys, "eval", tiny_model_dir, "--tasks", "memory", "--out", tmp_path / "r.json")
    assert code == 1
    one_error_line(err, "No space left on device")
    assert not (tmp_path / "r.json").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert snapshot(tiny_model_dir) == before


# ---------------------------------------------------------------- 6. signals, stale temporaries, overlapping runs
SIGNAL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    import hf_rankprune.report as report
    from hf_rankprune.cli import main

    model, out = sys.argv[1:3]
    # what a terminal's Ctrl-C does; a test run started in the background by a shell inherits SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def write_then(signum):
        def write_report(stats, folder, **kwargs):
            Path(folder, "rank_stats.json").write_text("{half")
            os.kill(os.getpid(), signum)
            time.sleep(30)
        return write_report

    codes = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        report.write_report = write_then(signum)
        codes.append(main(["analyze", model, "--num-samples", "2", "--seq-len", "64", "--quiet",
                           "--data", "builtin:math", "--out", out]))
    print(json.dumps(codes))
    sys.exit(codes[0])
    """
)


def test_signals_leave_nothing_and_stale_temporaries_are_removed(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", SIGNAL_SCRIPT, str(tiny_model_dir), str(out)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 143, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [143, 130]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and "SIGTERM" in errors[0] and "interrupted" in errors[1], result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []

    # temporaries of killed runs (dead owner on this machine) are removed by the next run; live or foreign ones stay
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = f"{zlib.crc32(socket.gethostname().encode('utf-8')):08x}"
    stale = [tmp_path / f".out.tmp-{host}-{dead.pid}-abc", tmp_path / f".out.old-{host}-{dead.pid}-def"]
    kept = [tmp_path / f".out.tmp-{host}-{os.getpid()}-ghi", tmp_path / f".out.tmp-ffffffff-{dead.pid}-jkl",
            tmp_path / ".out.tmp-from-an-older-version", tmp_path / f".other.tmp-{host}-{dead.pid}-mno"]  # fmt: skip
    for folder in stale + kept:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    with atomic_output_dir(out) as staging:
        (staging / "a.txt").write_text("new")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    for folder in kept:
        shutil.rmtree(folder)

    # overlapping runs: each output appears whole; a run without overwrite never replaces what appeared meanwhile
    shutil.rmtree(out)
    with pytest.raises(OutputExistsError):  # no overwrite, and `out` appeared meanwhile: refused, its files removed
        with atomic_output_dir(out) as first:
            (first / "a.txt").write_text("first")
            with pytest.raises(OutputExistsError):
                with atomic_output_dir(out) as second:
                    (second / "b.txt").write_text("second")
                    with atomic_output_dir(out) as third:  # finishes first
                        (third / "c.txt").write_text("third")
            assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "c.txt"]
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overlapping_overwrites_never_mix(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as staging:
        (staging / "old.txt").write_text("old")
    with atomic_output_dir(out, overwrite=True) as first:
        (first / "a.txt").write_text("a")
        with atomic_output_dir(out, overwrite=True) as second:
            (second / "b.txt").write_text("b")
        assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "b.txt"]
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------------------------------ 7. permissions
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_outputs_follow_the_umask(tiny_model_dir, tmp_path, capsys, umask):
    previous = os.umask(umask)
    try:
        with atomic_output_dir(tmp_path / "api") as staging:
            (staging / "f.txt").write_text("x")
        atomic_write_text(tmp_path / "results.json", "{}")
        if umask == 0o022:  # one real command is enough
            code, _, err = run_cli(capsys, "analyze", tiny_model_dir, *SMALL, "--data", "builtin:math", "--out",
                                   tmp_path / "cli")  # fmt: skip
            assert code == 0, err
            folders = [tmp_path / "cli", tmp_path / "cli" / "figures"]
            assert stat.S_IMODE((tmp_path / "cli" / "report.json").stat().st_mode) == 0o666 & ~umask
        else:
            folders = []
    finally:
        os.umask(previous)
    for folder in [tmp_path / "api", *folders]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask, folder
    assert stat.S_IMODE((tmp_path / "results.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "api" / OUTPUT_MARKER).stat().st_mode) == 0o666 & ~umask


def test_helpers_are_bounded():
    from hf_rankprune.utils import shown

    nested: list = []
    for _ in range(40):
        nested = [nested] * 10  # would be 10**40 items written out
    assert len(shown(nested)) <= 80 and len(shown("x" * 10**7)) <= 80 and len(shown(np.arange(10**6))) <= 80
