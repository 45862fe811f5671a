"""`RankPruner.push_to_hub` and `hf-rankprune push` against the local Hub (tests/hub_server.py) through the real
huggingface_hub client; pruned models load back from the Hub in fresh processes, with and without hf_rankprune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub import constants as hf_constants
from transformers import AutoModelForCausalLM

import hf_rankprune
from hf_rankprune.cli import main
from hf_rankprune.config import RankPruneConfig
from hf_rankprune.hub import HubPushError
from hf_rankprune.pruner import RankPruner
from hf_rankprune.utils import OUTPUT_MARKER

BASE = "org/tiny-qwen3_5"
TOKEN = "hf_local_test_token_0123456789"
CONFIGS = {
    "ragged": RankPruneConfig(num_samples=2, seq_len=64, budget="global", ratio=0.4),
    "uniform": RankPruneConfig(num_samples=2, seq_len=64, budget="uniform", ratio=0.5),
}
IDS = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(5))
REPO_ROOT = Path(hf_rankprune.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stats():
    """Calibration statistics of the tiny model, computed once (every pruner below starts from the same model)."""
    return RankPruner(build_tiny_model("qwen3_5"), build_tiny_tokenizer(), CONFIGS["ragged"]).calibrate(progress=False)


def make_pruner(kind: str, stats) -> RankPruner:
    pruner = RankPruner(build_tiny_model("qwen3_5"), build_tiny_tokenizer(), CONFIGS[kind], model_name=BASE)
    pruner.load_stats(stats)
    return pruner


@pytest.fixture
def hub_env(hub, monkeypatch):
    """The local Hub as the default endpoint (as HF_ENDPOINT does), holding the base model's card (license: mit)."""
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    api = HfApi(endpoint=hub.url)
    api.create_repo(BASE)
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# tiny base\n", path_in_repo="README.md", repo_id=BASE)
    hub.clear_requests()
    return hub


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """The files a push uploads: all but the local marker of hf_rankprune outputs."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != OUTPUT_MARKER
    }


LOADER = textwrap.dedent(
    """
    import sys
    mode, ids_path, out = sys.argv[1:4]
    if mode == "without":
        sys.modules["hf_rankprune"] = None  # `import hf_rankprune` fails, even if it is installed
    else:
        import hf_rankprune  # noqa: F401  (registers the *_rankpruned model types)
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = torch.load(ids_path)
    for spec in sys.argv[4:]:
        repo, remote = spec.split("|")
        kwargs = {"trust_remote_code": True} if remote == "1" else {}
        model = AutoModelForCausalLM.from_pretrained(repo, **kwargs).eval()
        AutoTokenizer.from_pretrained(repo, **kwargs)
        with torch.no_grad():
            torch.save(model(ids).logits, f"{out}/{mode}--{repo.replace('/', '--')}.pt")
        relation = ModelCard.load(repo).data.to_dict()["base_model_relation"]
        print("RESULT", mode, repo, type(model).__module__, type(model).__name__, relation)
    if mode == "without":
        assert not [m for m in sys.modules if m.startswith("hf_rankprune") and sys.modules[m] is not None]
    """
)


def load_in_fresh_processes(hub, tmp_path: Path, cases: dict[str, bool]) -> dict[str, dict[str, str]]:
    """Load every repo (repo -> ragged?) from the Hub in two fresh processes with empty HF_HOMEs: one importing
    hf_rankprune, one where it cannot be imported (ragged repos then need trust_remote_code). Logits land in
    tmp_path/out; returns {mode: {repo: 'module class relation'}}."""
    torch.save(IDS, tmp_path / "ids.pt")
    (tmp_path / "out").mkdir(exist_ok=True)
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_")) and k != "PYTHONPATH"}  # fmt: skip
    base_env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1",
                    TRANSFORMERS_VERBOSITY="error")  # fmt: skip
    procs = {}
    for mode in ("with", "without"):
        env = dict(base_env, HF_HOME=str(tmp_path / f"hf_home_{mode}"))
        if mode == "with":
            env["PYTHONPATH"] = str(REPO_ROOT)
        specs = [f"{repo}|{int(ragged and mode == 'without')}" for repo, ragged in cases.items()]
        procs[mode] = subprocess.Popen(
            [sys.executable, "-c", LOADER, mode, str(tmp_path / "ids.pt"), str(tmp_path / "out"), *specs],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    results = {}
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        results[mode] = {line.split()[2]: " ".join(line.split()[3:]) for line in stdout.splitlines()
                         if line.startswith("RESULT ")}  # fmt: skip
    return results


# ------------------------------------------------------------------------------------------------ round trips


def test_push_and_load_ragged_and_uniform_in_fresh_processes(hub_env, stats, tmp_path):
    hub = hub_env
    expected, cases = {}, {}
    for kind in ("ragged", "uniform"):
        pruner = make_pruner(kind, stats)
        pruner.evaluation_results = {"original": {"passkey.accuracy": 0.75}, "pruned": {"passkey.accuracy": 0.5}}
        repo = f"me/tiny-{kind}"
        info = pruner.push_to_hub(repo, commit_message=f"Add {kind} pruned model")
        plan = pruner.pruning_plan
        assert plan.is_uniform == (kind == "uniform")
        assert hub.head(repo) == info.oid and len(hub.commits(repo)) == 2  # the Hub's initial commit + ONE commit
        assert hub.repo_meta(repo)["commits"][info.oid]["summary"] == f"Add {kind} pruned model"
        files = set(hub.files(repo))
        assert {"config.json", "model.safetensors", "tokenizer.json", "prune_plan.json", "README.md",
                "figures/rank_trajectories.png", "rank_stats.json"} <= files  # fmt: skip
        assert ("modeling_rankpruned.py" in files) == (kind == "ragged")
        card = ModelCard(hub.files(repo)["README.md"].decode())
        assert card.data.base_model == BASE and card.data.license == "mit"
        assert card.data.eval_results[0].metric_value == 0.5
        assert f'from_pretrained("{repo}"' in card.text
        expected[repo] = logits(pruner.model)
        cases[repo] = kind == "ragged"

    results = load_in_fresh_processes(hub, tmp_path, cases)
    assert results["with"]["me/tiny-ragged"].startswith("hf_rankprune.modeling")
    assert results["without"]["me/tiny-ragged"].startswith("transformers_modules")
    for mode in ("with", "without"):
        assert results[mode]["me/tiny-uniform"].startswith("transformers.models.qwen3_5")
        for repo, reference in expected.items():
            assert results[mode][repo].endswith("quantized")
            loaded = torch.load(tmp_path / "out" / f"{mode}--{repo.replace('/', '--')}.pt")
            assert torch.equal(loaded, reference), (mode, repo)


def test_second_push_updates_card_and_plan(hub_env, stats, tmp_path):
    hub, repo = hub_env, "me/tiny-update"
    pruner = make_pruner("ragged", stats)
    first = pruner.push_to_hub(repo)
    assert "No evaluation results" in hub.files(repo)["README.md"].decode()

    # A changed card: evaluation results recorded after the first push.
    pruner.evaluation_results = {"original": {"passkey.accuracy": 1.0}, "pruned": {"passkey.accuracy": 0.875}}
    second = pruner.push_to_hub(repo, commit_message="Add evaluation")
    assert second.oid != first.oid and hub.commits(repo)[:2] == [second.oid, first.oid]
    assert "| passkey.accuracy | 1 | 0.875 |" in hub.files(repo)["README.md"].decode()
    assert "No evaluation results" in hub.files(repo, first.oid)["README.md"].decode()  # old revision unchanged

    # A second prune of the pruned model: the plan on the Hub composes both, and the model still loads.
    again = RankPruner(pruner.model, pruner.tokenizer, RankPruneConfig(num_samples=2, seq_len=64, ratio=0.25),
                       model_name=BASE)  # fmt: skip
    again.prune()
    third = again.push_to_hub(repo, commit_message="Prune further")
    assert hub.head(repo) == third.oid
    plan = json.loads(hub.files(repo)["prune_plan.json"])
    assert [step["ratio"] for step in plan["settings"]["steps"]] == [0.4, 0.25]
    assert "several steps" in hub.files(repo)["README.md"].decode()
    path = hf_hub_download(repo, "config.json", revision=third.oid, endpoint=hub.url, cache_dir=tmp_path / "cache")
    folder = Path(path).parent
    for name in ("model.safetensors", "configuration_rankpruned.py", "modeling_rankpruned.py"):
        hf_hub_download(repo, name, revision=third.oid, endpoint=hub.url, cache_dir=tmp_path / "cache")
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert torch.equal(logits(loaded), logits(again.model))


def test_cli_push_of_a_saved_folder(hub_env, stats, tmp_path, capsys):
    hub, repo = hub_env, "me/tiny-cli"
    folder = make_pruner("uniform", stats).save_pretrained(tmp_path / "pruned")
    before = folder_bytes(folder)
    capsys.readouterr()  # progress bars of the save
    hub.token = TOKEN
    code = main(["push", str(folder), repo, "--private", "--token", TOKEN, "--commit-message", "From the CLI"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and TOKEN not in out
    head = hub.head(repo)
    assert head in out and hub.repo_meta(repo)["private"] is True
    assert hub.repo_meta(repo)["commits"][head]["summary"] == "From the CLI"
    assert {name: data for name, data in hub.files(repo).items() if name != ".gitattributes"} == before

    (folder / "notes.md").write_text("proposal\n")
    assert main(["push", str(folder), repo, "--token", TOKEN, "--create-pr"]) == 0
    assert "discussions/1" in capsys.readouterr().out
    assert hub.head(repo) == head and "notes.md" in hub.files(repo, "refs/pr/1")


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    "endpoint, mode, expected",
    [("commit", 500, "HTTP 500"), ("commit", "drop", "connection to the Hub broke"), ("create", 401, "refused the token")],
)
def test_hub_failure_is_one_clear_error_and_leaves_the_folder(hub_env, stats, tmp_path, capsys, endpoint, mode,
                                                              expected):  # fmt: skip
    hub, repo = hub_env, "me/tiny-fail"
    folder = make_pruner("uniform", stats).save_pretrained(tmp_path / "pruned")
    before = folder_bytes(folder)
    capsys.readouterr()  # progress bars of the save
    hub.fail(endpoint, mode)
    code = main(["push", str(folder), repo, "--token", TOKEN])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert expected in err and repo in err and TOKEN not in err
    assert folder_bytes(folder) == before
    assert not hub.repo_exists(repo) or set(hub.files(repo)) == {".gitattributes"}


def test_pruner_push_failure_raises_and_cleans_up(hub_env, stats, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    hub_env.fail("commit", 500)
    with pytest.raises(HubPushError, match="HTTP 500"):
        make_pruner("ragged", stats).push_to_hub("me/tiny-fail", token=TOKEN)
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary save is gone
    assert set(hub_env.files("me/tiny-fail")) == {".gitattributes"}


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("repo_id", ["has space/model", "org/sub/model", "org/-model"])
def test_invalid_repo_id(hub_env, stats, tmp_path, capsys, repo_id):
    folder = tmp_path / "model"
    build_tiny_model("qwen3_5").save_pretrained(folder)
    capsys.readouterr()  # progress bars of the save
    assert main(["push", str(folder), repo_id]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid repo id") and err.count("\n") == 1
    pruner = make_pruner("uniform", stats)
    with pytest.raises(ValueError, match="Invalid repo id"):
        pruner.push_to_hub(repo_id)
    assert pruner.pruning_plan is None  # refused before any work (no plan, no pruning)
    assert hub_env.requests == []


def test_missing_token_or_folder(hub_env, tmp_path, capsys):
    hub_env.token = TOKEN  # the Hub now requires this token
    folder = tmp_path / "model"
    build_tiny_model("qwen3_5").save_pretrained(folder)
    capsys.readouterr()  # progress bars of the save
    assert main(["push", str(folder), "me/tiny-token"]) == 2
    err = capsys.readouterr().err
    assert "no token was sent" in err and "hf auth login" in err and err.count("\n") == 1
    assert not hub_env.repo_exists("me/tiny-token")

    assert main(["push", str(tmp_path / "missing"), "me/tiny-token"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "me/tiny-token"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_cli_prune_recipe_evaluates_and_pushes(hub_env, tiny_model_dir, tmp_path, capsys):
    """A recipe drives the whole run: calibration, budget, evaluation before/after (in the card) and the push."""
    hub, repo = hub_env, "me/tiny-from-recipe"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model: {tiny_model_dir}\n"
        "architecture: [qwen3_5_text]\n"
        "calibration: {num_samples: 2, seq_len: 128}\n"
        "pruning_stage:\n  pruning_modifiers:\n    RankPruningModifier: {ratio: 0.25}\n"
        "evaluation: {tasks: [memory, passkey], lengths: [400], depths: [0.5], num_keys: 1}\n"
        f"output_dir: {tmp_path / 'out'}\n"
        f"push_to_hub: {{repo_id: {repo}}}\n"
    )
    code = main(["prune", "--recipe", str(recipe), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "Pushed to" in out
    assert any(line.split() == ["memory.linear_state_bytes", "24,576", "B", "18,432", "B"] for line in out.splitlines())
    card = hub.files(repo)["README.md"].decode()
    assert "| metric | original | pruned | change |" in card and "linear_state_bytes" in card
    assert hub.files(repo)["prune_plan.json"] == (tmp_path / "out" / "prune_plan.json").read_bytes()
    bad = recipe.read_text().replace(repo, "not a repo id")
    recipe.write_text(bad.replace(str(tmp_path / "out"), str(tmp_path / "out2")))
    assert main(["prune", "--recipe", str(recipe), "--quiet"]) == 2
    assert "push_to_hub.repo_id" in capsys.readouterr().err and not (tmp_path / "out2").exists()
