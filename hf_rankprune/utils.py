"""Small shared helpers: the one output-safety layer every command and the API go through.

Outputs appear whole or not at all (written into a hidden temporary sibling, renamed at the end), never overlap what
the run reads (model folder, statistics, recipe, data files) or the working directory, and `overwrite` only ever
replaces an earlier output of this tool: every output folder carries a small marker file (`OUTPUT_MARKER`), and a
non-empty folder without it is refused. Whether the output can be created at all is checked before any work.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputExistsError, OutputPathError  # noqa: F401 (re-exported)

OUTPUT_MARKER = ".hf_rankprune_output"
_MARKER_TEXT = "This folder was written by hf_rankprune; `--overwrite` may replace it.\n"
_RESULTS_FILE_LIMIT = 1 << 20  # an earlier results JSON of `eval` is small




# ---------------------------------------------------------------------------------------------------------------
# checks (before any work)
# ---------------------------------------------------------------------------------------------------------------
def _real(path: str | os.PathLike) -> Path:
    """Absolute path with `~`, `..` and symlinks resolved (as far as it exists)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _input_paths(inputs: Iterable[str | os.PathLike | None]) -> list[tuple[str, Path]]:
    """The inputs that name something on this machine (Hub ids and None are skipped)."""
    found = []
    for item in inputs:
        if item is None or os.fspath(item) == "":
            continue
        text = os.fspath(item)
        if os.path.lexists(os.path.expanduser(text)):
            found.append((text, _real(text)))
    return found


def _check_path(path: str | os.PathLike | None, inputs: Iterable[str | os.PathLike | None], what: str) -> Path:
    """Refuse an empty output path, one that overlaps an input, and one that is or holds the working directory."""
    if path is None or os.fspath(path).strip() == "":
        raise OutputPathError(f"The {what} path is empty: give a new path, e.g. --out pruned_model.")
    text = os.fspath(path)
    target = _real(text)
    for name, source in _input_paths(inputs):
        if _overlaps(target, source):
            relation = "is" if target == source else ("lies inside" if source in target.parents else "contains")
            raise OutputPathError(
                f"The {what} {text!r} {relation} the input {name!r}: writing there would change or delete what this "
                "run reads. Choose an output path outside every input (--overwrite does not change this)."
            )
    cwd = _real(os.getcwd())
    if target == cwd or target in cwd.parents:
        raise OutputPathError(
            f"The {what} {text!r} is {'the' if target == cwd else 'a folder holding the'} current working directory: "
            "replacing it would delete files there. Choose a new path (--overwrite does not change this)."
        )
    return Path(text).expanduser()


def _check_creatable(target: Path, what: str) -> None:
    """Refuse an output whose folder cannot be created or written (missing permission, read-only filesystem)."""
    ancestor = Path(os.path.abspath(target)).parent
    while not ancestor.exists():
        if ancestor.is_symlink():  # a dangling link in the way
            raise OutputPathError(f"Cannot create the {what} {str(target)!r}: {str(ancestor)!r} is a broken link.")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"Cannot create the {what} {str(target)!r}: {str(ancestor)!r} is a file, not a folder.")
    try:
        probe = tempfile.mkdtemp(prefix=".hf_rankprune.probe-", dir=ancestor)
        os.rmdir(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        if error.errno == errno.EROFS:
            hint = "it is on a read-only filesystem"
        elif error.errno in (errno.EACCES, errno.EPERM):
            hint = "you have no write permission there"
        else:
            hint = reason.lower()
        raise OutputPathError(
            f"Cannot create the {what} {str(target)!r}: {hint} ({str(ancestor)!r}: {reason}). Choose a folder you "
            "can write to; nothing was done."
        ) from None


def is_tool_output(path: str | os.PathLike) -> bool:
    """True for a folder written by this tool (it holds the marker file)."""
    return (Path(path) / OUTPUT_MARKER).is_file()


def check_output_dir(
    path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Check, before any work, that an output folder may be written at `path`; returns the path.

    Refused whatever `overwrite` says: an empty path; a path that is, contains or lies inside one of `inputs` (the
    model folder, statistics, recipe or data files of the run) or that is or holds the working directory; a file;
    a folder that cannot be created (permission, read-only filesystem); a non-empty folder that this tool did not
    write (no marker file). A non-empty earlier output of this tool is refused unless `overwrite`.
    """
    inputs = list(inputs)
    target = _check_path(path, inputs, "output folder")
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder: choose another output path.")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"{path} exists and is not empty: choose another folder, or replace it with overwrite=True "
                "(--overwrite on the command line)."
            )
        if not is_tool_output(target):
            raise OutputPathError(
                f"{path} holds files that hf_rankprune did not write (no {OUTPUT_MARKER} marker): --overwrite only "
                "replaces an earlier output of this tool. Choose another folder, or move those files away yourself."
            )
    _check_creatable(target, "output folder")
    return target


def check_output_file(
    path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike | None] = ()
) -> Path:
    """Check, before any work, that a results file may be written at `path`; returns the path.

    As `check_output_dir`, for a single file: a folder there is refused, an existing file only replaced with
    `overwrite` and only if it is an earlier results file (a JSON object, as this tool writes).
    """
    inputs = list(inputs)
    target = _check_path(path, inputs, "output file")
    if target.is_dir():
        raise OutputExistsError(f"{path} is a folder: give a file path for the results.")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{path} exists: choose another file, or replace it with --overwrite.")
        if not _looks_like_results(target):
            raise OutputPathError(
                f"{path} is not an earlier results file of hf_rankprune (a small JSON object): --overwrite only "
                "replaces those. Choose another file name."
            )
    _check_creatable(target, "output file")
    return target


def _looks_like_results(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > _RESULTS_FILE_LIMIT:
            return False
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------
def _umask() -> int:
    """The process umask (read from /proc where it can be, so it is never changed even for a moment)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode('utf-8')):08x}"


def _temporary_prefix(name: str, kind: str) -> str:
    """`.<name>.<kind>-<host>-<pid>-`: the owner of a temporary can be told from its name."""
    return f".{name}.{kind}-{_host_tag()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden temporaries (`.<name>.tmp-*`, `.<name>.old-*`) that runs of this tool on this machine left
    beside `path` when they were killed; those of runs still alive are kept. Returns what was removed."""
    path = Path(path).absolute()
    if not path.parent.is_dir():
        return []
    removed = []
    host = _host_tag()
    for kind in ("tmp", "old"):
        for candidate in path.parent.glob(f".{glob.escape(path.name)}.{kind}-{host}-*-*"):
            pid_text = candidate.name[len(f".{path.name}.{kind}-{host}-") :].split("-", 1)[0]
            if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
                continue
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def atomic_output_dir(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable[str | os.PathLike | None] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces `path` in one rename.

    If the block raises (or the process is interrupted or terminated), `path` is untouched and the temporary folder is
    removed; after a hard kill it is left as a hidden `.<name>.tmp-<host>-<pid>-*` sibling that never looks like a
    finished output and that the next run writing `path` removes. The folder gets the marker file that lets
    `overwrite` replace it later, and the permissions the umask gives (like `save_pretrained`), not 0700. Runs that
    overlap never mix their files: the last to finish wins with its whole folder, and one without `overwrite` never
    replaces a folder that appeared meanwhile.
    """
    path = Path(os.path.abspath(check_output_dir(path, overwrite, inputs)))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    staging = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path.name, "tmp"), dir=path.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        yield staging
        (staging / OUTPUT_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
        _commit(staging, path, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit(staging: Path, path: Path, overwrite: bool) -> None:
    """Rename `staging` to `path`; an existing earlier output is moved aside first (with `overwrite`)."""
    try:
        os.rename(staging, path)  # succeeds when `path` is absent or an empty folder
        return
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    check_output_dir(path, overwrite)  # something appeared meanwhile: the same rules as before the work
    backup = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path.name, "old"), dir=path.parent))
    os.rename(path, backup / path.name)
    try:
        os.rename(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(backup / path.name, path)
        raise
    finally:
        if not (backup / path.name).exists() or path.exists():
            shutil.rmtree(backup, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`: readers never see half a file."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, staging = tempfile.mkstemp(prefix=_temporary_prefix(path.name, "tmp"), dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------------------------------
def shown(value: object, limit: int = 80) -> str:
    """A short repr of a value a user gave (recipe, config, file), for messages: never the whole of a huge or deeply
    nested value, and never a walk over all of it (reprlib stops after a few items and levels)."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxset, short.maxdict = 3, 6, 6, 6, 4
    short.maxstring = short.maxother = short.maxlong = limit
    try:
        text = short.repr(value)
    except Exception:  # a repr that fails is no reason to lose the message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
