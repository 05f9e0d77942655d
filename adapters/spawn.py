"""Start a tool's process with one call into libc: ``posix_spawn`` (glibc >= 2.34).

Why not :class:`subprocess.Popen`: in a process whose other threads are busy, each of the
dozen or so system calls Popen makes between fork and exec releases the GIL and must win it
back, waiting up to a switch interval each time; measured here with one busy thread beside it,
Popen managed ~100 spawns a second, ``posix_spawn`` ~800. glibc's ``posix_spawn`` uses
``clone(CLONE_VM|CLONE_VFORK)``, so its cost does not grow with the runtime's memory, and the
whole start (fds, session, cwd, exec) is one foreign call made without the GIL.

The child gets: stdin from /dev/null, stdout and stderr on the given log fd, a new session
(so its own process group), every signal at its default disposition and none blocked (the
runtime ignores SIGPIPE, and ignored signals survive exec), the given cwd, and no other fd.

Linux with glibc only, like the rest of :mod:`adapters.process`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from collections.abc import Sequence

_libc = ctypes.CDLL(None, use_errno=True)
_posix_spawn = _libc.posix_spawn
_fa_init = _libc.posix_spawn_file_actions_init
_fa_destroy = _libc.posix_spawn_file_actions_destroy
_fa_adddup2 = _libc.posix_spawn_file_actions_adddup2
_fa_addopen = _libc.posix_spawn_file_actions_addopen
_fa_addchdir = _libc.posix_spawn_file_actions_addchdir_np
_fa_addclosefrom = _libc.posix_spawn_file_actions_addclosefrom_np
_attr_init = _libc.posix_spawnattr_init
_attr_setflags = _libc.posix_spawnattr_setflags
_attr_setsigmask = _libc.posix_spawnattr_setsigmask
_attr_setsigdefault = _libc.posix_spawnattr_setsigdefault
_sigemptyset = _libc.sigemptyset
_sigfillset = _libc.sigfillset
for _function in (_fa_adddup2, _fa_addopen, _fa_addchdir, _fa_addclosefrom, _attr_setflags):
    _function.restype = ctypes.c_int
_fa_addopen.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
_fa_addchdir.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_attr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]

# <spawn.h> (glibc): reset the listed signals to default, set the mask, start a new session.
_POSIX_SPAWN_SETSIGDEF = 0x04
_POSIX_SPAWN_SETSIGMASK = 0x08
_POSIX_SPAWN_SETSID = 0x80
# glibc's posix_spawn_file_actions_t is 80 bytes, posix_spawnattr_t 336, sigset_t 128: room to spare.
_OPAQUE_BYTES = 1024

_DEV_NULL = b"/dev/null"


def _sigsets() -> tuple[ctypes.Array[ctypes.c_char], ctypes.Array[ctypes.c_char]]:
    empty = ctypes.create_string_buffer(_OPAQUE_BYTES)
    full = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _sigemptyset(empty)
    _sigfillset(full)
    return empty, full


# Built once: the spawn path is hot, and these never change.
_NO_SIGNALS_BLOCKED, _ALL_SIGNALS = _sigsets()
_ATTR = ctypes.create_string_buffer(_OPAQUE_BYTES)
_attr_init(_ATTR)
_attr_setflags(_ATTR, _POSIX_SPAWN_SETSID | _POSIX_SPAWN_SETSIGMASK | _POSIX_SPAWN_SETSIGDEF)
_attr_setsigmask(_ATTR, _NO_SIGNALS_BLOCKED)
# SIGKILL and SIGSTOP cannot be reset and glibc skips them; every other one goes back to default.
_attr_setsigdefault(_ATTR, _ALL_SIGNALS)


def _c_string(value: str) -> bytes:
    """``value`` encoded for C, which would silently cut it at a NUL: refused instead."""
    encoded = os.fsencode(value)
    if b"\0" in encoded:
        raise ValueError("embedded null byte")
    return encoded


def _c_strings(values: Sequence[str]) -> ctypes.Array[ctypes.c_char_p]:
    encoded = [_c_string(value) for value in values]
    array = (ctypes.c_char_p * (len(values) + 1))()
    array[: len(values)] = encoded
    return array


def env_path(env: Sequence[tuple[str, str]]) -> str:
    """The ``PATH`` of the environment ``env`` (pairs, as a ProcessSpec holds them)."""
    return next((value for key, value in env if key == "PATH"), os.defpath)


def _resolve(name: str, env: Sequence[tuple[str, str]]) -> str:
    """The file ``name`` names, searched on the *task's* ``PATH`` as :class:`subprocess.Popen`
    does when given an environment. Raises FileNotFoundError naming ``name``."""
    if "/" in name:
        return name
    found = shutil.which(name, path=env_path(env))
    if found is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)
    return found


def spawn(
    argv: Sequence[str], cwd: str, env: Sequence[tuple[str, str]], log_fd: int, pass_fds: Sequence[int] = ()
) -> int:
    """Start ``argv`` (its first item searched on ``env``'s PATH unless it holds a ``/``) in
    ``cwd`` with exactly ``env``, in a new session, output to ``log_fd``, and ``pass_fds`` open
    under their own numbers; return its pid. The caller keeps and closes its descriptors.
    Raises OSError (naming the cwd or the executable) when it cannot start."""
    path = _c_string(_resolve(argv[0], env))
    actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _fa_init(actions)
    try:
        failed = (_fa_addopen(actions, 0, _DEV_NULL, os.O_RDONLY, 0) or _fa_adddup2(actions, log_fd, 1)
                  or _fa_adddup2(actions, log_fd, 2) or _fa_addchdir(actions, _c_string(cwd)))
        # dup2 of a descriptor onto itself clears its close-on-exec flag (POSIX 2017, glibc 2.29).
        for fd in pass_fds:
            failed = failed or _fa_adddup2(actions, fd, fd)
        # Above the passed ones nothing survives; below them, every descriptor this process
        # opens is close-on-exec (Python's default, and SQLite's and pidfd_open's).
        failed = failed or _fa_addclosefrom(actions, max((3, *(fd + 1 for fd in pass_fds))))
        if failed:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        pid = ctypes.c_int()
        failed = _posix_spawn(
            ctypes.byref(pid), path, actions, _ATTR,
            _c_strings(argv),
            _c_strings([f"{key}={value}" for key, value in env]),
        )
    finally:
        _fa_destroy(actions)
    if failed:
        # The child failed before exec: a missing cwd or a file it could not execute.
        culprit = cwd if failed in (errno.ENOENT, errno.ENOTDIR, errno.EACCES) and not os.path.isdir(cwd) else argv[0]
        raise OSError(failed, os.strerror(failed), culprit)
    return pid.value

