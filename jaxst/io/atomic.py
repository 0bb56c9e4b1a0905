"""Writing one output file atomically, and only where a regular file belongs: the one place every jaxst file
writer (``encode(output_path=)`` / ``jaxst encode -o``, ``EmbeddingIndex.save``, the sparse CLI ``.npz``) goes
through, so that no output is half-written, lost, littered or written over something that is not a file.

Why each rule:

* **What may be replaced.** ``os.replace`` swaps whatever the name points at: a FIFO, a device node
  (``-o /dev/null`` as root) or a socket would silently become a regular file, and a symlink would stop
  being one. So the target is resolved first: symlinks are followed to their final target, which must be a
  regular file or a new name in an existing directory; that target is what gets replaced, and the symlink
  stays a symlink pointing at the new content. A directory, FIFO, character or block device or socket is
  refused (``NotRegularFileError``, an ``OSError``; ``IsADirectoryError`` for a directory) with the path and
  what it is. A *dangling* symlink (or a loop) is refused too: writing through it would create a file
  wherever the link happens to point, which is rarely what was meant; remove the link or create its target.
  The check runs when the writer opens (before any work) and again just before the rename.
* **Atomic.** Bytes go to a hidden temp file beside the final target (same file system, so ``os.replace``
  is atomic), are flushed and fsynced, get the permissions a new file gets under the umask (not
  ``mkstemp``'s 0600), and are renamed over the target; the directory is fsynced after. An exception removes
  the temp file and leaves the target as it was.
* **No litter.** Temp names carry the target's name and the writer's pid:
  ``.{name}.{pid}.{random}.jaxst.tmp``. On SIGTERM, a handler installed while temp files exist (only from
  the main thread, and only over the default action) removes them (and ``temp_folder``'s folders), restores
  the default action and re-sends SIGTERM, so the process still dies "killed by SIGTERM". Where SIGTERM
  already had a Python handler, that handler is left alone (if it raises, as most do, the writers' exception
  path removes the temp files); where it was ignored, nothing changes. A Python handler runs between
  bytecodes, so while ours is installed a SIGTERM waits for a long native call (a compiled step) to return.
  SIGKILL cannot be caught: the next writer of the same target removes temp files of that target whose pid
  is no longer alive (``os.kill(pid, 0)`` raises ``ProcessLookupError``), never those of a live process. The
  pid test is local: a writer of the same target in another pid namespace or on another host sharing the
  folder looks dead; don't write one output from two machines.
  ``jaxst.io.export.atomic_folder`` (saving a model folder) names and cleans its temp folder the same way
  through ``temp_folder``; the previous model folder it moves aside during the final swap is *not* swept:
  after a kill at that instant it is the only copy of that model.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import tempfile
import threading

from jaxst.io.fsync import fsync_path

SUFFIX = ".jaxst.tmp"


class NotRegularFileError(OSError):
    """An output path names something other than a regular file, a new path or a symlink to one of those."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISLNK, "a symlink that does not resolve (a loop)"))


def _refuse(path: str, target: str, what: str) -> OSError:
    where = path if target == os.path.abspath(path) else f"{path} (-> {target})"
    message = f"{where} is {what}; jaxst writes outputs only to regular files or new paths"
    cls = IsADirectoryError if what == "a directory" else NotRegularFileError
    return cls(errno.EISDIR if cls is IsADirectoryError else errno.EINVAL, message, path)


def resolve_target(path: str | os.PathLike) -> str:
    """The absolute path of the regular file (existing or new) that writing ``path`` replaces, symlinks
    followed; a directory, FIFO, device, socket, dangling symlink or missing parent directory is an OSError
    naming ``path`` and what is there."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise FileNotFoundError(errno.ENOENT, "the output path is empty", path)
    target = os.path.realpath(path)
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        if os.path.islink(path):
            raise NotRegularFileError(errno.ENOENT, f"{path} is a symlink to {target}, which does not exist; jaxst "
                                      "does not write through a dangling symlink (remove it or create its target)",
                                      path) from None
        parent = os.path.dirname(target)
        if not os.path.isdir(parent):
            raise FileNotFoundError(errno.ENOENT, f"the directory {parent} of {path} does not exist", path) from None
        return target
    if stat.S_ISREG(st.st_mode):
        return target
    what = next((kind for test, kind in _KINDS if test(st.st_mode)), f"not a regular file (mode {st.st_mode:o})")
    raise _refuse(path, target, what)


# ------------------------------------------------------------------------------------------ temp files


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, it is someone else's
        return True
    return True


def sweep(target: str) -> list[str]:
    """Remove the temp files of ``target`` (an absolute path) left by writers that are no longer alive;
    returns the paths removed."""
    folder, name = os.path.split(target)
    prefix = f".{name}."
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(SUFFIX)):
            continue
        parts = entry[len(prefix) : -len(SUFFIX)].split(".")
        if len(parts) != 2 or not parts[0].isdigit():  # pid.random: the temp of a longer name does not match
            continue
        pid = int(parts[0])
        if pid == os.getpid() or _alive(pid):
            continue
        path = os.path.join(folder, entry)
        try:
            _remove(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _remove(path: str) -> None:
    """Remove a temp file or temp folder (never following a symlink)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    elif stat.S_ISREG(mode):
        os.unlink(path)


def umask() -> int:
    """The process's umask (what a new file's or folder's permissions are masked with)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


_live: dict[str, None] = {}  # temp files of this process, removed on SIGTERM
_previous = None  # the SIGTERM handler ours replaced, while ours is installed


def _on_sigterm(signum, frame) -> None:
    for path in list(_live):
        try:
            _remove(path)
        except OSError:
            pass
    _live.clear()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # die of the signal, as without us


def _register(path: str) -> None:
    global _previous
    _live[path] = None
    if _previous is None and threading.current_thread() is threading.main_thread():
        try:
            current = signal.getsignal(signal.SIGTERM)
            if current == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
                _previous = current
        except (ValueError, OSError):  # not the main interpreter, or no SIGTERM here
            pass


def _unregister(path: str) -> None:
    global _previous
    _live.pop(path, None)
    if not _live and _previous is not None and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # else someone chained over it: leave theirs
            signal.signal(signal.SIGTERM, _previous)
        _previous = None


class AtomicFile:
    """A binary temp file beside ``path``'s final target; ``commit`` renames it over the target.

        with AtomicFile("out.bin") as f:
            f.file.write(data)
            f.commit()
        # leaving the block without commit() (an exception) removes the temp file

    ``tmp_path`` is the temp file's name (to read back what was written before committing)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.target = resolve_target(self.path)
        sweep(self.target)
        folder, name = os.path.split(self.target)
        fd, self.tmp_path = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=SUFFIX, dir=folder)
        _register(self.tmp_path)
        self.file = os.fdopen(fd, "wb")
        self._done = False

    def commit(self) -> None:
        """Flush to disk, check the target again, and rename the temp file over it."""
        if self._done:
            raise ValueError(f"the write to {self.path} was already committed or aborted")
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.tmp_path, 0o666 & ~umask())  # what open() would have given a new file
            if resolve_target(self.path) != self.target:  # the link was changed while we wrote
                raise OSError(errno.EAGAIN, f"{self.path} changed while it was written; nothing was replaced",
                              self.path)
            os.replace(self.tmp_path, self.target)
            self._done = True
            _unregister(self.tmp_path)
        except BaseException:
            self.abort()
            raise
        fsync_path(os.path.dirname(self.target))

    def abort(self) -> None:
        """Drop the temp file; the target is left as it was. A no-op after ``commit``."""
        if self._done:
            return
        self._done = True
        self.file.close()
        try:
            os.unlink(self.tmp_path)
        except FileNotFoundError:
            pass
        _unregister(self.tmp_path)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()


def temp_folder(target: str) -> str:
    """A new empty folder beside ``target`` (an absolute path), named, swept and removed on SIGTERM like
    ``AtomicFile``'s temp files (mode 0700 until the caller sets one); ``release`` it once renamed or removed."""
    sweep(target)
    folder, name = os.path.split(target)
    path = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=SUFFIX, dir=folder)
    _register(path)
    return path


def release(path: str) -> None:
    """Stop watching a ``temp_folder`` for SIGTERM (after it was renamed into place or removed)."""
    _unregister(path)


__all__ = ["SUFFIX", "AtomicFile", "NotRegularFileError", "release", "resolve_target", "sweep", "temp_folder",
           "umask"]
