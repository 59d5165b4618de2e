"""`workers = N`: N processes, each one Trio loop with its own SO_REUSEPORT listeners.

Owns: forking the workers, passing SIGTERM/SIGINT/SIGHUP on to them, restarting a worker
that dies unexpectedly, and the parent's exit code. The parent never runs Trio: it forks
before any event loop exists (forking a running loop is unsafe) and then only waits.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import trio

from ..config import Config, ConfigError
from .. import log as logmod
from ..log import log
from .steering import LoadTable

RESTART_PAUSE = 1.0   # a worker that keeps crashing is not restarted in a tight loop
EXIT_CONFIG = 78      # EX_CONFIG: the worker cannot run with this config; restarting won't help


def _worker_main(config_path: str, config: Config, index: int, table: LoadTable) -> None:
    from .server import Daemon

    # Default handlers until Trio installs its own; the parent's handlers are not ours.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    code = 1
    try:
        cpus = sorted(os.sched_getaffinity(0))
        code = trio.run(Daemon(config_path, name=f"worker {index}", reuse_port=True,
                               cpu=cpus[index % len(cpus)], load_table=table,
                               index=index).run, config)
    except ConfigError as e:   # e.g. its listener address was taken after the parent's check
        log.error("worker %d: %s", index, e)
        code = EXIT_CONFIG
    except BaseException:   # the worker's last words go to the log, then it exits
        log.exception("worker %d: exiting after an internal error", index)
    finally:
        logmod.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_workers(config_path: str, config: Config) -> int:
    from .server import check_listeners

    check_listeners(config)         # ConfigError: one line from the CLI, nothing forked
    children: dict[int, int] = {}   # pid → worker index
    stopping = failed = False
    received: list[int] = []

    def on_signal(sig: int, frame: object) -> None:
        received.append(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    # Shared with every worker (inherited across fork): see io/steering.py.
    table = LoadTable(config.workers)

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            _worker_main(config_path, config, index, table)
        children[pid] = index

    log.info("master: starting %d workers", config.workers)
    for i in range(config.workers):
        spawn(i)
    while children:
        while received:
            sig = received.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                stopping = True
            for pid in children:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            time.sleep(0.05)   # interrupted by signals too; they are handled above
            continue
        index = children.pop(pid)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_CONFIG and not stopping:
            log.error("master: worker %d cannot run with this config; stopping", index)
            stopping = failed = True
            received.append(signal.SIGTERM)
            continue
        if not stopping:
            log.error("master: worker %d (pid %d) exited unexpectedly (status %d); "
                      "restarting it", index, pid, status)
            time.sleep(RESTART_PAUSE)
            spawn(index)
    log.info("master: all workers stopped")
    return 1 if failed else 0
