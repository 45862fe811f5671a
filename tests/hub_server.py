"""A local Hugging Face Hub for the tests: stdlib only, spoken to by the real `huggingface_hub` client.

It implements the part of the Hub's HTTP protocol that `HfApi.create_repo`, `HfApi.create_commit` /
`upload_folder` (regular, base64-in-commit uploads), `HfApi.model_info` / `repo_info`, `list_repo_tree` /
`list_repo_files`, `get_paths_info`, `hf_hub_download`, `snapshot_download` and `from_pretrained` use
(checked against huggingface_hub 2.4):

    POST /api/repos/create                          create (409 + {"url"} when it exists)
    POST /api/validate-yaml                         README.md metadata check (always valid here)
    POST /api/models/{id}/preupload/{rev}           answers uploadMode "regular" (+ oid of the current file)
    POST /api/models/{id}/commit/{rev}[?create_pr=1] NDJSON header / file / deletedFile / deletedFolder lines
    GET  /api/models/{id}[/revision/{rev}]          info with sha and siblings
    GET  /api/models/{id}/tree/{rev}[/{path}]       tree listing (?recursive=true)
    POST /api/models/{id}/paths-info/{rev}          info on given paths
    GET  /api/whoami-v2                             who the token belongs to
    HEAD/GET /{id}/resolve/{rev}/{path}             file, with X-Repo-Commit, ETag, Content-Length (and Range)

Errors carry the Hub's `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) and `X-Error-Message`.

Storage (under `root`): `<org>/<name>/repo.json` (visibility, refs, commit metadata) and one folder per commit,
`<org>/<name>/commits/<sha>/<files>`; commit ids are 40-hex sha1s, file oids git blob sha1s. A repo is created
with an initial commit holding `.gitattributes`, as on the Hub. A commit is applied all at once: the new commit
folder is written aside, then renamed, then the ref moves, so a failed or dropped commit leaves nothing behind.

Test controls: `token=` makes every request need `Authorization: Bearer <token>` (401 otherwise);
`fail(endpoint, mode)` makes an endpoint answer 500 / 401 or drop the connection (close the socket without a
response), `times=` times or until `clear_failures()`; `requests` logs every request (method, path, endpoint,
status, whether it was authorised; never the token itself).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

ENDPOINTS = (
    "create",
    "validate-yaml",
    "whoami",
    "preupload",
    "commit",
    "info",
    "tree",
    "paths-info",
    "resolve",
)
_REPO_ACTIONS = {"revision", "preupload", "commit", "tree", "paths-info"}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob holding `data` (what the Hub reports as a regular file's oid / ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An error answer: HTTP status, the Hub's X-Error-Code (optional) and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class _Drop(Exception):
    """Close the connection without answering."""


@dataclass
class Failure:
    endpoint: str  # one of ENDPOINTS, or "*"
    mode: int | str  # 500 (or any status), 401, or "drop"
    method: str | None = None
    times: int | None = None  # None: until cleared


@dataclass
class RequestRecord:
    method: str
    path: str
    endpoint: str
    status: int | None = None  # None: connection dropped
    authorized: bool = False
    dropped: bool = False


@dataclass
class _State:
    root: Path
    token: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    failures: list = field(default_factory=list)
    requests: list = field(default_factory=list)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, state: _State):
        super().__init__(address, handler)
        self.state = state
        self.base_url = f"http://{address[0]}:{self.server_address[1]}"
        self._connections: set = set()
        self._handler_threads: set = set()
        self._conn_lock = threading.Lock()

    def track(self, conn, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
                self._handler_threads.add(threading.current_thread())
            else:
                self._connections.discard(conn)
                self._handler_threads.discard(threading.current_thread())

    def close_connections(self) -> list:
        with self._conn_lock:
            conns, threads = list(self._connections), list(self._handler_threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return threads


class LocalHub:
    """The server: `with LocalHub(root) as hub: ... hub.url ...`, or `start()` / `stop()`."""

    def __init__(self, root: str | os.PathLike | None = None, *, token: str | None = None, host: str = "127.0.0.1",
                 port: int = 0):  # fmt: skip
        self._tmp = None
        if root is None:
            self._tmp = tempfile.mkdtemp(prefix="local-hub-")
            root = self._tmp
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = _State(root=self.root, token=token)
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> LocalHub:
        self._server = _Server((self.host, self.port), _Handler, self.state)  # port 0: a free port
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        threads = self._server.close_connections()
        self._server.server_close()
        for thread in threads:
            thread.join(timeout=5)
        self._thread.join(timeout=5)
        self._server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        return self._server.base_url

    # ---- test controls
    @property
    def token(self) -> str | None:
        return self.state.token

    @token.setter
    def token(self, value: str | None) -> None:
        self.state.token = value

    def fail(self, endpoint: str, mode: int | str, *, method: str | None = None, times: int | None = None) -> None:
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; one of {ENDPOINTS} or '*'")
        if mode != "drop" and not isinstance(mode, int):
            raise ValueError(f"mode must be an HTTP status or 'drop', got {mode!r}")
        with self.state.lock:
            self.state.failures.append(Failure(endpoint, mode, method, times))

    def clear_failures(self) -> None:
        with self.state.lock:
            self.state.failures.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        with self.state.lock:
            return list(self.state.requests)

    def clear_requests(self) -> None:
        with self.state.lock:
            self.state.requests.clear()

    # ---- inspection (reads the stored state directly)
    def repo_exists(self, repo_id: str) -> bool:
        return (_repo_dir(self.root, repo_id) / "repo.json").is_file()

    def repo_meta(self, repo_id: str) -> dict:
        return _load_meta(self.root, repo_id)

    def head(self, repo_id: str, revision: str = "main") -> str:
        return _resolve(_load_meta(self.root, repo_id), revision)

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        meta = _load_meta(self.root, repo_id)
        sha = _resolve(meta, revision)
        folder = _repo_dir(self.root, repo_id) / "commits" / sha
        return {path: (folder / path).read_bytes() for path in meta["commits"][sha]["files"]}

    def commits(self, repo_id: str, revision: str = "main") -> list[str]:
        """Commit ids from `revision` back to the first commit."""
        meta = _load_meta(self.root, repo_id)
        sha, out = _resolve(meta, revision), []
        while sha:
            out.append(sha)
            sha = meta["commits"][sha]["parent"]
        return out


# ---------------------------------------------------------------------------------------------- storage helpers


def _repo_dir(root: Path, repo_id: str) -> Path:
    return root.joinpath(*repo_id.split("/"))


def _load_meta(root: Path, repo_id: str) -> dict:
    path = _repo_dir(root, repo_id) / "repo.json"
    if not path.is_file():
        raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
    return json.loads(path.read_text())


def _save_meta(root: Path, repo_id: str, meta: dict) -> None:
    path = _repo_dir(root, repo_id) / "repo.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)


def _resolve(meta: dict, revision: str) -> str:
    if revision in meta["refs"]:
        return meta["refs"][revision]
    if revision in meta["commits"]:
        return revision
    raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")


def _write_commit(root: Path, repo_id: str, meta: dict, parent: str | None, files: dict, contents: dict,
                  summary: str, description: str = "") -> str:
    """Store a commit: `files` maps path -> {oid, size} of the new tree, `contents` path -> bytes of new files."""
    date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    tree = json.dumps(sorted((p, f["oid"]) for p, f in files.items()))
    sha = hashlib.sha1(f"{parent}\n{tree}\n{summary}\n{description}\n{date}\n{time.time_ns()}".encode()).hexdigest()
    commits_dir = _repo_dir(root, repo_id) / "commits"
    staging = commits_dir / f".{sha}.tmp"
    staging.mkdir(parents=True)
    parent_dir = commits_dir / parent if parent else None
    for path in files:
        target = staging / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if path in contents:
            target.write_bytes(contents[path])
        else:
            shutil.copyfile(parent_dir / path, target)
    os.replace(staging, commits_dir / sha)
    meta["commits"][sha] = {
        "parent": parent,
        "summary": summary,
        "description": description,
        "date": date,
        "files": files,
    }
    return sha


def _tree_entries(files: dict, prefix: str, recursive: bool) -> list[dict]:
    prefix = prefix.strip("/")
    base = f"{prefix}/" if prefix else ""
    entries: dict[str, dict] = {}
    for path in sorted(files):
        if not path.startswith(base):
            continue
        rest = path[len(base):]
        parts = rest.split("/")
        for depth in range(1, len(parts)):  # folders on the way
            if depth > 1 and not recursive:
                break
            folder = base + "/".join(parts[:depth])
            entries.setdefault(folder, {"type": "directory", "path": folder,
                                        "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0})
        if len(parts) == 1 or recursive:
            entries[path] = {"type": "file", "path": path, "oid": files[path]["oid"], "size": files[path]["size"]}
    if prefix and not entries:
        raise HubError(404, f"{prefix} does not exist on this revision", "EntryNotFound")
    return list(entries.values())


# ---------------------------------------------------------------------------------------------- the handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server_version = "LocalHub/1.0"
    timeout = 30  # idle keep-alive connections close after this

    server: _Server

    def setup(self):
        super().setup()
        self.server.track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format, *args):  # noqa: A002 - quiet: the request log is in `state.requests`
        pass

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("HEAD")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")

    # ---- plumbing
    @property
    def state(self) -> _State:
        return self.server.state

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        self.body = b""
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        route = self._route(method, segments)
        endpoint = route[0] if route else "unknown"
        record = RequestRecord(method, url.path, endpoint)
        with self.state.lock:
            self.state.requests.append(record)
        try:
            self.body = self._read_body()
            record.authorized = self._authorized()
            self._inject_failure(method, endpoint)
            if self.state.token is not None and not record.authorized:
                self._unauthorized()
            if route is None:
                raise HubError(404, f"Not found: {method} {url.path}")
            name, handler, args = route
            status, headers, body = handler(*args)
        except _Drop:
            record.status, record.dropped = None, True
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        except HubError as err:
            status, body = err.status, json.dumps({"error": err.message}).encode()
            headers = {"Content-Type": "application/json", "X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
        except Exception as err:  # a bug in the server: answer 500 with the reason
            status, body = 500, json.dumps({"error": f"{type(err).__name__}: {err}"}).encode()
            headers = {"Content-Type": "application/json"}
        record.status = status
        self._send(method, status, headers, body)

    def _send(self, method: str, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        headers = dict(headers)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return False
        return self.state.token is None or auth[7:].strip() == self.state.token

    def _unauthorized(self) -> None:
        if self.headers.get("Authorization"):
            raise HubError(401, "Invalid credentials in Authorization header")
        raise HubError(401, "Invalid username or password.")

    def _inject_failure(self, method: str, endpoint: str) -> None:
        with self.state.lock:
            for failure in self.state.failures:
                if failure.endpoint not in ("*", endpoint) or failure.method not in (None, method):
                    continue
                if failure.times is not None:
                    if failure.times <= 0:
                        continue
                    failure.times -= 1
                mode = failure.mode
                break
            else:
                return
        if mode == "drop":
            raise _Drop()
        if mode == 401:
            self._unauthorized()
        raise HubError(int(mode), f"Injected failure ({mode}) on {endpoint}")

    # ---- routing
    def _route(self, method: str, seg: list[str]):
        if seg[:3] == ["api", "repos", "create"] and method == "POST":
            return "create", self._create, ()
        if seg[:2] == ["api", "validate-yaml"] and method == "POST":
            return "validate-yaml", self._validate_yaml, ()
        if seg[:2] in (["api", "whoami-v2"], ["api", "whoami"]) and method == "GET":
            return "whoami", self._whoami, ()
        if len(seg) >= 3 and seg[:2] == ["api", "models"]:
            rest = seg[2:]
            if len(rest) >= 3 and rest[2] in _REPO_ACTIONS:
                repo_id, action, args = "/".join(rest[:2]), rest[2], rest[3:]
            elif len(rest) >= 2 and rest[1] in _REPO_ACTIONS:
                repo_id, action, args = rest[0], rest[1], rest[2:]
            elif len(rest) <= 2:
                repo_id, action, args = "/".join(rest), None, []
            else:
                return None
            if action is None and method == "GET":
                return "info", self._info, (repo_id, "main")
            if action == "revision" and method == "GET" and args:
                return "info", self._info, (repo_id, "/".join(args))
            if action == "preupload" and method == "POST" and args:
                return "preupload", self._preupload, (repo_id, "/".join(args))
            if action == "commit" and method == "POST" and args:
                return "commit", self._commit, (repo_id, "/".join(args))
            if action == "tree" and method == "GET" and args:
                return "tree", self._tree, (repo_id, args[0], "/".join(args[1:]))
            if action == "paths-info" and method == "POST" and args:
                return "paths-info", self._paths_info, (repo_id, "/".join(args))
            return None
        if method in ("GET", "HEAD"):
            for i in (1, 2):  # /{name}/resolve/... or /{org}/{name}/resolve/...
                if len(seg) > i + 2 and seg[i] == "resolve" and all(_NAME.fullmatch(s) for s in seg[:i]):
                    return "resolve", self._resolve_file, ("/".join(seg[:i]), seg[i + 1], "/".join(seg[i + 2:]), method)
        return None

    # ---- helpers for handlers
    def _json_body(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    @staticmethod
    def _json(payload: Any, status: int = 200, headers: dict | None = None):
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()

    def _readable_meta(self, repo_id: str) -> dict:
        meta = _load_meta(self.state.root, repo_id)
        if meta["private"] and not self._authorized():
            # The Hub hides private repos from unauthenticated callers behind a RepoNotFound.
            raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return meta

    def _repo_url(self, repo_id: str) -> str:
        return f"{self.server.base_url}/{repo_id}"

    # ---- handlers
    def _create(self):
        payload = self._json_body()
        name, org = payload.get("name"), payload.get("organization")
        if payload.get("type") not in (None, "model"):
            raise HubError(400, f"This local hub stores models only, not {payload.get('type')!r}")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or (org is not None and not _NAME.fullmatch(org)):
            raise HubError(400, f"Invalid repo name: {org}/{name}")
        repo_id = f"{org}/{name}" if org else name
        private = bool(payload.get("private", False)) or payload.get("visibility") == "private"
        with self.state.lock:
            repo_dir = _repo_dir(self.state.root, repo_id)
            if (repo_dir / "repo.json").is_file():
                return self._json({"error": "You already created this model repo", "url": self._repo_url(repo_id)},
                                  409, {"X-Error-Message": "You already created this model repo"})
            repo_dir.mkdir(parents=True, exist_ok=True)
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            meta = {"id": repo_id, "private": private, "createdAt": now, "refs": {}, "commits": {}, "prs": 0}
            files = {".gitattributes": {"oid": git_blob_sha1(GITATTRIBUTES), "size": len(GITATTRIBUTES)}}
            sha = _write_commit(self.state.root, repo_id, meta, None, files, {".gitattributes": GITATTRIBUTES},
                                "initial commit")
            meta["refs"]["main"] = sha
            _save_meta(self.state.root, repo_id, meta)
        return self._json({"url": self._repo_url(repo_id), "name": repo_id, "id": repo_id})

    def _validate_yaml(self):
        self._json_body()
        return self._json({"errors": [], "warnings": []})

    def _whoami(self):
        if not self._authorized():
            self._unauthorized()
        return self._json({"type": "user", "name": "local-user", "fullname": "Local User", "orgs": [],
                           "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _info(self, repo_id: str, revision: str):
        with self.state.lock:
            meta = self._readable_meta(repo_id)
            sha = _resolve(meta, revision)
            commit = meta["commits"][sha]
        siblings = [{"rfilename": p, "size": f["size"], "blobId": f["oid"]} for p, f in sorted(commit["files"].items())]
        org = repo_id.split("/")[0] if "/" in repo_id else None
        return self._json({
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": org, "sha": sha, "lastModified": commit["date"], "createdAt": meta["createdAt"],
            "private": meta["private"], "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "library_name": "transformers", "siblings": siblings,
        })

    def _preupload(self, repo_id: str, revision: str):
        payload = self._json_body()
        with self.state.lock:
            meta = _load_meta(self.state.root, repo_id)
            current = meta["commits"][_resolve(meta, revision)]["files"] if revision in meta["refs"] else {}
        files = []
        for item in payload.get("files", []):
            path = item["path"]
            files.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                          "oid": current[path]["oid"] if path in current else None})
        return self._json({"files": files, "commitOid": meta["refs"].get(revision)})

    def _commit(self, repo_id: str, revision: str):
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true", "True")
        with self.state.lock:
            meta = _load_meta(self.state.root, repo_id)
            if revision not in meta["refs"]:
                if _HEX40.fullmatch(revision) and revision in meta["commits"]:
                    raise HubError(400, f"Cannot commit to a commit id ({revision}): use a branch")
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            parent = meta["refs"][revision]
            wanted = header.get("parentCommit")
            if wanted:
                matches = [sha for sha in meta["commits"] if sha.startswith(wanted)]
                if len(matches) != 1:
                    raise HubError(400, f"Unknown parent commit {wanted}")
                if not create_pr and matches[0] != parent:
                    raise HubError(412, f"A commit has happened since {wanted}: head is {parent}")
                parent = matches[0]
            files = dict(meta["commits"][parent]["files"])
            contents: dict[str, bytes] = {}
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if key != "deletedFolder" and not _valid_path(path):
                    raise HubError(400, f"Invalid path {path!r}")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
                    data = base64.b64decode(value["content"], validate=True)
                    contents[path] = data
                    files[path] = {"oid": git_blob_sha1(data), "size": len(data)}
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"File {path} does not exist", "EntryNotFound")
                    del files[path]
                    contents.pop(path, None)
                elif key == "deletedFolder":
                    prefix = path.strip("/") + "/"
                    gone = [p for p in files if p.startswith(prefix)]
                    if not gone:
                        raise HubError(404, f"Folder {path} does not exist", "EntryNotFound")
                    for p in gone:
                        del files[p]
                        contents.pop(p, None)
                elif key == "lfsFile":
                    raise HubError(400, "This local hub takes regular (base64) files only; it never asks for LFS")
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            sha = _write_commit(self.state.root, repo_id, meta, parent, files, contents,
                                header.get("summary", ""), header.get("description", ""))
            pr_url = None
            if create_pr:
                meta["prs"] += 1
                meta["refs"][f"refs/pr/{meta['prs']}"] = sha
                pr_url = f"{self._repo_url(repo_id)}/discussions/{meta['prs']}"
            else:
                meta["refs"][revision] = sha
            _save_meta(self.state.root, repo_id, meta)
        return self._json({"success": True, "commitOid": sha, "commitUrl": f"{self._repo_url(repo_id)}/commit/{sha}",
                           "commitMessage": header.get("summary", ""), "pullRequestUrl": pr_url,
                           "hookOutput": ""})

    def _tree(self, repo_id: str, revision: str, path: str):
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.state.lock:
            meta = self._readable_meta(repo_id)
            files = meta["commits"][_resolve(meta, revision)]["files"]
        return self._json(_tree_entries(files, path, recursive))

    def _paths_info(self, repo_id: str, revision: str):
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = self._json_body().get("paths", [])
        else:
            paths = parse_qs(self.body.decode()).get("paths", [])
        with self.state.lock:
            meta = self._readable_meta(repo_id)
            files = meta["commits"][_resolve(meta, revision)]["files"]
        out = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                out.append({"type": "file", "path": path, "oid": files[path]["oid"], "size": files[path]["size"]})
            elif any(p.startswith(path + "/") for p in files):
                out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
        return self._json(out)

    def _resolve_file(self, repo_id: str, revision: str, path: str, method: str):
        with self.state.lock:
            meta = self._readable_meta(repo_id)
            sha = _resolve(meta, revision)
            entry = meta["commits"][sha]["files"].get(path)
            if entry is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": sha})
            data = b"" if method == "HEAD" else (_repo_dir(self.state.root, repo_id) / "commits" / sha / path).read_bytes()
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{entry["oid"]}"',
            "Accept-Ranges": "bytes",
            "Content-Length": str(entry["size"]),
        }
        status = 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else entry["size"] - 1, entry["size"] - 1)
            if start >= entry["size"]:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{entry['size']}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry['size']}"
            headers["Content-Length"] = str(end - start + 1)
            data = data[start:end + 1] if method != "HEAD" else b""
        return status, headers, data


def _valid_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in parts) and ".git" not in parts


def main(argv=None) -> int:
    """Serve a local Hub until Ctrl-C: `python tests/hub_server.py [--root DIR] [--port N] [--token T]`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", default=None, help="storage folder (default: a temporary one, removed at exit)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument("--token", default=None, help="require this bearer token on every request")
    args = parser.parse_args(argv)
    with LocalHub(args.root, token=args.token, host=args.host, port=args.port) as hub:
        print(f"local Hub at {hub.url} (storage {hub.root}); use it with HF_ENDPOINT={hub.url}; Ctrl-C stops it",
              flush=True)  # fmt: skip
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
