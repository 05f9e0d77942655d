"""Files a task declares it reads (``files_in``) or writes (``files_out``): glob patterns
expanded under the task's cwd and each file's content hashed (SHA-256).

I/O only; what the hashes mean (a cache key, an output still intact) is decided in
:mod:`domain.cache`.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterable

_CHUNK = 1 << 20
# A file's hash is remembered with its stat signature (device, inode, size, mtime, ctime) and
# reused while the signature holds -- many tasks read the same sources, and a task's files_in
# are hashed again as it ends. Only for files settled this long: a write within the clock's
# granularity could keep mtime (git's "racy clean" problem), and ctime cannot be set back.
_SETTLED_NS = 2_000_000_000
_REMEMBERED_MAX = 200_000
_remembered: dict[str, tuple[tuple[int, int, int, int, int], str]] = {}


def expand(cwd: str, patterns: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """``({pattern: [file, ...]}, [pattern that matched nothing, ...])``: the files each
    pattern matches under ``cwd`` (paths relative to it, sorted; a matched directory stands for
    every file below it; ``**`` crosses directories, each once). Only regular files (or links to them) count: a FIFO, socket
    or device has no content to hash, and opening one may block forever."""
    matched: dict[str, list[str]] = {}
    empty: list[str] = []
    for pattern in patterns:
        files: set[str] = set()
        found_paths = _recursive(cwd, pattern) if "**" in pattern.split("/") else glob.glob(pattern, root_dir=cwd)
        for found in found_paths:
            full = os.path.join(cwd, found)
            if os.path.isdir(full):
                for top, _dirs, names in os.walk(full):
                    files.update(os.path.relpath(os.path.join(top, name), cwd) for name in names
                                 if os.path.isfile(os.path.join(top, name)))
            elif os.path.isfile(full):
                files.add(os.path.normpath(found))
        if files:
            matched[pattern] = sorted(files)
        else:
            empty.append(pattern)
    return matched, empty


def _recursive(cwd: str, pattern: str) -> list[str]:
    """What a pattern with a ``**`` part matches under ``cwd``, as ``glob.glob(recursive=True)``
    would (hidden names only by a part starting with ``.``; ``**`` matches none of them), links
    to directories followed — but each directory entered once, so links that loop (to ``.``, to
    a parent) cannot make it endless: ``glob`` follows two links to ``.`` 2⁴⁰ times."""
    parts = [part for part in pattern.split("/") if part]
    fixed = 0
    while fixed < len(parts) and not _MAGIC.search(parts[fixed]):
        fixed += 1
    base = ("/" if pattern.startswith("/") else "") + "/".join(parts[:fixed])
    rest = parts[fixed:]
    root = os.path.join(cwd, base) if base else cwd
    if not os.path.isdir(root):
        return []
    found = [base] if base and _matches([], rest) else []
    entered = {os.path.realpath(root)}
    for top, dirs, names in os.walk(root, followlinks=True):
        relative = os.path.relpath(top, root)
        prefix = [] if relative == "." else relative.split(os.sep)
        # Real directories before links, each name once: the same tree is walked the same way.
        dirs.sort(key=lambda name: (os.path.islink(os.path.join(top, name)), name))
        kept = []
        for name in dirs:
            real = os.path.realpath(os.path.join(top, name))
            if real not in entered:
                entered.add(real)
                kept.append(name)
        dirs[:] = kept
        for name in (*dirs, *names):
            if _matches([*prefix, name], rest):
                found.append(os.path.join(base, *prefix, name))
    return found


_MAGIC = re.compile(r"[*?[]")


def _matches(names: list[str], parts: list[str]) -> bool:
    """Whether the path ``names`` (its parts) matches the pattern ``parts``."""
    if not parts:
        return not names
    if parts[0] == "**":
        if _matches(names, parts[1:]):
            return True
        return bool(names) and not names[0].startswith(".") and _matches(names[1:], parts)
    if not names or (names[0].startswith(".") and not parts[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], parts[0]) and _matches(names[1:], parts[1:])


def sha256_file(path: str) -> str:
    """The SHA-256 of the regular file ``path``'s content; read again only when its stat
    signature changed since it was last read (or it had changed just before). Raises OSError
    for anything but a regular file: it is opened without blocking, so a FIFO put in the file's
    place cannot hang the caller."""
    path = os.path.abspath(path)
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        known = _remembered.get(path)
        if known is not None and known[0] == signature:
            return known[1]
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    hexdigest = digest.hexdigest()
    if time.time_ns() - max(info.st_mtime_ns, info.st_ctime_ns) > _SETTLED_NS:
        if len(_remembered) >= _REMEMBERED_MAX:
            _remembered.clear()
        _remembered[path] = (signature, hexdigest)
    return hexdigest


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
