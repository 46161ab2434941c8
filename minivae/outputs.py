"""Output files: one writer per file, checked before any compute, no leftovers.

`claim(path, kind)` is held for the life of a run that writes `path`:
- the location is checked first (a folder that is a file, a read-only folder, a path that is a
  folder), so a mistake costs nothing;
- an existing file must be a minivae file of `kind` (a run never replaces a file it did not
  write: a results file is not a checkpoint, a PNG is neither);
- an exclusive lock (`flock` on a hidden `.NAME.lock` beside the file) keeps a second run off
  the same file; the OS drops it when its holder dies, so a killed run never blocks the next;
- temp files of a killed run (`.NAME.tmp-*`, see io.atomic_path) are removed.
Claims are re-entrant within a process: `gaps` claims its results file once and each of its
stages claims it again.
"""
import contextlib
import errno
import fcntl
import glob
import json
import os
import socket
import sys
import time

import h5py

from .errors import MinivaeError

_held = {}          # realpath -> [lock fd, depth]


class OutputError(MinivaeError):
    """An output path that cannot be written, is another kind of file, or is in use."""


def sidecar(path, tag):
    """The hidden file `.NAME.<tag>` beside `path` (lock, temp prefixes)."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{tag}")


def check_location(path):
    """One line if `path` cannot be written: its folder is missing and cannot be made, is not a
    folder, or is not writable, or `path` itself is a folder."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise OutputError(f"output {path} is a folder: pass a file name")
    folder = os.path.dirname(path)
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputError(f"cannot write {path}: {probe} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(sidecar(path, f"probe-{os.getpid()}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.remove(sidecar(path, f"probe-{os.getpid()}"))
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e} (choose another --out)") from None


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_kind(path, kind):
    """An existing `path` must be a minivae HDF5 file of `kind` (attribute "kind"), or for
    kind "png" a PNG image."""
    if not os.path.exists(path):
        return
    if kind == "png":
        with open(path, "rb") as f:
            if f.read(8) != PNG_MAGIC:
                raise OutputError(f"{path} exists and is not a PNG image: minivae will not replace it; "
                                  "choose another --out or move it away")
        return
    try:
        with h5py.File(path, "r") as f:
            found = f.attrs.get("kind")
    except OSError:
        found = None
    if found != kind:
        what = kind.replace("minivae-", "minivae ")
        raise OutputError(f"{path} exists and is not a {what} file: minivae will not replace it; "
                          "choose another --out or move it away")


def _describe_holder(lock_path):
    try:
        with open(lock_path) as f:
            h = json.load(f)
        return f"pid {h['pid']} on {h['host']} since {h['since']} ({h['command']})"
    except (OSError, ValueError, KeyError):
        return "another process"


def _lock(path):
    """Take the exclusive lock of `path`; an OutputError naming the holder if it is taken."""
    lock_path = sidecar(path, "lock")
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{path} is in use by {_describe_holder(lock_path)}: wait for it to "
                                  "finish, or choose another --out") from None
            raise
        try:                                   # the file we locked may have been unlinked meanwhile
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder = dict(pid=os.getpid(), host=socket.gethostname(), since=time.strftime("%Y-%m-%d %H:%M:%S"),
                  command=" ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200])
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    return fd, lock_path


def remove_leftovers(path):
    """Delete temp files that a killed run left beside `path` (call with the lock held)."""
    for tmp in glob.glob(glob.escape(sidecar(path, "tmp-")) + "*"):
        with contextlib.suppress(OSError):
            os.remove(tmp)


@contextlib.contextmanager
def claim(path, kind):
    """Hold `path` for writing (see the module docstring); re-entrant within a process."""
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    check_location(path)
    fd, lock_path = _lock(path)
    _held[key] = [fd, 1]
    try:
        check_kind(path, kind)
        remove_leftovers(path)
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            os.remove(lock_path)
        os.close(fd)


def held(path):
    """True while this process holds a claim on `path`."""
    return os.path.realpath(path) in _held
