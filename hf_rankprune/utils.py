"""Small shared helpers: output folders that appear whole or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    """The output folder exists and holds files; nothing is overwritten unless asked."""


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing non-empty folder (or a file) at `path` unless `overwrite`; returns the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder: choose another output path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path} exists and is not empty: choose another folder, or replace it with overwrite=True (--overwrite on the command line).")
    return path


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces `path` in one rename.

    If the block raises (or the process dies), `path` is untouched and the temporary folder is removed (or, after a
    crash, left as a hidden `.<name>.tmp-*` sibling that never looks like a finished output).
    """
    path = check_output_dir(path, overwrite).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if path.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, backup / path.name)
    os.replace(staging, path)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def check_output_file(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing file at `path` unless `overwrite`, and a folder there always; returns the path."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder: give a file path for the results.")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists: choose another file, or replace it with --overwrite.")
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temporary sibling, then rename it over `path`: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
