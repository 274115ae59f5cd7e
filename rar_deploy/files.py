"""Outputs that never lose data.

Every output is written under a temporary name beside its target and swapped in complete. An existing
target is replaced only with `--force`, and only when it is something rar-deploy wrote itself (an
`Output.owned` test); an output never is, contains or lies inside one of the command's inputs. A lock
beside the target makes a second writer fail at once; leftovers of a killed run are removed (or an
interrupted replacement restored) by the next run for the same target. A directory replaces another by
an atomic exchange (Linux renameat2), so the target is always a complete old or a complete new output.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .errors import RARDeployError

# What a killed run leaves beside a target: its temporary output, or (where no atomic exchange exists)
# the old output moved aside during a replacement.
_PARTIAL = ".partial"
_ASIDE = ".replaced"


def never(path: Path) -> bool:
    return False


@dataclass(frozen=True)
class Output:
    """A path a command writes: what may be replaced there, and the inputs it must keep away from."""

    path: Path
    option: str = "--out"  # how the user named it, for messages
    force: bool = False
    owned: Callable[[Path], bool] = never  # was an existing `path` written by rar-deploy itself?
    owner: str = "rar-deploy"  # the tool whose outputs `owned` recognises, for messages
    inputs: tuple[Path, ...] = ()

    def check(self) -> None:
        """Everything that can be known before the work starts; raises RARDeployError."""
        check_not_input(self.path, self.inputs, self.option)
        if _is_empty_target(self.path):
            _check_writable(self.path)
            return
        if not self.force:
            raise RARDeployError(f"{self.option} {self.path} exists{' and is not empty' if self.path.is_dir() else ''}:"
                                 f" choose another {self.option} or pass --force")
        if not self.owned(self.path):
            raise RARDeployError(f"{self.option} {self.path} was not written by {self.owner}: --force replaces only "
                                 f"{self.owner}'s own outputs; remove it yourself or choose another {self.option}")


def check_not_input(path: Path, inputs: Iterable[Path], option: str = "--out") -> None:
    """Refuse an output that is, contains, or lies inside one of the inputs."""
    target = Path(path).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source:
            raise RARDeployError(f"{option} {path} is an input of this command ({given}): choose another {option}")
        if source.is_relative_to(target):
            raise RARDeployError(f"{option} {path} contains the input {given}: choose another {option}")
        if target.is_relative_to(source):
            raise RARDeployError(f"{option} {path} lies inside the input {given}: choose another {option}")


def _is_empty_target(path: Path) -> bool:
    return not os.path.lexists(path) or (path.is_dir() and not path.is_symlink() and not any(path.iterdir()))


def _check_writable(path: Path) -> None:
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RARDeployError(f"cannot write to {path.parent}: {ancestor} is not a writable folder")


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `path`; a second writer fails at once, naming the holder."""
    lock = path.parent / f".{path.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RARDeployError(f"cannot write to {path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RARDeployError(f"{path} is being written by another process{f' (pid {holder})' if holder else ''}: "
                                 "wait for it to finish or choose another output") from None
        # The holder we waited on may have removed the lock file: retry unless we locked the one at `lock`.
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _leftovers(path: Path, suffix: str) -> list[Path]:
    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}" + re.escape(suffix))
    with contextlib.suppress(OSError):
        return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover_leftovers(path: Path, report: Callable[[str], None]) -> None:
    """Under the lock: restore an output moved aside by an interrupted replacement, remove the rest."""
    for aside in reversed(_leftovers(path, _ASIDE)):
        if not os.path.lexists(path):
            os.rename(aside, path)
            report(f"restored {path} from an interrupted replacement")
        else:
            _remove(aside)
    for partial in _leftovers(path, _PARTIAL):
        _remove(partial)
        report(f"removed {partial.name}, left by an interrupted run")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@contextlib.contextmanager
def atomic_directory(output: Output, report: Callable[[str], None] = _stderr) -> Iterator[Path]:
    """Yield an empty temporary folder beside `output.path`; it becomes the output only if the block succeeds.

    The lock is held for the whole block, so enter it before the heavy work.
    """
    path = output.path
    output.check()
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path):
        recover_leftovers(path, report)
        output.check()
        tmp = _temporary(path, tempfile.mkdtemp)
        try:
            yield tmp
            _publish(tmp, output)
        finally:
            _remove(tmp)


@contextlib.contextmanager
def atomic_file(output: Output | Path, report: Callable[[str], None] = _stderr) -> Iterator[Path]:
    """Yield a temporary path beside the target; it becomes the target only if the block succeeds.

    A bare Path is a file rar-deploy may replace (inside its own temporary folders, for example).
    """
    if not isinstance(output, Output):
        output = Output(Path(output), force=True, owned=lambda p: True)
    path = output.path
    output.check()
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path):
        recover_leftovers(path, report)
        output.check()
        tmp = _temporary(path, tempfile.mkstemp)
        try:
            yield tmp
            _publish(tmp, output)
        finally:
            _remove(tmp)


def _temporary(path: Path, make: Callable) -> Path:
    try:
        made = make(prefix=f".{path.name}.", suffix=_PARTIAL, dir=path.parent)
    except OSError as exc:
        raise RARDeployError(f"cannot write to {path.parent}: {exc.strerror}") from None
    if isinstance(made, tuple):  # mkstemp: (fd, name)
        os.close(made[0])
        made = made[1]
    os.chmod(made, (0o777 if os.path.isdir(made) else 0o666) & ~_umask())  # mkstemp/mkdtemp use 0600/0700
    return Path(made)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, output: Output) -> None:
    """Move the complete `tmp` to `output.path`, re-checking what is there now (it may have changed)."""
    path = output.path
    if _is_empty_target(path):
        try:
            if tmp.is_dir():
                os.rename(tmp, path)  # replaces an empty folder only; fails on anything else
            else:
                _link_or_rename(tmp, path)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise RARDeployError(f"cannot write {path}: {exc.strerror}") from None
            # something appeared at `path` meanwhile: judge it below
    if not (output.force and output.owned(path)):
        raise RARDeployError(f"{path} appeared while this command ran and was left untouched; nothing was written: "
                             f"choose another {output.option}" + ("" if output.force else " or pass --force"))
    if not tmp.is_dir():
        os.replace(tmp, path)
        return
    if _exchange(tmp, path):
        if not output.owned(tmp):  # what we swapped out changed under us: put it back
            _exchange(tmp, path)
            raise RARDeployError(f"{path} changed while this command ran and was left untouched; nothing was written")
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_ASIDE, dir=path.parent))
    os.rename(path, aside)  # a folder renamed over an empty folder replaces it
    os.rename(tmp, path)
    _remove(aside)


def _link_or_rename(tmp: Path, path: Path) -> None:
    """Give `tmp` the name `path` without ever replacing a file there (a hard link fails on one)."""
    try:
        os.link(tmp, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):  # no hard links on this file system
            raise
        os.rename(tmp, path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the OS or file system cannot."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), str(b))
