"""rar-serve's watchdog: the Ray processes of a server die with it, even when it is killed with SIGKILL.

Ray kills its GCS and raylet when the process that started them dies, but its dashboard and runtime-env agents
outlive it by a minute (they wait on the dead GCS with a fixed 60 s timeout), and no Ray setting shortens
that. `start(pid)` runs this file as a small separate program (no Ray, no rar_deploy import): while the server
lives it records the server's descendants (pid and start time) every INTERVAL seconds; when its stdin, whose
write end only the server holds, reaches end of file (the server is gone, however it died) it kills the
recorded processes that still exist with the same start time, so that a reused pid is never hit.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

INTERVAL_S = 0.5


def start() -> subprocess.Popen:
    """The watchdog of this process; close its stdin (or die) to have it kill what is left."""
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            table[int(name)] = (int(fields[1]), fields[19])
    return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, stack = {}, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if pid != os.getpid():
            found[pid] = table[pid][1]
        stack.extend(children.get(pid, []))
    return found


def watch(root: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    seen: dict[int, str] = {}
    while True:
        seen.update(_descendants(root, _processes()))
        ready, _, _ = select.select([0], [], [], INTERVAL_S)
        if ready and not os.read(0, 1):
            break
    table = _processes()
    for pid, started in seen.items():
        if pid in table and table[pid][1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
