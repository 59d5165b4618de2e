#!/usr/bin/env python3
"""Compare versions of trio-mailproxy's login path on this machine, in one run.

    python3 bench/compare.py HEAD~1 HEAD                  # interleaved IMAP logins
    python3 bench/compare.py --dovecot main ../my-branch  # with Dovecot's proxy beside them
    python3 bench/compare.py --instructions 300 HEAD~1 HEAD   # callgrind count per login
    python3 bench/compare.py --opcodes 300 HEAD               # Python opcodes, by function
    python3 bench/compare.py --wakeups 3000 HEAD~1 HEAD       # times the worker sleeps

A VERSION is a revision of this repository (its src/ is exported with git archive) or a
directory holding src/mailproxy (another checkout, a copy); either with "+compiled" after
it (HEAD+compiled) is that code's opt-in compiled build (setup.py, MAILPROXY_COMPILE=1).

Why not the full bench: a change to the login path moves its figures by a few percent,
while on a shared 2-core machine the full bench's ratios move by ±10% from one repetition
to the next, and by more between machines (bench/README.md). Two ways to see a few
percent:

- logins (default): every version runs at once, each on its own loopback address, against
  the same Dovecot backend; each repetition runs the login tests (IMAP LOGIN + LOGOUT at
  each --concurrency) on direct and on every version in turn, order rotated, and reports
  each version's logins/s as a ratio to direct in that same repetition, with its p99
  login latency (direct's too) and CPU per login. Medians over repetitions, min-max in
  brackets.
- --instructions N: the user-space instructions one login costs, counted by valgrind's
  callgrind (one worker, one client, N logins after a warm-up). The count does not depend
  on the machine or its load and repeats within about 0.4%; kernel work is not in it.
- --opcodes N: where a login's Python goes: the opcodes it executes, counted per function
  by bench/opcount_trace.py (sys.settrace; same worker, client and warm-up), summed by
  part (trio, each mailproxy module, standard library modules) with the largest
  functions. Counts move by a few percent from run to run (how often the scheduler goes
  round depends on timing); compiled builds are refused (their compiled modules run no
  opcodes).
- --wakeups N: how often the worker goes to sleep per login (its voluntary context
  switches from /proc, each one a wait in epoll that a later event ends; same worker,
  client and warm-up, at full speed, as counting instructions or opcodes would slow the
  process down and change which replies arrive together). At one client each wake-up is
  on the login's critical path and finds the caches cold.

Every process it starts is stopped at the end, as in run.py.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Callable

import run
import servers
from build_compiled import build_compiled   # importable once run is (scripts/ on sys.path)

VERSION_HOSTS = "127.0.8.{}"     # one loopback address per version (1, 2, ...)


COMPILED_SUFFIX = "+compiled"


def export(version: str, into: Path) -> Path:
    """The src/ directory to run for ``version`` (exported into ``into`` for a revision;
    VERSION+compiled: the compiled build of that version, built from its own setup.py by
    scripts/build_compiled.py)."""
    if version.endswith(COMPILED_SUFFIX):
        project = export(version.removesuffix(COMPILED_SUFFIX), into).parent
        if not (project / "setup.py").is_file():
            raise SystemExit(f"compare: {version!r}: no setup.py beside its src/, so no "
                             "compiled build to make")
        dest = into / ("compiled-" + hashlib.sha256(str(project).encode()).hexdigest()[:12])
        return dest if dest.exists() else build_compiled(dest, project=project)
    path = Path(version)
    for candidate in (path / "src", path):
        if (candidate / "mailproxy" / "__init__.py").is_file():
            return candidate.resolve()
    rev = subprocess.run(["git", "-C", str(run.REPO_ROOT), "rev-parse", "--verify", "--quiet",
                          version + "^{commit}"], capture_output=True, text=True)
    if rev.returncode != 0:
        raise SystemExit(f"compare: {version!r} is neither a revision of this repository "
                         "nor a directory holding src/mailproxy")
    commit = rev.stdout.strip()
    dest = into / commit[:12]
    if not dest.exists():
        dest.mkdir(parents=True)
        # the whole revision: its src/, and what its compiled build is built from
        archive = subprocess.run(["git", "-C", str(run.REPO_ROOT), "archive", commit],
                                 capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest / "src"


def labelled(versions: list[str], into: Path) -> list[tuple[str, Path]]:
    out = []
    for i, version in enumerate(versions):
        label = version if versions.count(version) == 1 else f"{version}#{i + 1}"
        out.append((label, export(version, into)))
    return out


def _summary(values: list[float], fmt: str, unit: str = "") -> str:
    if not values:
        return "n/a"
    return (f"{fmt.format(statistics.median(values))} "
            f"({fmt.format(min(values))}–{fmt.format(max(values))}){unit}")


def compare_logins(a: argparse.Namespace, bench: run.Bench,
                   versions: list[tuple[str, Path]]) -> str:
    backend = bench.start_backend()
    targets: dict[str, servers.Target] = {
        "direct": servers.Direct("direct", backend.host, backend, bench.cores).start()}
    if a.dovecot:
        targets["dovecot"] = servers.DovecotProxy(
            "dovecot", run.TARGET_HOSTS["dovecot"], backend, bench.cores).start()
    for i, (label, src) in enumerate(versions):
        targets[label] = servers.TrioMailproxy(
            label, VERSION_HOSTS.format(i + 1), backend, bench.cores,
            workers=a.workers or bench.cores, src=src).start()
    names = list(targets)
    ratios: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    p99: dict[tuple[str, int], list[float]] = {}
    for r in range(a.reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for conc in a.concurrency:
            row = {name: bench.test_login(targets[name], "imap", conc) for name in order}
            direct = row["direct"]["logins_per_s"]
            for name in names:
                p99.setdefault((name, conc), []).append(row[name]["p99_ms"])
            for name in names[1:]:
                ratios.setdefault((name, conc), []).append(row[name]["logins_per_s"] / direct)
                if row[name].get("target_cpu_us_per_login"):
                    cpu.setdefault((name, conc), []).append(
                        row[name]["target_cpu_us_per_login"])
            run.log(f"repetition {r + 1}/{a.reps} c={conc}: direct {direct:.0f}/s  " + "  ".join(
                f"{name} {row[name]['logins_per_s'] / direct:.3f}" for name in names[1:]))
    lines = ["| version | " + " | ".join(
        f"logins/s c={c} (ratio to direct) | p99 c={c} | CPU per login c={c}"
        for c in a.concurrency) + " |", "|---|" + "---|---|---|" * len(a.concurrency)]
    for name in names:
        cells = []
        for conc in a.concurrency:
            cells.append(_summary(ratios.get((name, conc), []), "{:.3f}"))
            cells.append(_summary(p99.get((name, conc), []), "{:.3f}", " ms"))
            cells.append(_summary(cpu.get((name, conc), []), "{:.0f}", " µs"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return (f"IMAP logins, {a.reps} interleaved repetition(s) of {a.duration:g} s: median "
            "(min–max) over repetitions\n\n" + "\n".join(lines))


def _counted_logins(bench: run.Bench, t: servers.Target, label: str, n: int,
                    reset: Callable[[], None]) -> None:
    """Warm up (50 logins: caches, imports on first use, the backend's processes), call
    reset() to start counting, then log in n times with one client."""
    bench.loadgen_run(t, "imap-login", "-c", "1", "-N", "50", "-d", "600", "-w", "0",
                      "-t", "60", timeout=900)
    reset()
    res = bench.loadgen_run(t, "imap-login", "-c", "1", "-N", str(n), "-d", "3600",
                            "-w", "0", "-t", "60", timeout=3700)
    if res["logins_total"] != n or res["errors"]:
        raise SystemExit(f"compare: {label}: {res['logins_total']} of {n} logins, "
                         f"{res['errors']} errors ({res['last_error']})")


def _wait_for(path: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def count_instructions(a: argparse.Namespace, bench: run.Bench,
                       versions: list[tuple[str, Path]]) -> str:
    valgrind, control = servers.which("valgrind"), servers.which("callgrind_control")
    if valgrind is None or control is None:
        raise SystemExit("compare: --instructions needs valgrind (bash bench/install.sh)")
    backend = bench.start_backend()
    lines = ["| version | instructions per login |", "|---|---|"]
    for i, (label, src) in enumerate(versions):
        out = Path(tempfile.mkdtemp(prefix="bench-callgrind-", dir="/tmp"))
        t = servers.TrioMailproxy(
            label, VERSION_HOSTS.format(i + 1), backend, bench.cores, workers=1, src=src,
            prefix=[valgrind, "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p"],
            ready_timeout=300)
        try:
            t.start()
            assert t.proc is not None
            pid = str(t.proc.pid)
            _counted_logins(bench, t, label, a.instructions, lambda: subprocess.run(
                [control, "-z", pid], capture_output=True, check=True, timeout=60))
            subprocess.run([control, "-d", pid], capture_output=True, check=True, timeout=60)
            dump = out / f"cg.{pid}.1"
            _wait_for(dump)
            total = next(int(line.split()[1]) for line in dump.read_text().splitlines()
                         if line.startswith("summary:"))
            run.log(f"{label}: {total} instructions in {a.instructions} logins")
            lines.append(f"| {label} | {total / a.instructions / 1000:,.0f} k |")
        finally:
            t.stop()
            shutil.rmtree(out, ignore_errors=True)
    return (f"User-space instructions per IMAP login (callgrind; one worker, one client, "
            f"{a.instructions} logins after 50)\n\n" + "\n".join(lines))


def _voluntary_switches(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise SystemExit(f"compare: no voluntary_ctxt_switches in /proc/{pid}/status")


def count_wakeups(a: argparse.Namespace, bench: run.Bench,
                  versions: list[tuple[str, Path]]) -> str:
    backend = bench.start_backend()
    lines = ["| version | wake-ups per login |", "|---|---|"]
    for i, (label, src) in enumerate(versions):
        t = servers.TrioMailproxy(label, VERSION_HOSTS.format(i + 1), backend, bench.cores,
                                  workers=1, src=src)
        try:
            t.start()
            assert t.proc is not None
            pid = t.proc.pid
            start: list[int] = []
            _counted_logins(bench, t, label, a.wakeups,
                            lambda: start.append(_voluntary_switches(pid)))
            n = _voluntary_switches(pid) - start[0]
            run.log(f"{label}: {n} voluntary context switches in {a.wakeups} logins")
            lines.append(f"| {label} | {n / a.wakeups:.2f} |")
        finally:
            t.stop()
    return (f"Times the worker waited per IMAP login (voluntary context switches; one "
            f"worker, one client, {a.wakeups} logins after 50)\n\n" + "\n".join(lines))


TRIO_PARTS = ("/trio/", "/outcome/", "/sniffio/", "<attrs generated")
STDLIB = sysconfig.get_paths()["stdlib"]


def opcode_group(location: str) -> str:
    """Which part of the process a code object (``file:line:name``) belongs to: trio (with
    outcome and the methods attrs makes for their classes), a mailproxy module, a
    standard library module, or the dataclass constructors (made from "<string>")."""
    filename = location.rsplit(":", 2)[0]
    if any(part in filename for part in TRIO_PARTS):
        return "trio"
    if "/mailproxy/" in filename:
        module = filename.rsplit("/mailproxy/", 1)[1].removesuffix(".py")
        return "mailproxy." + module.replace("/", ".").removesuffix(".__init__")
    if filename == "<string>":
        return "dataclass constructors"
    if filename.startswith(STDLIB):
        module = filename[len(STDLIB):].strip("/").removesuffix(".py")
        return "stdlib " + module.replace("/", ".").removesuffix(".__init__")
    return filename


def opcode_report(label: str, counts: Path, logins: int) -> tuple[str, list[str]]:
    """The table row and the by-group and by-function lines for one version."""
    groups: dict[str, int] = {}
    functions: list[tuple[int, float, str]] = []
    total = 0
    for line in counts.read_text().splitlines():
        n_text, calls_text, location = line.split("\t", 2)
        n = int(n_text)
        total += n
        group = opcode_group(location)
        groups[group] = groups.get(group, 0) + n
        name = location.rsplit(":", 1)[1]
        functions.append((n, int(calls_text) / logins, f"{group}: {name}"))
    per_login = total / logins
    trio_share = groups.get("trio", 0) / total if total else 0.0
    row = f"| {label} | {per_login:,.0f} | {trio_share:.0%} |"
    by_group = ", ".join(f"{g} {n / logins:,.0f}" for g, n in
                         sorted(groups.items(), key=lambda kv: -kv[1])[:12])
    top = ", ".join(f"{where} {n / logins:,.0f} ({calls:.1f} calls)"
                    for n, calls, where in functions[:12])
    return row, [f"- {label}, by part: {by_group}", f"- {label}, largest functions: {top}"]


def count_opcodes(a: argparse.Namespace, bench: run.Bench,
                  versions: list[tuple[str, Path]]) -> str:
    backend = bench.start_backend()
    rows = ["| version | opcodes per login | in Trio |", "|---|---|---|"]
    details: list[str] = []
    tracer = Path(__file__).resolve().parent / "opcount_trace.py"
    for i, (label, src) in enumerate(versions):
        out = Path(tempfile.mkdtemp(prefix="bench-opcodes-", dir="/tmp"))
        counts = out / "opcodes.tsv"
        t = servers.TrioMailproxy(
            label, VERSION_HOSTS.format(i + 1), backend, bench.cores, workers=1, src=src,
            prefix=[os.path.realpath(sys.executable), str(tracer), str(counts)],
            ready_timeout=300)
        try:
            t.start()
            assert t.proc is not None
            pid = t.proc.pid
            _counted_logins(bench, t, label, a.opcodes,
                            lambda: os.kill(pid, signal.SIGUSR2))
            os.kill(pid, signal.SIGUSR1)
            _wait_for(counts)
            row, lines = opcode_report(label, counts, a.opcodes)
            rows.append(row)
            details += lines
        finally:
            t.stop()
            shutil.rmtree(out, ignore_errors=True)
    return (f"Python opcodes per IMAP login (sys.settrace with f_trace_opcodes; one worker, "
            f"one client, {a.opcodes} logins after 50)\n\n" + "\n".join(rows) + "\n\n"
            + "\n".join(details))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("versions", nargs="+", metavar="VERSION",
                   help="a revision of this repository, or a directory holding src/mailproxy")
    p.add_argument("--instructions", type=int, metavar="N",
                   help="count instructions per login over N logins instead (callgrind)")
    p.add_argument("--opcodes", type=int, metavar="N",
                   help="count Python opcodes per login over N logins instead, by part "
                        "and by function (sys.settrace; not for compiled builds)")
    p.add_argument("--wakeups", type=int, metavar="N",
                   help="count the worker's waits (voluntary context switches) per login "
                        "over N logins instead, at full speed")
    p.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per test (default 3)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up seconds per test")
    p.add_argument("--concurrency", default="1,50", help="clients, comma-separated (1,50)")
    p.add_argument("--workers", type=int, default=0,
                   help="trio-mailproxy's workers (default: the number of cores)")
    p.add_argument("--dovecot", action="store_true", help="Dovecot's proxy beside them")
    a = p.parse_args(argv)
    a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    if a.instructions is not None and a.instructions < 1:
        p.error("--instructions needs at least one login")
    if a.opcodes is not None and a.opcodes < 1:
        p.error("--opcodes needs at least one login")
    if a.wakeups is not None and a.wakeups < 1:
        p.error("--wakeups needs at least one login")
    if sum(x is not None for x in (a.opcodes, a.instructions, a.wakeups)) > 1:
        p.error("--instructions, --opcodes and --wakeups are separate runs")
    # Refused before anything is built: a compiled build runs its compiled modules as
    # machine code, which executes no opcodes.
    compiled = [v for v in a.versions if v.endswith(COMPILED_SUFFIX)]
    if a.opcodes is not None and compiled:
        p.error(f"--opcodes counts Python opcodes and cannot see a compiled build "
                f"({', '.join(compiled)}); use --instructions")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    build_dir = Path("/tmp") / f"bench-build-{os.getuid()}"
    loadgen, authhttp = run.build_c(build_dir)
    bench = run.Bench(run.parse_args(["--no-install", "--duration", str(a.duration),
                                      "--warmup", str(a.warmup)]), loadgen, authhttp)
    exported = Path(tempfile.mkdtemp(prefix="bench-compare-", dir="/tmp"))

    def on_signal(signum, frame):  # SIGTERM unwinds through finally, as in run.py
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        versions = labelled(a.versions, exported)
        if a.instructions is not None:
            text = count_instructions(a, bench, versions)
        elif a.opcodes is not None:
            text = count_opcodes(a, bench, versions)
        elif a.wakeups is not None:
            text = count_wakeups(a, bench, versions)
        else:
            text = compare_logins(a, bench, versions)
    finally:
        servers.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(exported, ignore_errors=True)
    print()
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("compare: interrupted; every process it started has been stopped",
              file=sys.stderr)
        sys.exit(130)
