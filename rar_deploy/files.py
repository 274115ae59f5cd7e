"""Outputs that never lose data.

Every output is written under a temporary name beside its target and swapped in complete. An existing
target is replaced only with `--force`, only when rar-deploy wrote it (`Output.written` recognises it and
lists the files it wrote there), and never when it holds anything else: a file a user added to an earlier
output is named and the command refuses. An output never is, contains or lies inside one of the command's
inputs. A path given through a symbolic link (or as `.`) names its target: the target is replaced, the link
is kept. A lock beside the target makes a second writer fail at once; leftovers of a killed run are removed
(or an interrupted replacement restored) by the next run for the same target. A directory or file replaces
another by an atomic exchange (Linux renameat2), so the target is always a complete old or a complete new
output. The outputs of one run are published together or not at all (`atomic_outputs`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from rar_deploy.errors import RARDeployError

# What a killed run leaves beside a target: its temporary output, or (where no atomic exchange exists)
# the old output moved aside during a replacement.
_PARTIAL = ".partial"
_ASIDE = ".replaced"
_NAME_MAX = 255  # bytes in one file name on Linux file systems
_SHOWN = 5  # foreign files named in a message
# errors of a write that a person fixes outside rar-deploy (free space, raise a limit)
WRITE_ERRORS = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space or raise the quota",
                errno.EFBIG: "raise the file-size limit (ulimit -f)", errno.EROFS: "choose a writable place",
                errno.EIO: "check the storage"}

# written(path) -> the files (paths relative to `path`, '/'-separated) the owner wrote at an existing output, or
# None when `path` is not the owner's output; for a file output, an empty set means "ours".
Written = Callable[[Path], "frozenset[str] | None"]


def never(path: Path) -> None:
    return None


def any_file(path: Path) -> frozenset[str] | None:
    """A file output that may replace any file (inside rar-deploy's own temporary folders, a timing cache)."""
    return frozenset() if path.is_file() else None


@dataclass(frozen=True)
class Output:
    """A path a command writes: what may be replaced there, and the inputs it must keep away from."""

    path: Path  # as the user named it, for messages
    option: str = "--out"
    force: bool = False
    written: Written = never
    owner: str = "rar-deploy"  # the tool whose outputs `written` recognises, for messages
    inputs: tuple[Path, ...] = ()
    directory: bool = True  # a folder (else a file)
    keeps_foreign: bool = False  # the caller copies the files it did not write into the new folder (rar-build)
    target: Path = field(init=False)  # where it is written: links followed, absolute

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "target", Path(os.path.realpath(self.path)))

    def check(self) -> None:
        """Everything that can be known before the work starts; raises RARDeployError."""
        check_not_input(self.path, self.inputs, self.option)
        target = self.target
        with contextlib.suppress(OSError):
            if Path.cwd().is_relative_to(target):
                raise RARDeployError(f"{self.option} {self.path} is (or holds) the folder you are in: the output is "
                                     "swapped in as a complete new folder, which would leave you in a deleted one; "
                                     f"run from outside it (cd ..) and give its name")
        if os.path.lexists(target) and target.is_dir() != self.directory:
            kind, wanted = ("a folder", "a file") if target.is_dir() else ("a file", "a folder")
            raise RARDeployError(f"{self.option} {self.path} is {kind}: give {wanted} name for {self.option}")
        if _is_empty_target(target):
            _check_writable(target, self.path)
            return
        if not self.force:
            raise RARDeployError(f"{self.option} {self.path} exists{' and is not empty' if target.is_dir() else ''}:"
                                 f" choose another {self.option} or pass --force")
        written = self.written(target)
        if written is None:
            raise RARDeployError(f"{self.option} {self.path} was not written by {self.owner}: --force replaces only "
                                 f"{self.owner}'s own outputs; remove it yourself or choose another {self.option}")
        if self.directory and not self.keeps_foreign:
            foreign = foreign_files(target, written)
            if foreign:
                raise RARDeployError(f"{self.option} {self.path} holds {_named(foreign)}, which {self.owner} did not "
                                     f"write: --force replaces only what it wrote; move them out or choose another "
                                     f"{self.option}")


def _named(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def foreign_files(folder: Path, written: frozenset[str]) -> list[str]:
    """What `folder` holds beyond `written` (relative paths; a foreign folder is named once, not its contents)."""
    ancestors = {str(Path(name).parent) for name in written}
    ancestors |= {str(parent) for name in written for parent in Path(name).parents}
    found = []
    for root, dirs, files in os.walk(folder):
        relative = Path(root).relative_to(folder)
        for name in sorted(dirs):
            path = str(relative / name)
            if path not in ancestors and path not in written:
                found.append(path + "/")
        dirs[:] = [d for d in dirs if str(relative / d) in ancestors]
        found += [str(relative / name) for name in sorted(files) if str(relative / name) not in written]
    return sorted(found)


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


def _check_writable(target: Path, given: Path) -> None:
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise RARDeployError(f"cannot write to {Path(given).parent}: {ancestor} is not a writable folder")
    if len(os.fsencode(target.name)) > _NAME_MAX:
        raise RARDeployError(f"the name {target.name[:40]}... is {len(os.fsencode(target.name))} bytes long, more "
                             f"than a file name may have ({_NAME_MAX}): choose a shorter one")


def _stem(path: Path) -> str:
    """The start of every name rar-deploy gives beside `path`: `.<name>.`, shortened (with a hash of the whole
    name, so that two long names never share leftovers) where the name leaves no room for a suffix."""
    name = path.name
    if len(os.fsencode(name)) <= _NAME_MAX - 32:
        return f".{name}."
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return f".{os.fsdecode(os.fsencode(name)[:160]).rstrip(chr(0xFFFD))}~{digest}."


@contextlib.contextmanager
def output_lock(path: Path) -> Iterator[None]:
    """Hold `.<name>.lock` beside `path`; a second writer fails at once, naming the holder. The lock file never
    outlives the block, even when writing the holder's pid fails (a full disk)."""
    lock = path.parent / f"{_stem(path)}lock"
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
    try:
        with contextlib.suppress(OSError):  # the pid is a courtesy for the next writer's message
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _leftovers(path: Path, suffix: str) -> list[Path]:
    pattern = re.compile(re.escape(_stem(path)) + r"[a-z0-9_]{8}" + re.escape(suffix))
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


def write_error(exc: OSError, outputs: Sequence[Output]) -> RARDeployError | None:
    """A write that failed for a reason the user fixes (a full disk, a file-size limit) as one line, else None."""
    if exc.errno not in WRITE_ERRORS:
        return None
    where = " and ".join(f"{output.option} {output.path}" for output in outputs)
    return RARDeployError(f"cannot write {where}: {exc.strerror}; nothing was written, an earlier output is "
                          f"unchanged: {WRITE_ERRORS[exc.errno]} and run again")


@contextlib.contextmanager
def atomic_outputs(outputs: Sequence[Output], report: Callable[[str], None] = _stderr) -> Iterator[list[Path]]:
    """Yield a temporary path beside each output (an empty folder, or a file name); they become the outputs
    together, and only if the block succeeds. The locks are held for the whole block, so enter it before the
    heavy work; a failing block leaves every output as it was and no temporary behind."""
    for output in outputs:
        output.check()
    with contextlib.ExitStack() as stack:
        for output in outputs:
            try:
                output.target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RARDeployError(f"cannot write to {output.path.parent}: {exc.strerror}") from None
            stack.enter_context(output_lock(output.target))
            recover_leftovers(output.target, report)
            output.check()
        temporaries: list[Path] = []
        try:
            for output in outputs:
                temporaries.append(_temporary(output))
            try:
                yield temporaries
            except OSError as exc:
                error = write_error(exc, outputs)
                if error is None:
                    raise
                raise error from None
            _publish_all(temporaries, outputs)
        finally:
            for temporary in temporaries:
                _remove(temporary)


@contextlib.contextmanager
def atomic_directory(output: Output, report: Callable[[str], None] = _stderr) -> Iterator[Path]:
    """atomic_outputs of one folder."""
    with atomic_outputs([output], report) as (folder,):
        yield folder


@contextlib.contextmanager
def atomic_file(output: Output | Path, report: Callable[[str], None] = _stderr) -> Iterator[Path]:
    """atomic_outputs of one file. A bare Path is a file rar-deploy may replace (inside its own temporary folders,
    for example)."""
    if not isinstance(output, Output):
        output = Output(Path(output), force=True, written=any_file, directory=False)
    with atomic_outputs([output], report) as (path,):
        yield path


def _temporary(output: Output) -> Path:
    target = output.target
    try:
        if output.directory:
            made = tempfile.mkdtemp(prefix=_stem(target), suffix=_PARTIAL, dir=target.parent)
        else:
            fd, made = tempfile.mkstemp(prefix=_stem(target), suffix=_PARTIAL, dir=target.parent)
            os.close(fd)
    except OSError as exc:
        raise RARDeployError(f"cannot write to {output.path.parent}: {exc.strerror}") from None
    os.chmod(made, (0o777 if output.directory else 0o666) & ~_umask())  # mkstemp/mkdtemp use 0600/0700
    return Path(made)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back Ctrl-C, SIGTERM and SIGHUP while outputs are swapped in (they take effect right after), so that a
    stop never splits them. Handlers, not a signal mask: a mask would let another thread (ONNX Runtime's) take
    the signal. Only the main thread can set handlers; elsewhere nothing is held back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in received:
            signal.raise_signal(signum)


def _publish_all(temporaries: Sequence[Path], outputs: Sequence[Output]) -> None:
    """Move every complete temporary to its output; if one cannot be moved, put back the ones already moved.
    The old outputs end at their temporary's name (removed by the caller) or in `.replaced` folders."""
    undo: list[Callable[[], None]] = []
    asides: list[Path] = []
    with _signals_deferred():
        try:
            for temporary, output in zip(temporaries, outputs):
                undo.append(_publish(temporary, output, asides))
        except BaseException:
            for step in reversed(undo):
                step()
            raise
    for aside in asides:
        _remove(aside)


def _publish(tmp: Path, output: Output, asides: list[Path]) -> Callable[[], None]:
    """Move the complete `tmp` to `output.target`, re-checking what is there now (it may have changed); returns
    what puts the old state back. A replaced output is left at `tmp`, or at a name added to `asides`."""
    path = output.target
    if _is_empty_target(path):
        try:
            if output.directory:
                os.rename(tmp, path)  # replaces an empty folder only; fails on anything else
                return lambda: os.rename(path, tmp)
            os.link(tmp, path)  # never replaces a file that appeared meanwhile
            return lambda: os.unlink(path)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EXDEV) and not output.directory:
                return _move_aside_and_rename(tmp, path, asides)  # no hard links on this file system
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                raise
            # something appeared at `path` meanwhile: judge it below
    if (output.written(path) if output.force else None) is None:
        raise RARDeployError(f"{output.path} appeared while this command ran and was left untouched; nothing was "
                             f"written: choose another {output.option}" + ("" if output.force else " or pass --force"))
    if _exchange(tmp, path):
        lost = _lost(tmp, path, output)
        if lost is None or lost:  # what we swapped out changed under us: put it back
            _exchange(tmp, path)
            raise _changed(output, lost)
        return lambda: _exchange(tmp, path)
    lost = _lost(path, tmp, output)
    if lost is None or lost:
        raise _changed(output, lost)
    return _move_aside_and_rename(tmp, path, asides)


def _changed(output: Output, lost: list[str] | None) -> RARDeployError:
    what = f"it now holds {_named(lost)}, which {output.owner} did not write" if lost else "it is no longer ours"
    return RARDeployError(f"{output.path} changed while this command ran ({what}) and was left untouched; nothing "
                          "was written")


def _move_aside_and_rename(tmp: Path, path: Path, asides: list[Path]) -> Callable[[], None]:
    """Where no exchange is possible: the old output is renamed aside (`.replaced`, restored by the next run if a
    kill lands between the two renames), then the new one renamed in."""
    aside = Path(tempfile.mktemp(prefix=_stem(path), suffix=_ASIDE, dir=path.parent))
    if os.path.lexists(path):
        os.rename(path, aside)
        asides.append(aside)
    os.rename(tmp, path)

    def restore() -> None:
        os.rename(path, tmp)
        if os.path.lexists(aside):
            os.rename(aside, path)
            asides.remove(aside)

    return restore


def _lost(old: Path, new: Path, output: Output) -> list[str] | None:
    """Files of an old file or folder output that its owner did not write and that the new output does not
    carry over (None: the old output is no longer the owner's at all)."""
    written = output.written(old)
    if written is None or not output.directory:
        return None if written is None else []
    return [name for name in foreign_files(old, written) if not os.path.lexists(new / name.rstrip("/"))]


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
