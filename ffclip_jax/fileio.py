"""Atomic file writes: every output a user looks at is written to a temporary sibling, then renamed into place, so
an interrupted run never leaves a half-written file; whole directories likewise (`atomic_output_dir`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Callable, Iterator

from ffclip_jax.errors import CheckpointError


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """write(tmp) into a temporary sibling of `path` (same extension), then rename it over `path`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory,
                               suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str, obj, indent: int = 2) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=indent, sort_keys=True)
    atomic_write(path, write)


@contextlib.contextmanager
def atomic_output_dir(directory: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling directory; on success it replaces `directory`, on error it is removed, so no partial
    output is ever left at `directory`."""
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and not overwrite:
        raise CheckpointError(f"{directory}: already exists (pass --force to replace it)")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(directory):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=parent)
        os.rmdir(old)
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)
