"""Push a saved (pruned) model folder to the Hugging Face Hub in one commit; read a base model's card from it.

`push_folder` is the only door: it checks everything it can before the first request (repo id, folder, a
`config.json`), creates the repo if needed, and uploads every file of the folder in a single commit through
`huggingface_hub`'s `create_commit`, so the remote never holds half a model. Failures of the Hub (refused token,
server errors, dropped connections) become a `HubPushError` that says what happened and what to do; the local
folder is only ever read. The token is never written to a file or a log message.

`model_card_text` is the one read: the README.md of a base model, for the license its pruned model's card carries.

Loading back needs nothing from here: `AutoModelForCausalLM.from_pretrained(repo_id)`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, constants, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import build_hf_headers, filter_repo_objects, get_session, get_token, validate_repo_id

from .errors import HubPushError  # noqa: F401 (re-exported)
from .utils import OUTPUT_MARKER

try:  # huggingface_hub >= 2 talks through httpx2, 1.x through httpx
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as _httpx

__all__ = ["HubPushError", "model_card_text", "push_folder"]

logger = logging.getLogger(__name__)

# What `upload_folder` never uploads (git metadata, huggingface_hub's local-dir cache, the marker of local outputs).
_IGNORE_PATTERNS = [
    OUTPUT_MARKER,
    ".git",
    ".git/*",
    "*/.git",
    "**/.git/**",
    ".cache/huggingface",
    ".cache/huggingface/*",
    "*/.cache/huggingface",
    "**/.cache/huggingface/**",
]
_DEFAULT_MESSAGE = "Upload pruned model with hf_rankprune"



def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload every file of `folder` (a saved model: `config.json` + weights + extras) to `repo_id` in one commit.

    Args:
        folder: local folder written by `save_pretrained` (plus any extra files: model card, prune plan, ...).
        repo_id: `"namespace/name"` of the model repo; created if it does not exist.
        private: visibility of a repo created here (ignored when the repo exists; None: the Hub's default).
        token: Hub token; None uses the saved login (`hf auth login`) or `HF_TOKEN`, False sends none.
        revision: branch to commit to (default `main`); with `create_pr`, the branch the PR targets.
        commit_message: summary of the commit.
        create_pr: open a pull request with the commit instead of committing to the branch.
        endpoint: Hub URL (default: `HF_ENDPOINT` or https://huggingface.co).

    Returns:
        The `CommitInfo` of the commit (`.oid`, `.commit_url`, and `.pr_url` / `.pr_revision` for a PR).

    Raises:
        ValueError: invalid repo id, or a folder that holds no `config.json` (raised before any request).
        FileNotFoundError: `folder` does not exist.
        HubPushError: the Hub refused the token, failed, or the connection broke; nothing was committed.
    """
    _check_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Cannot push {folder}: no such folder.")
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"Cannot push {folder} to {repo_id!r}: it holds no config.json, so it is not a saved model "
            "(write it with save_pretrained first)."
        )
    paths = _files_to_upload(folder)
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint)
    message = commit_message or _DEFAULT_MESSAGE
    where = f"{repo_id!r} on {endpoint}"
    logger.info("Pushing %d files from %s to %s%s", len(paths), folder, where, " as a pull request" if create_pr else "")

    try:
        api.create_repo(repo_id, token=token, private=private, exist_ok=True)
    except Exception as err:
        raise _push_error(err, f"creating the repo {where}", token) from err

    operations = [CommitOperationAdd(path_in_repo=relpath, path_or_fileobj=str(folder / relpath)) for relpath in paths]
    try:
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
    except Exception as err:
        raise _push_error(err, f"uploading {len(paths)} files to {where}", token) from err
    logger.info("Pushed %s to %s: commit %s%s", folder, where, info.oid, f" ({info.pr_url})" if info.pr_url else "")
    return info


def _check_repo_id(repo_id: str) -> None:
    if not isinstance(repo_id, str):
        raise ValueError(f"Invalid repo id {repo_id!r}: expected a string like 'namespace/name'.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"Invalid repo id {repo_id!r}: {err}") from err


def _files_to_upload(folder: Path) -> list[str]:
    relpaths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(relpaths, ignore_patterns=_IGNORE_PATTERNS))


def _push_error(err: Exception, doing: str, token: str | bool | None) -> Exception:
    """Turn a client exception into a HubPushError naming what failed and what to do (never the token)."""
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status in (401, 403):
            sent = _token_sent(token)
            why = "the Hub refused the token" if sent else "no token was sent"
            text = (
                f"Push failed while {doing}: {why} (HTTP {status}). Pass token= with a token that has write access "
                "to this namespace, or run `hf auth login`."
            )
        elif status >= 500:
            text = (
                f"Push failed while {doing}: the Hub answered HTTP {status} (server error). Nothing was committed; "
                f"try again later.\n{_server_message(err)}"
            )
        else:
            text = f"Push failed while {doing}: HTTP {status}.\n{_server_message(err)}"
    elif isinstance(err, _httpx.TransportError):
        text = (
            f"Push failed while {doing}: the connection to the Hub broke ({type(err).__name__}: {err}). "
            "Check the network and the endpoint, then push again (a push is one commit, so it is safe to repeat)."
        )
    elif isinstance(err, (ValueError, OSError)):
        text = f"Push failed while {doing}: {type(err).__name__}: {err}"
    else:
        return err if isinstance(err, HubPushError) else HubPushError(f"Push failed while {doing}: {err!r}")
    return HubPushError(_scrub(text, token))


def _token_sent(token: str | bool | None) -> bool:
    if token is False:
        return False
    if isinstance(token, str):
        return bool(token)
    return get_token() is not None


def _server_message(err: HfHubHTTPError) -> str:
    return f"Server said: {err.server_message}" if getattr(err, "server_message", None) else str(err)


def _scrub(text: str, token: str | bool | None) -> str:
    """Remove the token from a message, whatever put it there."""
    secrets = [token] if isinstance(token, str) and token else []
    if token is None:
        saved = get_token()
        if saved:
            secrets.append(saved)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def model_card_text(repo_id: str, *, endpoint: str | None = None) -> str | None:
    """The README.md of Hub model `repo_id` (from `endpoint`, default `HF_ENDPOINT`), or None: no card, gated,
    offline, unreachable.

    One request without retries, so an offline machine does not wait on back-offs (`hf_hub_download` retries a
    refused connection for half a minute), and nothing is cached. With `HF_HUB_OFFLINE` set, the copy in the local
    Hub cache, if there is one.
    """
    if constants.HF_HUB_OFFLINE:
        cached = try_to_load_from_cache(repo_id, "README.md")
        return Path(cached).read_text(encoding="utf-8-sig") if isinstance(cached, str) else None
    url = hf_hub_url(repo_id, "README.md", endpoint=(endpoint or constants.ENDPOINT).rstrip("/"))
    try:
        response = get_session().get(url, headers=build_hf_headers(), timeout=10, follow_redirects=True)
    except Exception:  # no network, refused connection, timeout: the card stays unknown
        return None
    return response.text if response.status_code == 200 else None
