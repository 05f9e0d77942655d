"""Files a task declares it reads (``files_in``) or writes (``files_out``): glob patterns
expanded under the task's cwd and each file's content hashed (SHA-256).

I/O only; what the hashes mean (a cache key, an output still intact) is decided in
:mod:`domain.cache`.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable

_CHUNK = 1 << 20


def expand(cwd: str, patterns: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``({pattern: [file, ...]}, [pattern that matched nothing, ...])``: the files each
    pattern matches under ``cwd`` (paths relative to it, sorted; a matched directory stands for
    every file below it; ``**`` crosses directories)."""
    matched: dict[str, list[str]] = {}
    empty: list[str] = []
    for pattern in patterns:
        files: set[str] = set()
        for found in glob.glob(pattern, root_dir=cwd, recursive=True):
            full = os.path.join(cwd, found)
            if os.path.isdir(full):
                for top, _dirs, names in os.walk(full):
                    files.update(os.path.relpath(os.path.join(top, name), cwd) for name in names)
            elif os.path.isfile(full):
                files.add(os.path.normpath(found))
        if files:
            matched[pattern] = sorted(files)
        else:
            empty.append(pattern)
    return matched, empty


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(cwd: str, patterns: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``({relative path: sha256}, [pattern that matched nothing, ...])`` for ``patterns``
    under ``cwd``; a file that vanishes or cannot be read is hashed as ``"unreadable"`` (so it
    never matches a recorded hash)."""
    matched, empty = expand(cwd, patterns)
    hashes: dict[str, str] = {}
    for files in matched.values():
        for name in files:
            if name not in hashes:
                try:
                    hashes[name] = sha256_file(os.path.join(cwd, name))
                except OSError:
                    hashes[name] = "unreadable"
    return dict(sorted(hashes.items())), empty
