"""hf_rankprune.hub.push_folder against a local Hub (tests/hub_server.py), through the real huggingface_hub client."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model
from hub_server import LocalHub
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hf_rankprune.hub import HubPushError, push_folder

REPO = "rankprune-tests/tiny-qwen3_5"
TOKEN = "hf_local_test_token_0123456789"


# ------------------------------------------------------------------------------------------------ fixtures


# `hub` and `_isolated_hub_client` live in conftest.py; every test here runs isolated, even those without `hub`.
pytestmark = pytest.mark.usefixtures("_isolated_hub_client")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny real Qwen3.5 model saved with save_pretrained, plus extra files, and its reference logits."""
    root = tmp_path_factory.mktemp("saved_model")
    folder = root / "model"
    model = build_tiny_model("qwen3_5")
    model.save_pretrained(folder)
    (folder / "prune_plan.json").write_text(json.dumps({"layers": {"0": {"kept_value_heads": [0, 1, 2, 3]}}}))
    (folder / "README.md").write_text("---\nlibrary_name: transformers\nlicense: apache-2.0\n---\n# tiny pruned model\n")
    input_ids = torch.tensor([[1, 5, 9, 17, 33, 65, 2, 3]])
    with torch.no_grad():
        logits = model(input_ids).logits
    torch.save(input_ids, root / "input_ids.pt")
    torch.save(logits, root / "logits.pt")
    return folder


@pytest.fixture
def model_dir(saved_model, tmp_path):
    """A private copy of the saved model folder (tests may change it)."""
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_remote_matches(hub: LocalHub, repo_id: str, folder: Path, cache_dir: Path, revision: str | None = None,
                          token: str | None = None) -> str:
    """Download `repo_id` with snapshot_download and check it holds exactly the files of `folder`."""
    snapshot = Path(snapshot_download(repo_id, revision=revision, endpoint=hub.url, cache_dir=cache_dir, token=token))
    remote = folder_bytes(snapshot)
    remote.pop(".gitattributes", None)  # written by the Hub at repo creation
    local = folder_bytes(folder)
    assert sorted(remote) == sorted(local)
    for name, data in local.items():
        assert remote[name] == data, f"{name} differs after the round trip"
    return str(snapshot)


# ------------------------------------------------------------------------------------------------ round trips


def test_push_then_from_pretrained_in_fresh_process(hub, model_dir, saved_model, tmp_path):
    info = push_folder(model_dir, REPO, endpoint=hub.url, commit_message="Add pruned model")

    assert len(info.oid) == 40 and info.pr_url is None
    assert info.commit_url == f"{hub.url}/{REPO}/commit/{info.oid}"
    assert hub.head(REPO) == info.oid
    assert len(hub.commits(REPO)) == 2  # the Hub's initial commit, then ONE commit with the whole folder
    assert [r.endpoint for r in hub.requests].count("commit") == 1
    assert hub.repo_meta(REPO)["commits"][info.oid]["summary"] == "Add pruned model"
    assert_remote_matches(hub, REPO, model_dir, tmp_path / "cache")

    hub.clear_requests()
    out = tmp_path / "remote_logits.pt"
    script = textwrap.dedent(
        """
        import sys, torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
        with torch.no_grad():
            logits = model(torch.load(sys.argv[2])).logits
        torch.save(logits, sys.argv[3])
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_XET="1",
        HF_HOME=str(tmp_path / "fresh_hf_home"),  # empty cache: everything must come from the Hub
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
    )
    inputs = saved_model.parent / "input_ids.pt"
    proc = subprocess.run([sys.executable, "-c", script, REPO, str(inputs), str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    downloaded = {r.path.split("/resolve/")[1].split("/", 1)[1] for r in hub.requests
                  if r.endpoint == "resolve" and r.method == "GET" and r.status == 200}
    assert {"config.json", "model.safetensors"} <= downloaded
    torch.testing.assert_close(torch.load(out), torch.load(saved_model.parent / "logits.pt"), rtol=0, atol=0)


def test_second_push_updates_the_repo(hub, model_dir, tmp_path):
    api = HfApi(endpoint=hub.url)
    first = push_folder(model_dir, REPO, endpoint=hub.url)
    (model_dir / "prune_plan.json").write_text('{"layers": {}, "version": 2}')
    (model_dir / "notes.txt").write_text("second push\n")
    second = push_folder(model_dir, REPO, endpoint=hub.url, commit_message="Update plan")

    assert second.oid != first.oid
    assert hub.commits(REPO)[:2] == [second.oid, first.oid]
    assert api.model_info(REPO).sha == second.oid
    assert "notes.txt" in {s.rfilename for s in api.model_info(REPO).siblings}
    path = hf_hub_download(REPO, "prune_plan.json", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert json.loads(Path(path).read_text())["version"] == 2
    assert_remote_matches(hub, REPO, model_dir, tmp_path / "cache")
    # The first commit is still there, unchanged.
    old = hf_hub_download(REPO, "prune_plan.json", revision=first.oid, endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert "version" not in json.loads(Path(old).read_text())

    # Pushing an unchanged folder makes no empty commit.
    third = push_folder(model_dir, REPO, endpoint=hub.url)
    assert third.oid == second.oid and hub.head(REPO) == second.oid


def test_create_pr_leaves_main_alone(hub, model_dir, tmp_path):
    first = push_folder(model_dir, REPO, endpoint=hub.url)
    (model_dir / "prune_plan.json").write_text('{"proposal": true}')
    pr = push_folder(model_dir, REPO, endpoint=hub.url, create_pr=True, commit_message="Propose a new plan")

    assert pr.pr_url == f"{hub.url}/{REPO}/discussions/1"
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert hub.head(REPO) == first.oid  # main untouched
    assert hub.head(REPO, "refs/pr/1") == pr.oid
    assert hub.commits(REPO, "refs/pr/1")[1] == first.oid  # the PR branches off main
    path = hf_hub_download(REPO, "prune_plan.json", revision=pr.pr_revision, endpoint=hub.url, cache_dir=tmp_path / "c")
    assert json.loads(Path(path).read_text()) == {"proposal": True}
    assert_remote_matches(hub, REPO, model_dir, tmp_path / "cache", revision=pr.pr_revision)


def test_private_repo_needs_a_token_to_read(hub, model_dir, tmp_path):
    push_folder(model_dir, REPO, endpoint=hub.url, private=True, token=TOKEN)
    api = HfApi(endpoint=hub.url)

    assert hub.repo_meta(REPO)["private"] is True
    assert api.model_info(REPO, token=TOKEN).private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(REPO, token=False)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", endpoint=hub.url, cache_dir=tmp_path / "anon", token=False)
    assert_remote_matches(hub, REPO, model_dir, tmp_path / "cache", token=TOKEN)


# ------------------------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    "endpoint, mode, expected",
    [
        ("commit", 500, "HTTP 500"),
        ("commit", "drop", "connection to the Hub broke"),
        ("commit", 401, "the Hub refused the token"),
        ("create", 503, "HTTP 503"),
        ("create", "drop", "connection to the Hub broke"),
    ],
)
def test_failed_push_is_clear_and_changes_nothing(hub, model_dir, endpoint, mode, expected):
    before = folder_bytes(model_dir)
    hub.fail(endpoint, mode)
    with pytest.raises(HubPushError) as err:
        push_folder(model_dir, REPO, endpoint=hub.url, token=TOKEN)

    message = str(err.value)
    assert expected in message and REPO in message
    assert TOKEN not in message
    assert folder_bytes(model_dir) == before  # the local folder is only read
    if endpoint == "commit":  # the repo was created, but holds only the Hub's initial commit: nothing half-pushed
        assert len(hub.commits(REPO)) == 1
        assert set(hub.files(REPO)) == {".gitattributes"}
    else:
        assert not hub.repo_exists(REPO)

    # Once the Hub is back, the same push goes through.
    hub.clear_failures()
    info = push_folder(model_dir, REPO, endpoint=hub.url, token=TOKEN)
    assert hub.head(REPO) == info.oid
    assert set(hub.files(REPO)) == set(before) | {".gitattributes"}


@pytest.mark.parametrize("token, expected", [(None, "no token was sent"), ("hf_wrong_token_42", "the Hub refused")])
def test_missing_or_wrong_token(hub, model_dir, token, expected):
    hub.token = TOKEN  # every request must now carry this token
    before = folder_bytes(model_dir)
    with pytest.raises(HubPushError) as err:
        push_folder(model_dir, REPO, endpoint=hub.url, token=token)
    message = str(err.value)
    assert expected in message and "hf auth login" in message and "token=" in message
    assert "hf_wrong_token_42" not in message
    assert not hub.repo_exists(REPO)
    assert folder_bytes(model_dir) == before
    assert all(r.status == 401 for r in hub.requests)

    info = push_folder(model_dir, REPO, endpoint=hub.url, token=TOKEN)
    assert hub.head(REPO) == info.oid


def test_transient_server_error_is_retried_by_the_client(hub, model_dir):
    hub.fail("preupload", 500, times=1)  # the client retries preupload after 1 s
    info = push_folder(model_dir, REPO, endpoint=hub.url)
    assert hub.head(REPO) == info.oid
    assert [r.status for r in hub.requests if r.endpoint == "preupload"] == [500, 200]


def test_token_never_written_to_logs_or_files(hub, model_dir, tmp_path, caplog):
    hub.token = TOKEN
    with caplog.at_level(logging.DEBUG):
        push_folder(model_dir, REPO, endpoint=hub.url, token=TOKEN)
        with pytest.raises(HubPushError):
            push_folder(model_dir, "rankprune-tests/other", endpoint=hub.url, token="hf_wrong_token_42")
    assert TOKEN not in caplog.text and "hf_wrong_token_42" not in caplog.text
    assert any("Pushing" in r.getMessage() for r in caplog.records)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert TOKEN.encode() not in data and b"hf_wrong_token_42" not in data, path


@pytest.mark.parametrize("repo_id", ["has space/model", "org/sub/model", "org/na--me", "org/-model", "org/" + "x" * 97])
def test_invalid_repo_id_fails_before_any_request(hub, model_dir, repo_id):
    with pytest.raises(ValueError) as err:
        push_folder(model_dir, repo_id, endpoint=hub.url)
    assert repr(repo_id) in str(err.value)
    assert hub.requests == []


def test_folder_must_exist_and_hold_a_model(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        push_folder(tmp_path / "missing", REPO, endpoint=hub.url)
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="config.json"):
        push_folder(tmp_path / "not_a_model", REPO, endpoint=hub.url)
    assert hub.requests == []


def test_git_and_cache_folders_are_not_pushed(hub, model_dir):
    (model_dir / ".git").mkdir()
    (model_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (model_dir / ".cache" / "huggingface").mkdir(parents=True)
    (model_dir / ".cache" / "huggingface" / "x.lock").write_text("")
    (model_dir / "extra").mkdir()
    (model_dir / "extra" / "report.json").write_text("{}")
    push_folder(model_dir, REPO, endpoint=hub.url)
    remote = set(hub.files(REPO))
    assert "extra/report.json" in remote
    assert not any(p.startswith((".git/", ".cache/")) for p in remote)


# ------------------------------------------------------------------------------------------------ the server itself


def test_server_speaks_the_hub_protocol(hub, model_dir, tmp_path):
    """Errors and listings as the real client expects them (EntryNotFound, RepoNotFound, 409 on create, tree)."""
    api = HfApi(endpoint=hub.url)
    (model_dir / "extra").mkdir()
    (model_dir / "extra" / "report.json").write_text("{}")
    push_folder(model_dir, REPO, endpoint=hub.url)

    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO

    files = api.list_repo_files(REPO)
    assert "extra/report.json" in files and "config.json" in files
    top = {entry.path for entry in api.list_repo_tree(REPO)}
    assert "extra" in top and "extra/report.json" not in top
    assert [p.path for p in api.get_paths_info(REPO, ["config.json", "extra"])] == ["config.json", "extra"]
    assert api.file_exists(REPO, "config.json") and not api.file_exists(REPO, "missing.json")

    cache = tmp_path / "cache"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.json", endpoint=hub.url, cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("rankprune-tests/absent", "config.json", endpoint=hub.url, cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="no-such-branch", endpoint=hub.url, cache_dir=cache)
    assert api.whoami(token=TOKEN)["name"] == "local-user"
