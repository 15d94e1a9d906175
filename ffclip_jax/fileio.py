"""Atomic file writes: every output a user looks at is written to a temporary sibling, then renamed into place, so
an interrupted run never leaves a half-written file; whole directories likewise (`atomic_output_dir`). The temporaries are created with the modes any program's files
get (0666 / 0777 less the umask: 0644 / 0755 under umask 022), not tempfile's private 0600 / 0700."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from typing import Callable, Iterator

from ffclip_jax.errors import CheckpointError


def temp_sibling(path: str, directory: bool = False, suffix: str = "") -> str:
    """Create a new empty file (or directory) next to `path`, named `.<name>.tmp-<random><suffix>`, with the umask's
    mode; returns its path."""
    parent, name = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(parent, f".{name}.tmp-{secrets.token_hex(4)}{suffix}")
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """write(tmp) into a temporary sibling of `path` (same extension), then rename it over `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_sibling(path, suffix=os.path.splitext(path)[1])
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
    tmp = temp_sibling(directory, directory=True)  # 0777 less the umask, as the directory itself would be
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if os.path.exists(directory):
        old = temp_sibling(directory, directory=True)
        os.rmdir(old)
        os.rename(directory, old)
    os.rename(tmp, directory)
    if old:
        shutil.rmtree(old, ignore_errors=True)
