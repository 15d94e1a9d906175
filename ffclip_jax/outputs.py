"""Output folders of the tools that write many files (edit, align): file names made from user text, and a run folder
that lists the files of each run in a manifest, so that a re-run never leaves a previous run's files beside its own.

The rule: the folder may be new, empty, or hold a previous run of an ffclip tool (its manifest `ffclip-run.json`, or
the `.ffclip-run.partial` list an interrupted run leaves). A previous run is replaced only with --overwrite, and then
exactly the files its manifest lists are removed, nothing else. A folder holding other files is refused; with
--overwrite the run is written beside them (none is removed). A path that is a file is refused. The manifest lists
every file the run wrote; the partial list grows before each file is written, so even a killed run's files are known.

    out = RunFolder("out/", "edit", overwrite=args.overwrite)    # checks only
    out.begin()                                                   # removes the previous run's files
    out.save_png("a__Bald__1.png", image); out.commit(prompts=[...])
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence

from ffclip_jax.errors import InputError
from ffclip_jax.fileio import atomic_write, write_json_atomic
from ffclip_jax.grid import save_png as write_png

MANIFEST = "ffclip-run.json"
PARTIAL = ".ffclip-run.partial"
FORMAT = "ffclip-jax run"


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name fragment of `text`: runs of characters other than letters, digits, '.', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_.")[:limit] or "x"


def unique_names(texts: Sequence[str]) -> List[str]:
    """safe_name of each text, with _2, _3, ... appended to repeats."""
    seen: Dict[str, int] = {}
    out = []
    for t in texts:
        name = safe_name(t)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _plain(name: str) -> bool:
    """A bare file name inside the folder (never a path out of it)."""
    return bool(name) and name not in (".", "..") and os.path.basename(name) == name and "/" not in name


class RunFolder:
    """The output folder of one tool run (see the module docstring); `option` names the flag in messages."""

    def __init__(self, path: str, tool: str, *, overwrite: bool = False, option: str = "--output"):
        self.root, self.tool, self.files = os.path.abspath(path), tool, []
        where = f"{option} {path}"
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise InputError(f"{where}: is a file, expected a folder (new, empty or a previous run's)")
        self.previous = self._previous_files(where)
        entries = os.listdir(self.root) if os.path.isdir(self.root) else []
        mine = set(self.previous or ()) | {MANIFEST, PARTIAL}
        others = [e for e in entries if e not in mine]
        if self.previous is not None and not overwrite:
            raise InputError(f"{where}: holds a previous run ({len(self.previous)} files listed in its {MANIFEST}); "
                             f"pass --overwrite to replace them, or choose another folder")
        if others and not overwrite:
            raise InputError(f"{where}: holds {len(others)} file(s) of no ffclip run (e.g. {sorted(others)[0]}); "
                             f"choose a new or empty folder, or pass --overwrite to write beside them")

    def _previous_files(self, where: str) -> Optional[List[str]]:
        """The files a previous run listed (its manifest and any partial list), or None without one."""
        manifest, partial = (os.path.join(self.root, f) for f in (MANIFEST, PARTIAL))
        if not (os.path.isfile(manifest) or os.path.isfile(partial)):
            return None
        files: List[str] = []
        try:
            if os.path.isfile(manifest):
                with open(manifest, encoding="utf-8") as f:
                    files += json.load(f)["files"]
            if os.path.isfile(partial):
                with open(partial, encoding="utf-8") as f:
                    files += [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{where}: unreadable run manifest ({type(e).__name__}: {e}); remove {MANIFEST} and "
                             f"{PARTIAL} or choose another folder") from None
        if not all(isinstance(f, str) and _plain(f) for f in files):
            raise InputError(f"{where}: its run manifest names files outside the folder; remove {MANIFEST} and "
                             f"{PARTIAL} or choose another folder")
        return list(dict.fromkeys(files))

    def begin(self) -> None:
        """Create the folder and remove exactly the previous run's files (call when the run is about to write)."""
        os.makedirs(self.root, exist_ok=True)
        for name in (self.previous or []) + [MANIFEST, PARTIAL]:
            path = os.path.join(self.root, name)
            if os.path.isfile(path):
                os.remove(path)
        self.previous = None

    def path(self, name: str) -> str:
        """The path of `name` in the folder, listed in the partial manifest before the caller writes it."""
        if not _plain(name) or name in (MANIFEST, PARTIAL):
            raise InputError(f"{name!r}: not a plain file name for the output folder")
        if name not in self.files:
            with open(os.path.join(self.root, PARTIAL), "a", encoding="utf-8") as f:
                f.write(json.dumps(name) + "\n")
            self.files.append(name)
        return os.path.join(self.root, name)

    def save_png(self, name: str, image) -> str:
        """`grid.save_png` of one (H, W, 3) image into the folder; returns its path."""
        return write_png(self.path(name), image)

    def write(self, name: str, write: Callable[[str], None]) -> str:
        """`fileio.atomic_write` of one file into the folder; returns its path."""
        path = self.path(name)
        atomic_write(path, write)
        return path

    def write_json(self, name: str, obj) -> str:
        """`fileio.write_json_atomic` of one file into the folder; returns its path."""
        path = self.path(name)
        write_json_atomic(path, obj)
        return path

    def commit(self, **fields) -> str:
        """Write the manifest (tool, files in the order written, `fields`) and drop the partial list."""
        path = os.path.join(self.root, MANIFEST)
        write_json_atomic(path, {"format": FORMAT, "tool": self.tool, "files": self.files, **fields})
        partial = os.path.join(self.root, PARTIAL)
        if os.path.isfile(partial):
            os.remove(partial)
        return path
