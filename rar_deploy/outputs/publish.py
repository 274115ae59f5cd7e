"""Publishing outputs: each written into a temporary beside its target, then all swapped in together (undone if one
cannot be), signals held back during the swaps, by an atomic exchange where Linux offers one."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

from rar_deploy.errors import RARDeployError
from rar_deploy.outputs.target import (
    ASIDE,
    PARTIAL,
    Output,
    any_file,
    foreign_files,
    is_empty_target,
    named,
    output_lock,
    recover_leftovers,
    remove,
    stderr,
    temporary_stem,
    write_error,
)


@contextlib.contextmanager
def atomic_outputs(outputs: Sequence[Output], report: Callable[[str], None] = stderr) -> Iterator[list[Path]]:
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
                remove(temporary)


@contextlib.contextmanager
def atomic_directory(output: Output, report: Callable[[str], None] = stderr) -> Iterator[Path]:
    """atomic_outputs of one folder."""
    with atomic_outputs([output], report) as (folder,):
        yield folder


@contextlib.contextmanager
def atomic_file(output: Output | Path, report: Callable[[str], None] = stderr) -> Iterator[Path]:
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
            made = tempfile.mkdtemp(prefix=temporary_stem(target), suffix=PARTIAL, dir=target.parent)
        else:
            fd, made = tempfile.mkstemp(prefix=temporary_stem(target), suffix=PARTIAL, dir=target.parent)
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
        remove(aside)


def _publish(tmp: Path, output: Output, asides: list[Path]) -> Callable[[], None]:
    """Move the complete `tmp` to `output.target`, re-checking what is there now (it may have changed); returns
    what puts the old state back. A replaced output is left at `tmp`, or at a name added to `asides`."""
    path = output.target
    if is_empty_target(path):
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
    what = f"it now holds {named(lost)}, which {output.owner} did not write" if lost else "it is no longer ours"
    return RARDeployError(f"{output.path} changed while this command ran ({what}) and was left untouched; nothing "
                          "was written")


def _move_aside_and_rename(tmp: Path, path: Path, asides: list[Path]) -> Callable[[], None]:
    """Where no exchange is possible: the old output is renamed aside (`.replaced`, restored by the next run if a
    kill lands between the two renames), then the new one renamed in."""
    aside = Path(tempfile.mktemp(prefix=temporary_stem(path), suffix=ASIDE, dir=path.parent))
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
