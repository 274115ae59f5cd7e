"""What an output is and may replace: its target (links followed), what the tool wrote there, the foreign
files that make it refuse, the lock of one writer, the leftovers of a killed run, and a failed write as one
line. Publishing is `publish.py`."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from rar_deploy.errors import RARDeployError

# What a killed run leaves beside a target: its temporary output, or (where no atomic exchange exists)
# the old output moved aside during a replacement.
PARTIAL = ".partial"
ASIDE = ".replaced"
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
        if is_empty_target(target):
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
                raise RARDeployError(f"{self.option} {self.path} holds {named(foreign)}, which {self.owner} did not "
                                     f"write: --force replaces only what it wrote; move them out or choose another "
                                     f"{self.option}")


def named(paths: list[str]) -> str:
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


def is_empty_target(path: Path) -> bool:
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


def temporary_stem(path: Path) -> str:
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
    lock = path.parent / f"{temporary_stem(path)}lock"
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
    pattern = re.compile(re.escape(temporary_stem(path)) + r"[a-z0-9_]{8}" + re.escape(suffix))
    with contextlib.suppress(OSError):
        return sorted(p for p in path.parent.iterdir() if pattern.fullmatch(p.name))
    return []


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover_leftovers(path: Path, report: Callable[[str], None]) -> None:
    """Under the lock: restore an output moved aside by an interrupted replacement, remove the rest."""
    for aside in reversed(_leftovers(path, ASIDE)):
        if not os.path.lexists(path):
            os.rename(aside, path)
            report(f"restored {path} from an interrupted replacement")
        else:
            remove(aside)
    for partial in _leftovers(path, PARTIAL):
        remove(partial)
        report(f"removed {partial.name}, left by an interrupted run")


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def write_error(exc: OSError, outputs: Sequence[Output]) -> RARDeployError | None:
    """A write that failed for a reason the user fixes (a full disk, a file-size limit) as one line, else None."""
    if exc.errno not in WRITE_ERRORS:
        return None
    where = " and ".join(f"{output.option} {output.path}" for output in outputs)
    return RARDeployError(f"cannot write {where}: {exc.strerror}; nothing was written, an earlier output is "
                          f"unchanged: {WRITE_ERRORS[exc.errno]} and run again")
