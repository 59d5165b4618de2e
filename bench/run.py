#!/usr/bin/env python3
"""trio-mailproxy benchmark: one command, everything on loopback.

    bash bench/run.sh            # full run (~12-15 min on 2 cores): bench/results/<ts>.md/.json
    bash bench/run.sh --smoke    # seconds: one repetition, tiny N, nothing asserted

Starts a tuned Dovecot 2.3 backend and the targets side by side (direct, haproxy in TCP
mode, Dovecot as a pure proxy in high-performance mode, nginx's mail module with an
instant auth_http, trio-mailproxy), builds the C load generator, and runs the tests
interleaved: for each repetition (target order rotated), each test runs on every target
in turn. Each figure is reported as the median over repetitions and, where it makes
sense, as the ratio to direct taken within the same repetition (median, min-max).

CPU per login / per GB is the target's own CPU (utime+stime, plus that of reaped
children, from /proc/<pid>/stat summed over every process in the target's session);
PSS per idle session is (sum of Pss from /proc/<pid>/smaps_rollup at N sessions - at 0)
/ N, each N measured on a freshly started (then warmed) target so that heap high-water
marks of earlier tests do not hide the cost. Every process the bench starts is stopped at
the end (process groups, in a finally block, also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "scripts"))   # build_compiled

import servers  # noqa: E402
from build_compiled import build_compiled, copy_project  # noqa: E402
from servers import (  # noqa: E402
    APPEND_USER, FETCH_USER, NUM_USERS, PASSWORD, USER_PREFIX, ServerError,
)

REPO_ROOT = BENCH_DIR.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

ALL_TARGETS = ["direct", "haproxy", "dovecot", "nginx", "trio", "compiled", "floor",
               "loopfloor", "libloop"]
# "compiled": trio-mailproxy's opt-in compiled build (setup.py, MAILPROXY_COMPILE=1) of the
# same code, built at the start of the run, run only when asked for.
DAEMON_TARGETS = ("trio", "compiled")
# "floor" (bench/floor.py, the least a Trio login proxy can do), "loopfloor" (the same
# on an epoll loop with callbacks, no Trio) and "libloop" (bench/floor_library.py: the
# daemon's own login work on that loop) are yardsticks for reading trio-mailproxy's
# figures, run only when asked for.
DEFAULT_TARGETS = ["direct", "haproxy", "dovecot", "nginx", "trio"]
TARGET_HOSTS = {  # distinct loopback addresses make each target's sockets easy to tell apart
    "haproxy": "127.0.2.1",
    "dovecot": "127.0.3.1",
    "nginx": "127.0.4.1",      # its auth_http server: 127.0.4.2
    "trio": "127.0.5.1",
    "floor": "127.0.6.1",
    "loopfloor": "127.0.7.1",
    "libloop": "127.0.9.1",    # 127.0.8.x: bench/compare.py's versions
    "compiled": "127.0.10.1",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ preparation
def ensure_installed(no_install: bool) -> None:
    missing = [b for b in ("gcc", "haproxy", "nginx", "dovecot") if servers.which(b) is None]
    if not os.path.exists(servers.NGINX_MAIL_MODULE):
        missing.append("nginx mail module")
    if not missing:
        return
    if no_install:
        log(f"missing {', '.join(missing)} (--no-install given): those targets are skipped")
        return
    log(f"installing: {', '.join(missing)}")
    r = subprocess.run(["bash", str(BENCH_DIR / "install.sh")], timeout=900)
    if r.returncode != 0:
        log("bench/install.sh failed: targets whose binaries are missing are skipped")


def ensure_trio_mailproxy(no_install: bool) -> None:
    if shutil.which("trio-mailproxy") is not None or no_install:
        return
    log("trio-mailproxy not installed: pip install -e .")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", str(REPO_ROOT)],
                   timeout=900)


def compiled_build(snapshot: Path) -> Path | None:
    """The compiled build of the snapshot (scripts/build_compiled.py), or None with the
    reason logged (the "compiled" target is then reported as not measured)."""
    log("building the compiled build (MAILPROXY_COMPILE=1, mypyc)")
    try:
        return build_compiled(snapshot / "compiled", project=snapshot)
    except subprocess.CalledProcessError as e:
        log("compiled build failed: " + (e.stderr or e.stdout).strip()[-2000:])
        return None


def build_c(build_dir: Path) -> tuple[Path, Path]:
    gcc = servers.which("gcc") or servers.which("cc")
    if gcc is None:
        raise SystemExit("bench: no C compiler (gcc): run bash bench/install.sh")
    build_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("loadgen", "authhttp"):
        src = BENCH_DIR / f"{name}.c"
        # keyed by the source's content: another checkout's version never gets reused
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
        exe = build_dir / f"{name}-{digest}"
        if not exe.exists():
            tmp = build_dir / f".{name}-{digest}.{os.getpid()}"
            subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(src)], check=True,
                           timeout=120)
            os.replace(tmp, exe)
        out.append(exe)
    return out[0], out[1]


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass

    def version(argv: list[str], pattern: str) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            m = re.search(pattern, r.stdout + r.stderr)
            return m.group(1) if m else "?"
        except Exception:
            return "missing"

    def which_or(name: str) -> str:
        return servers.which(name) or name

    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--",
                                "src"], capture_output=True, text=True, timeout=10).stdout
        if dirty.strip():
            sha += " + uncommitted changes in src/"
    except Exception:
        sha = "?"
    try:
        nofile = list(__import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE))
    except Exception:
        nofile = []
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "nofile_limit": nofile,
        "python": platform.python_version(),
        "dovecot": version([which_or("dovecot"), "--version"], r"^(\S+)"),
        "haproxy": version([which_or("haproxy"), "-v"], r"version (\S+)"),
        "nginx": version([which_or("nginx"), "-v"], r"nginx/(\S+)"),
        "gcc": version([which_or("gcc"), "-dumpfullversion"], r"^(\S+)"),
        "git": sha,
        "loadavg_start": os.getloadavg()[0],
    }


# ------------------------------------------------------------------ /proc readings
def proc_cpu_split_s(pids: list[int]) -> tuple[float, float]:
    """(utime+stime+cutime+cstime, utime+cutime) of the given processes, in seconds: all
    their CPU, and the part of it spent in user space."""
    total = user = 0
    for pid in pids:
        rest = servers.proc_stat_fields(pid)
        if rest is not None:
            # fields 14-17 (1-based) = utime stime cutime cstime; rest[0] is field 3
            utime, stime, cutime, cstime = (int(x) for x in rest[11:15])
            total += utime + stime + cutime + cstime
            user += utime + cutime
    return total / CLK_TCK, user / CLK_TCK


def proc_cpu_s(pids: list[int]) -> float:
    """utime+stime+cutime+cstime of the given processes, in seconds."""
    return proc_cpu_split_s(pids)[0]


def proc_pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def system_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()
    # user nice system idle iowait irq softirq steal ...
    vals = [int(x) for x in parts[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK


def established_to_port(port: int) -> int:
    """ESTABLISHED TCP sockets whose local port is ``port`` (IPv4, all namespaces' view)."""
    n = 0
    hexport = f":{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split(None, 4)
                if parts[1].endswith(hexport) and parts[3] == "01":
                    n += 1
    except OSError:
        pass
    return n


# ------------------------------------------------------------------ the runner
class Bench:
    def __init__(self, args: argparse.Namespace, loadgen: Path, authhttp: Path) -> None:
        self.args = args
        self.loadgen = loadgen
        self.authhttp = authhttp
        self.cores = os.cpu_count() or 1
        self.backend: servers.Dovecot | None = None
        self.targets: dict[str, servers.Target] = {}
        self.status: dict[str, dict] = {}
        self.notes: list[str] = []

    # -- targets
    def make_target(self, name: str) -> servers.Target:
        b = self.backend
        assert b is not None
        if name == "direct":
            t: servers.Target = servers.Direct("direct", b.host, b, self.cores)
        elif name == "haproxy":
            t = servers.HAProxy(name, TARGET_HOSTS[name], b, self.cores)
        elif name == "dovecot":
            t = servers.DovecotProxy(name, TARGET_HOSTS[name], b, self.cores)
        elif name == "nginx":
            t = servers.Nginx(name, TARGET_HOSTS[name], b, self.cores,
                              authhttp_binary=self.authhttp,
                              proxy_buffer=self.args.nginx_proxy_buffer)
        elif name in DAEMON_TARGETS:
            workers = self.status.get(name, {}).get(
                "workers", self.args.trio_workers or self.cores)
            t = servers.TrioMailproxy(name, TARGET_HOSTS[name], b, self.cores, workers=workers,
                                      compiled=name == "compiled")
        elif name in ("floor", "loopfloor"):
            cls = servers.TrioFloor if name == "floor" else servers.LoopFloor
            t = cls(name, TARGET_HOSTS[name], b, self.cores,
                    workers=self.args.trio_workers or self.cores)
        elif name == "libloop":
            t = servers.LibraryLoop(name, TARGET_HOSTS[name], b, self.cores,
                                    workers=self.args.trio_workers or self.cores)
        else:
            raise ValueError(name)
        return t

    def start_target(self, name: str) -> servers.Target | None:
        t = self.make_target(name)
        try:
            t.start()
        except Exception as e:  # ServerError, OSError...
            t.stop()
            raise ServerError(str(e)) from None
        if name in DAEMON_TARGETS:
            assert isinstance(t, servers.TrioMailproxy)
            st = self.status.setdefault(name, {})
            if t.workers > 1 and t.processes_seen < 2:
                # the daemon does not fork workers (yet): measure it honestly as 1
                st["workers"] = 1
                st["workers_note"] = (
                    f"workers = {t.workers} requested, but the daemon ran "
                    f"{t.processes_seen} process: measured with workers = 1")
                t.stop()
                return self.start_target(name)
            st.setdefault("workers", t.workers)
            st["processes"] = t.processes_seen
            st["pop3_note"] = t.pop3_note
        self.targets[name] = t
        return t

    def restart_target(self, name: str) -> servers.Target:
        old = self.targets.pop(name, None)
        if old is not None:
            old.stop()
        t = self.start_target(name)
        assert t is not None
        return t

    # -- load generator
    def loadgen_run(self, t: servers.Target, mode: str, *extra: str, timeout: float) -> dict:
        port = t.pop3_port if mode == "pop3-login" else t.imap_port
        argv = [str(self.loadgen), "-H", t.host, "-p", str(port), "-m", mode,
                "-u", str(NUM_USERS), "-x", USER_PREFIX, "-P", PASSWORD, *extra]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           start_new_session=True)
        if r.returncode != 0:
            raise RuntimeError(f"loadgen {mode} on {t.name} failed: {r.stderr.strip()}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def measured(self, t: servers.Target, fn):
        """Run fn() and return (its result, target CPU s, aux CPU s, backend CPU s, wall)."""
        b = self.backend
        assert b is not None
        self.quiesce(t)
        c0, u0 = proc_cpu_split_s(t.pids())
        a0 = proc_cpu_s(t.aux_pids())
        b0 = proc_cpu_s(b.pids())
        s0 = system_busy_s()
        w0 = time.monotonic()
        res = fn()
        wall = time.monotonic() - w0
        c1, u1 = proc_cpu_split_s(t.pids())
        res["target_user_s"] = u1 - u0
        a1 = proc_cpu_s(t.aux_pids())
        b1 = proc_cpu_s(b.pids())
        busy = system_busy_s() - s0
        ours = (c1 - c0) + (a1 - a0) + (b1 - b0) + res.get("loadgen_cpu_us", 0) / 1e6
        # CPU used meanwhile by processes that are not part of the bench (other work on
        # the machine): share of the machine's capacity, an indicator of noise
        res["foreign_cpu_share"] = max(0.0, busy - ours) / (wall * self.cores) if wall else 0
        res["wall_s"] = wall
        return res, c1 - c0, a1 - a0, b1 - b0, wall

    def quiesce(self, t: servers.Target, limit_s: float = 3.0) -> None:
        """Wait (bounded) until the backend and the target are idle: work left over from
        the previous test (log writing, session clean-up) must not be billed to this one."""
        b = self.backend
        assert b is not None
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            pids = b.pids() + t.pids()
            c0 = proc_cpu_s(pids)
            time.sleep(0.1)
            if proc_cpu_s(pids) - c0 <= 0.01:  # under 10 % of one core
                return

    def test_login(self, t: servers.Target, proto: str, conc: int) -> dict:
        a = self.args
        mode = f"{proto}-login"
        res, cpu, aux, bcpu, _ = self.measured(t, lambda: self.loadgen_run(
            t, mode, "-c", str(conc), "-d", str(a.duration), "-w", str(a.warmup),
            timeout=a.duration + a.warmup + 60))
        if res["logins_total"] == 0:
            raise RuntimeError(f"no successful login ({res['last_error']})")
        n = res["logins_total"]
        res["target_cpu_s"] = cpu
        res["target_cpu_us_per_login"] = cpu * 1e6 / n if t.pids() else None
        res["target_user_us_per_login"] = (res["target_user_s"] * 1e6 / n if t.pids()
                                           else None)
        res["aux_cpu_us_per_login"] = aux * 1e6 / n if t.aux_pids() else None
        res["backend_cpu_us_per_login"] = bcpu * 1e6 / n
        res["loadgen_cpu_us_per_login"] = res["loadgen_cpu_us"] / n
        if res["errors"]:
            log(f"  {t.name} {mode} c={conc}: {res['errors']} errors (last: {res['last_error']})")
        return res

    def test_bulk(self, t: servers.Target, mode: str) -> dict:
        a = self.args
        user = FETCH_USER if mode == "fetch" else APPEND_USER
        k = a.fetch_reps if mode == "fetch" else a.append_reps
        res, cpu, aux, bcpu, _ = self.measured(t, lambda: self.loadgen_run(
            t, mode, "-U", user, "-k", str(k), "-t", "30", timeout=300))
        gb = res["bytes"] / 1e9
        res["target_cpu_s"] = cpu
        res["target_cpu_s_per_gb"] = cpu / gb if t.pids() else None
        res["backend_cpu_s_per_gb"] = bcpu / gb
        res["loadgen_cpu_s_per_gb"] = res["loadgen_cpu_us"] / 1e6 / gb
        return res

    def wait_backend_drained(self, limit_s: float = 60) -> None:
        b = self.backend
        assert b is not None
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if established_to_port(b.imap_port) + established_to_port(b.pop3_port) <= 2:
                return
            time.sleep(0.2)
        log("  backend still holds sessions after 60 s; going on")

    def backend_mail_processes(self) -> int:
        """The backend's imap and pop3 processes (not the login ones)."""
        b = self.backend
        assert b is not None
        count = 0
        for pid in b.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    title = f.read().split(b"\0")[0]
            except OSError:
                continue
            if title.endswith((b"/imap", b"/pop3")):
                count += 1
        return count

    def wait_backend_settled(self, limit_s: float = 30) -> None:
        """After the idle tests: wait until the backend is back to its warm state (its
        mail processes at process_min_avail per service), so that every repetition's
        login tests meet the same backend. The 9,000-session test leaves nine or more
        imap processes, each with room for 1,000 sessions; until they go (idle_kill),
        new logins are spread over them and every target's logins slowed by 10-25%
        (measured: two identical trio-mailproxy daemons, 1,310-1,790 logins/s at c=50
        with the extra processes, 1,930-2,070/s once they were gone)."""
        self.wait_backend_drained()
        want = 2 * self.cores                  # process_min_avail for imap and for pop3
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.backend_mail_processes() <= want:
                return
            time.sleep(0.5)
        log(f"  backend still runs {self.backend_mail_processes()} mail processes "
            f"(warm state: {want}) after {limit_s:.0f} s; going on")

    def test_idle(self, name: str, n: int) -> dict:
        """Fresh target, warmed; PSS at 0; hold n sessions; PSS at n; NOOP on all."""
        a = self.args
        self.wait_backend_drained()
        t = self.restart_target(name)
        # warm-up: a few hundred login cycles, so that lazily built state counts at 0
        self.loadgen_run(t, "imap-login", "-c", "10", "-d", str(a.idle_warmup), "-w", "0",
                         timeout=a.idle_warmup + 60)
        time.sleep(0.5)
        pids = t.pids()
        pss0 = proc_pss_kib(pids)
        cpu0 = proc_cpu_s(pids)
        argv = [str(self.loadgen), "-H", t.host, "-p", str(t.imap_port), "-m", "idle",
                "-n", str(n), "-c", str(a.idle_concurrency), "-u", str(NUM_USERS),
                "-x", USER_PREFIX, "-P", PASSWORD, "-t", "30"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        out: dict = {"sessions": n}
        try:
            ready = self._read_json_line(p, 60 + n / 100)
            out["ready"] = ready.get("ready", 0)
            out["connect_secs"] = ready.get("secs")
            out["last_error"] = ready.get("last_error", "")
            time.sleep(a.idle_settle)
            pids = t.pids()
            pss1 = proc_pss_kib(pids)
            out["pss0_kib"] = pss0
            out["pssN_kib"] = pss1
            out["target_processes"] = len(pids)
            out["pss_kib_per_session"] = ((pss1 - pss0) / out["ready"]) if out["ready"] else None
            p.stdin.write("noop\n")
            p.stdin.flush()
            noop = self._read_json_line(p, 60 + n / 100)
            out["noop_ok"] = noop.get("ok", 0)
            out["noop_failed"] = noop.get("failed", 0)
            out["noop_secs"] = noop.get("secs")
            out["all_answered"] = out["noop_ok"] == n
            out["target_cpu_s"] = proc_cpu_s(t.pids()) - cpu0
            p.stdin.write("close\n")
            p.stdin.flush()
            closed = self._read_json_line(p, 60)
            out["loadgen_cpu_us"] = closed.get("loadgen_cpu_us")
            p.wait(timeout=30)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        if out.get("ready", 0) < n or not out.get("all_answered"):
            log(f"  {name} idle {n}: ready {out.get('ready')}, NOOP ok {out.get('noop_ok')}"
                f" (last error: {out.get('last_error')})")
        return out

    @staticmethod
    def _read_json_line(p: subprocess.Popen, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        assert p.stdout is not None
        while time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            line = p.stdout.readline()
            if not line:
                err = p.stderr.read() if p.stderr else ""
                raise RuntimeError(f"loadgen idle ended early: {err.strip()}")
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError("loadgen idle: no answer in time")

    # -- warm-up of the backend (indexes, page cache): untimed, through direct
    def warm_backend(self) -> None:
        b = self.backend
        assert b is not None
        d = servers.Direct("direct", b.host, b, self.cores).start()
        for mode in ("pop3-login", "imap-login"):
            # every user logs in once (POP3 opens INBOX: builds its indexes)
            self.loadgen_run(d, mode, "-c", "20", "-N", str(NUM_USERS), "-d", "60",
                             "-w", "0", timeout=120)
        self.loadgen_run(d, "fetch", "-U", FETCH_USER, "-k", "2", timeout=120)
        self.loadgen_run(d, "append", "-U", APPEND_USER, "-k", "1", timeout=120)

    def start_backend(self) -> servers.Dovecot:
        """The Dovecot backend every target proxies to, started and warmed."""
        self.backend = servers.Dovecot(name="backend", host="127.0.0.1", cores=self.cores)
        self.backend.start()
        log(f"backend: Dovecot on 127.0.0.1 imap {self.backend.imap_port} "
            f"pop3 {self.backend.pop3_port}")
        self.warm_backend()
        return self.backend

    # -- main loop
    def run(self) -> dict:
        a = self.args
        self.start_backend()

        names: list[str] = []
        for name in a.targets:
            try:
                t = self.start_target(name)
                st = self.status.setdefault(name, {})
                st.update(available=True, label=t.label, pop3=t.has_pop3 and t.pop3_port is not None)
                names.append(name)
                log(f"target {name}: {t.host}:{t.imap_port}"
                    + (f" pop3 {t.pop3_port}" if t.pop3_port else "")
                    + f" ({len(t.pids())} processes)")
            except ServerError as e:
                first = str(e).strip().splitlines()
                self.status.setdefault(name, {}).update(
                    available=False, label=servers_label(name),
                    error="\n".join(first[:1] + first[1:][-30:]))
                log(f"target {name} NOT AVAILABLE: {first[0] if first else e}")
        if "direct" not in names:
            raise SystemExit("bench: direct target missing (backend failed?)")

        reps = []
        for r in range(a.reps):
            order = names[r % len(names):] + names[:r % len(names)]
            log(f"repetition {r + 1}/{a.reps}: order {' '.join(order)}")
            results: dict[str, dict] = {n: {} for n in order}
            tests = [("imap_c1", lambda t: self.test_login(t, "imap", 1)),
                     ("imap_c50", lambda t: self.test_login(t, "imap", a.concurrency)),
                     ("pop3_c50", lambda t: self.test_login(t, "pop3", a.concurrency)),
                     ("fetch", lambda t: self.test_bulk(t, "fetch")),
                     ("append", lambda t: self.test_bulk(t, "append"))]
            for key, fn in tests:
                for name in order:
                    t = self.targets.get(name)
                    if t is None:
                        continue
                    if key.startswith("pop3") and not self.status[name]["pop3"]:
                        continue
                    try:
                        results[name][key] = fn(t)
                    except Exception as e:
                        results[name][key] = {"error": str(e)}
                        log(f"  {name} {key}: ERROR {e}")
                line = "  " + key + ": " + "  ".join(
                    f"{n}={_brief(key, results[n].get(key))}" for n in order
                    if key in results[n])
                log(line)
            for n_sessions in a.idle:
                for name in order:
                    if name == "direct":
                        continue  # no proxy process to measure
                    try:
                        results[name][f"idle_{n_sessions}"] = self.test_idle(name, n_sessions)
                    except Exception as e:
                        results[name][f"idle_{n_sessions}"] = {"error": str(e)}
                        log(f"  {name} idle {n_sessions}: ERROR {e}")
                        try:
                            self.restart_target(name)
                        except Exception:
                            pass
                log(f"  idle {n_sessions}: " + "  ".join(
                    f"{n}={_brief('idle', results[n].get(f'idle_{n_sessions}'))}"
                    for n in order if f"idle_{n_sessions}" in results[n]))
            self.wait_backend_settled()
            reps.append({"order": order, "results": results})
        return {"targets": names, "reps": reps}


def servers_label(name: str) -> str:
    return {"direct": "direct", "haproxy": "haproxy (TCP)", "dovecot": "dovecot proxy",
            "nginx": "nginx mail", "trio": "trio-mailproxy",
            "compiled": servers.TrioMailproxy.compiled_label,
            "floor": "trio floor (bench/floor.py)",
            "loopfloor": "loop floor (bench/floor_loop.py)",
            "libloop": "library loop (bench/floor_library.py)"}.get(name, name)


def _brief(key: str, res: dict | None) -> str:
    if not res:
        return "-"
    if "error" in res:
        return "ERR"
    if key in ("fetch", "append"):
        return f"{res['mb_per_s']:.0f}MB/s"
    if key == "idle":
        v = res.get("pss_kib_per_session")
        return (f"{v:.1f}KiB" if v is not None else "?") + f"/{res.get('noop_ok')}ok"
    return f"{res['logins_per_s']:.0f}/s p99={res['p99_ms']:.2f}ms"


# ------------------------------------------------------------------ summarising
# (key, label, unit, getter, ratio_to_direct, fmt)
def metric_defs(idle: list[int], concurrency: int) -> list[tuple]:
    def g(test, field):
        return lambda res: (res.get(test) or {}).get(field)

    def phase(i):
        return lambda res: ((res.get("imap_c1") or {}).get("phase_p50_us") or [None] * 3)[i]

    c = concurrency
    defs = [
        ("imap_c1_lps", "IMAP logins/s, c=1", "/s", g("imap_c1", "logins_per_s"), True, "{:.0f}"),
        ("imap_c50_lps", f"IMAP logins/s, c={c}", "/s", g("imap_c50", "logins_per_s"), True, "{:.0f}"),
        ("pop3_c50_lps", f"POP3 logins/s, c={c}", "/s", g("pop3_c50", "logins_per_s"), True, "{:.0f}"),
        ("imap_c1_p50", "IMAP login latency p50, c=1", "ms", g("imap_c1", "p50_ms"), True, "{:.3f}"),
        ("imap_c1_p99", "IMAP login latency p99, c=1", "ms", g("imap_c1", "p99_ms"), True, "{:.3f}"),
        # where a c=1 cycle's time goes (loadgen's per-cycle phases, medians)
        ("imap_c1_greet_us", "c=1 phase p50: connect() to greeting", "µs", phase(0), False,
         "{:.0f}"),
        ("imap_c1_login_us", "c=1 phase p50: LOGIN to its OK", "µs", phase(1), False, "{:.0f}"),
        ("imap_c1_logout_us", "c=1 phase p50: LOGOUT to its OK", "µs", phase(2), False,
         "{:.0f}"),
        ("imap_c50_p50", f"IMAP login latency p50, c={c}", "ms", g("imap_c50", "p50_ms"), True, "{:.2f}"),
        ("imap_c50_p99", f"IMAP login latency p99, c={c}", "ms", g("imap_c50", "p99_ms"), True, "{:.2f}"),
        ("pop3_c50_p99", f"POP3 login latency p99, c={c}", "ms", g("pop3_c50", "p99_ms"), True, "{:.2f}"),
        ("imap_cpu_us", f"target CPU per IMAP login (c={c})", "µs",
         g("imap_c50", "target_cpu_us_per_login"), False, "{:.0f}"),
        ("imap_cpu_user_us", f"target user-space CPU per IMAP login (c={c})", "µs",
         g("imap_c50", "target_user_us_per_login"), False, "{:.0f}"),
        ("imap_c1_cpu_us", "target CPU per IMAP login (c=1)", "µs",
         g("imap_c1", "target_cpu_us_per_login"), False, "{:.0f}"),
        ("imap_c1_cpu_user_us", "target user-space CPU per IMAP login (c=1)", "µs",
         g("imap_c1", "target_user_us_per_login"), False, "{:.0f}"),
        ("pop3_cpu_us", f"target CPU per POP3 login (c={c})", "µs",
         g("pop3_c50", "target_cpu_us_per_login"), False, "{:.0f}"),
        ("fetch_mbps", "FETCH 20 MiB, one session", "MB/s", g("fetch", "mb_per_s"), True, "{:.0f}"),
        ("append_mbps", "APPEND 20 MiB, one session", "MB/s", g("append", "mb_per_s"), True, "{:.0f}"),
        ("fetch_cpu_gb", "target CPU per GB relayed (FETCH)", "s/GB",
         g("fetch", "target_cpu_s_per_gb"), False, "{:.2f}"),
        ("append_cpu_gb", "target CPU per GB relayed (APPEND)", "s/GB",
         g("append", "target_cpu_s_per_gb"), False, "{:.2f}"),
    ]
    for n in idle:
        defs.append((f"idle_{n}_pss", f"PSS per idle session, {n} held", "KiB",
                     g(f"idle_{n}", "pss_kib_per_session"), False, "{:.1f}"))
        defs.append((f"idle_{n}_noop", f"sessions answering NOOP, of {n}", "",
                     g(f"idle_{n}", "noop_ok"), False, "{:.0f}"))
    defs += [
        ("backend_cpu_us", f"backend CPU per IMAP login (c={c})", "µs",
         g("imap_c50", "backend_cpu_us_per_login"), False, "{:.0f}"),
        ("aux_cpu_us", f"auth_http server CPU per IMAP login (c={c})", "µs",
         g("imap_c50", "aux_cpu_us_per_login"), False, "{:.0f}"),
        ("loadgen_cpu_us", f"load generator CPU per IMAP login (c={c})", "µs",
         g("imap_c50", "loadgen_cpu_us_per_login"), False, "{:.0f}"),
        ("loadgen_cpu_fetch", "load generator CPU per GB (FETCH)", "s/GB",
         g("fetch", "loadgen_cpu_s_per_gb"), False, "{:.2f}"),
    ]
    return defs


def summarise(run: dict, idle: list[int], concurrency: int) -> dict:
    summary: dict = {}
    for key, label, unit, get, ratio, fmt in metric_defs(idle, concurrency):
        row: dict = {"label": label, "unit": unit, "format": fmt, "targets": {}}
        for name in run["targets"]:
            values, ratios = [], []
            for rep in run["reps"]:
                res = rep["results"].get(name, {})
                v = get(res)
                if v is None or (isinstance(v, (int, float)) and v < 0):
                    continue
                values.append(v)
                if ratio and name != "direct":
                    d = get(rep["results"].get("direct", {}))
                    if d:
                        ratios.append(v / d)
            if not values:
                continue
            cell = {"median": statistics.median(values), "values": values}
            if ratios:
                cell.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios),
                            ratio_max=max(ratios), ratios=ratios)
            row["targets"][name] = cell
        if row["targets"]:
            summary[key] = row
    return summary


def markdown(report: dict) -> str:
    m = report["machine"]
    names = report["run"]["targets"]
    cfg = report["config"]
    lines = [
        f"# trio-mailproxy benchmark, {report['timestamp']}",
        "",
        f"Machine: {m['nproc']} × {m['cpu']}, Linux {m['kernel']}, {m['mem_gib']} GiB; "
        f"descriptor limit {m['nofile_limit']}; load average at start {m['loadavg_start']:.2f}, "
        f"at end {m.get('loadavg_end', 0):.2f}.",
        f"Software: Dovecot {m['dovecot']}, HAProxy {m['haproxy']}, nginx {m['nginx']}, "
        f"Python {m['python']}, trio-mailproxy at {m['git']}; load generator built with gcc "
        f"{m['gcc']}.",
        f"Mode: {'smoke' if cfg['smoke'] else 'full'}; {cfg['reps']} interleaved repetition(s), "
        f"target order rotated each time; login tests {cfg['duration']} s each after "
        f"{cfg['warmup']} s warm-up; FETCH ×{cfg['fetch_reps']}, APPEND ×{cfg['append_reps']}; "
        f"idle sessions {', '.join(str(n) for n in cfg['idle']) or 'none'}. "
        f"Wall time {report['wall_s'] / 60:.1f} min.",
        "",
        "Cells: median over repetitions; `(r× a–b)` = ratio to direct within each repetition "
        "(median, min–max). MB = 10⁶ bytes. CPU and PSS are the target's own processes "
        "(n/a for direct).",
        "",
        "| | " + " | ".join(report["targets"][n]["label"] for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, row in report["summary"].items():
        cells = []
        for n in names:
            c = row["targets"].get(n)
            if c is None:
                cells.append("n/a")
                continue
            s = row["format"].format(c["median"])
            if row["unit"] and row["unit"] != "/s":
                s += f" {row['unit']}"
            if "ratio_median" in c:
                if len(c["ratios"]) > 1:
                    s += (f" ({c['ratio_median']:.2f}× {c['ratio_min']:.2f}–"
                          f"{c['ratio_max']:.2f})")
                else:
                    s += f" ({c['ratio_median']:.2f}×)"
            cells.append(s)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    goal_lines = goals(report)
    if goal_lines:
        builds = [report["targets"][n]["label"] for n in goal_builds(report)]
        lines += ["", "Issue 4's targets for trio-mailproxy in this run:", "",
                  f"| goal | {' | '.join(builds)} | reference | met |",
                  "|---|" + "---|" * (len(builds) + 2), *goal_lines]
    lines += ["", "Notes:"]
    for note in report["notes"]:
        lines.append(f"- {note}")
    for n in report["requested_targets"]:
        st = report["targets"].get(n, {})
        if not st.get("available", False):
            err = (st.get("error") or "").strip().splitlines()
            why = err[0] if err else "not started"
            if len(err) > 1:
                why += f" ... {err[-1].strip()}"
            lines.append(f"- {st.get('label', n)}: NOT MEASURED: {why}")
    return "\n".join(lines) + "\n"


def goal_builds(report: dict) -> list[str]:
    """The daemon's builds measured in this run: the goals table has a column for each."""
    return [n for n in DAEMON_TARGETS if n in report["run"]["targets"]]


def goals(report: dict) -> list[str]:
    """Rows comparing trio-mailproxy (each build measured) with what issue 4 asks of it
    (same run): | goal | value per build | reference | met per build |."""
    summ = report["summary"]
    names = report["run"]["targets"]
    builds = goal_builds(report)
    if not builds:
        return []

    def cell(key: str, name: str, field: str = "median"):
        return summ.get(key, {}).get("targets", {}).get(name, {}).get(field)

    rows = []

    def row(goal: str, key: str, field: str, ref_name: str, ok, fmt: str,
            extra_ok=lambda name: True) -> None:
        ref = cell(key, ref_name, field)
        mine = [cell(key, n, field) for n in builds]
        if ref is None or all(v is None for v in mine):
            return
        values = [fmt.format(v) if v is not None else "n/a" for v in mine]
        met = ["n/a" if v is None else "yes" if ok(v, ref) and extra_ok(n) else "no"
               for n, v in zip(builds, mine)]
        rows.append(f"| {goal} | {' | '.join(values)} | {fmt.format(ref)} | "
                    f"{' / '.join(met)} |")

    if "dovecot" in names:
        for key, what in (("imap_c1_lps", "IMAP logins/s c=1"),
                          ("imap_c50_lps", "IMAP logins/s c=50"),
                          ("pop3_c50_lps", "POP3 logins/s c=50")):
            row(f"{what} (ratio to direct) above Dovecot proxy's", key, "ratio_median",
                "dovecot", lambda a, b: a > b, "{:.2f}×")
        row("IMAP p99 login latency c=1 below Dovecot proxy's", "imap_c1_p99", "median",
            "dovecot", lambda a, b: a < b, "{:.3f} ms")
        for key, what in (("imap_cpu_us", "IMAP"), ("pop3_cpu_us", "POP3")):
            row(f"CPU per {what} login below Dovecot proxy's", key, "median", "dovecot",
                lambda a, b: a < b, "{:.0f} µs")
    if "haproxy" in names:
        for key, what in (("fetch_mbps", "FETCH"), ("append_mbps", "APPEND")):
            row(f"{what} ratio ≥ 0.95 × haproxy's", key, "ratio_median", "haproxy",
                lambda a, b: a >= 0.95 * b, "{:.2f}×")
    idle = report["config"].get("idle") or []
    if idle and "nginx" in names:
        n = max(idle)

        def all_answered(name: str) -> bool:
            return all(v == n for v in (summ.get(f"idle_{n}_noop", {}).get("targets", {})
                                        .get(name, {}).get("values") or [0]))

        row(f"PSS per idle session ({n} held) ≤ nginx's, all answering NOOP",
            f"idle_{n}_pss", "median", "nginx", lambda a, b: a <= b, "{:.1f} KiB",
            extra_ok=all_answered)
    if "nginx" in names:
        row("lead: IMAP logins/s c=50 (ratio) at nginx's or above", "imap_c50_lps",
            "ratio_median", "nginx", lambda a, b: a >= b, "{:.2f}×")
        row("lead: CPU per IMAP login at nginx's or below", "imap_cpu_us", "median", "nginx",
            lambda a, b: a <= b, "{:.0f} µs")
    return rows


def standard_notes(bench: Bench, args: argparse.Namespace, run: dict) -> list[str]:
    avail = {n for n, st in bench.status.items() if st.get("available")}
    notes = [
        "Backend: Dovecot 2.3 (passwd-file, 1000 users, Maildir, mail_fsync=never), "
        "imap/pop3 processes reused (service_count=0, client_limit=1000), login processes in "
        "high-performance mode; every target proxies to it on 127.0.0.1.",
        "Login latency: connect() to the tagged OK of LOGIN (IMAP) / +OK of PASS (POP3); "
        "each cycle ends with LOGOUT/QUIT. The c=1 phase rows split a cycle: connect() to "
        "the greeting, LOGIN to its OK (the proxy's passdb, backend connect, greeting, ID "
        "and LOGIN), LOGOUT to its OK. Target CPU is sampled around each test, so it "
        "includes the warm-up cycles and is divided by all cycles done.",
        "Idle: each N on a freshly started target, warmed with a few hundred logins before "
        "PSS at 0; sessions are plaintext IMAP, logged in, then all sent NOOP, then LOGOUT.",
    ]
    if "haproxy" in avail:
        notes.append(f"haproxy: mode tcp, nbthread {bench.cores}, defaults otherwise "
                     "(no splice).")
    if "dovecot" in avail:
        notes.append(
            f"Dovecot proxy: passdb static proxy=y nopassword=y; imap-login/pop3-login "
            f"service_count=0, client_limit={20000 // bench.cores}, "
            f"process_min_avail={bench.cores}; default logging (one info line per login, "
            "like trio-mailproxy's default log_level).")
    if "nginx" in avail:
        notes.append(
            f"nginx mail: worker_processes {bench.cores}, auth_http answered by "
            "bench/authhttp.c (its CPU is the 'auth_http server' row, not in nginx's), "
            f"proxy_buffer {args.nginx_proxy_buffer or 'default (one page)'}.")
    shares = sorted(
        res[k]["foreign_cpu_share"]
        for rep in run["reps"] for res in rep["results"].values() for k in res
        if isinstance(res[k], dict) and "foreign_cpu_share" in res[k])
    if shares:
        notes.append(
            "Other work on the machine during the tests (CPU not used by the bench's own "
            f"processes, share of all cores): median {statistics.median(shares):.0%}, "
            f"max {shares[-1]:.0%}.")
    # both builds run with the same workers and config: describe whichever ran
    tr = next((bench.status[n] for n in DAEMON_TARGETS
               if bench.status.get(n, {}).get("available")), {})
    if tr:
        parts = [f"trio-mailproxy: workers = {tr.get('workers')}"
                 f" ({tr.get('processes', '?')} processes incl. the parent)."]
        if tr.get("workers_note"):
            parts.append(tr["workers_note"] + ".")
        if tr.get("pop3"):
            parts.append("IMAP and POP3 (one static passdb, port chosen with %{if;%s;...}).")
        else:
            parts.append("IMAP only, POP3 rows n/a: the daemon refused a pop3 listener ("
                         + (tr.get("pop3_note") or "?").replace("|", "/") + ").")
        parts.append("Default log_level (info), logged to a file.")
        notes.append(" ".join(parts))
    if "compiled" in avail:
        notes.append(
            "trio-mailproxy, compiled: the same code and config, built with "
            "MAILPROXY_COMPILE=1 (setup.py: its login hot path compiled by mypyc; "
            "scripts/build_compiled.py), the opt-in build.")
    if "floor" in avail:
        notes.append(
            f"trio floor: bench/floor.py with {args.trio_workers or bench.cores} worker "
            "process(es) (SO_REUSEPORT, SO_INCOMING_CPU as trio's workers), the least a Trio "
            "login proxy does: greet, read the login, connect, log in with the client's "
            "credentials, answer, relay with two tasks. No passdb, ID, limits, timeouts or "
            "logs: a yardstick for trio-mailproxy's figures, not a peer.")
    if "loopfloor" in avail:
        notes.append(
            f"loop floor: bench/floor_loop.py, the trio floor's I/O (same system calls, "
            f"same {args.trio_workers or bench.cores} worker process(es)) driven by one "
            "epoll loop with a callback per socket instead of a Trio task per session: "
            "trio floor minus loop floor = what Trio's tasks cost a login; loop floor "
            "minus nginx = what CPython itself costs.")
    if "libloop" in avail:
        notes.append(
            "library loop: bench/floor_library.py, the loop floor's epoll loop driving the "
            "daemon's own login work for the same config (its client- and backend-facing "
            "IMAP state machines, forwarded fields and ID, passdb chain, routing decision, "
            "connection counters, login deadline, both log lines), IMAP only: what a login "
            "would cost if the plaintext login phase were callbacks instead of a Trio task "
            "per session. Leaves out TLS, DNS, delays and reconnects, which would stay in "
            "tasks, and splice (it relays as the loop floor does).")
    return notes


# ------------------------------------------------------------------ README
README_BEGIN = "<!-- bench:latest (written by bench/run.py) -->"
README_END = "<!-- /bench:latest -->"


def readme_block(md: str) -> str:
    """The latest table for the README: the report without its title line."""
    body = md.split("\n", 1)[1].strip() if md.startswith("# ") else md.strip()
    return f"{README_BEGIN}\n{body}\n{README_END}"


def update_readme(md: str, readme: Path = REPO_ROOT / "README.md") -> bool:
    """Replace the table between the markers in README.md (re-read right before writing).
    Only that block changes; without the markers nothing is touched."""
    try:
        text = readme.read_text()
    except OSError:
        return False
    i = text.find(README_BEGIN)
    j = text.find(README_END, i + 1) if i >= 0 else -1
    if i < 0 or j < 0:
        return False
    new = text[:i] + readme_block(md) + text[j + len(README_END):]
    if new != text:
        readme.write_text(new)
    return True


# ------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="seconds: one repetition, tiny N, short tests, nothing asserted")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)} (direct is always "
                        "run; floor = bench/floor.py, the least a Trio login proxy can do, and "
                        "loopfloor = bench/floor_loop.py, the same without Trio, and libloop = "
                        "bench/floor_library.py, the daemon's login work on that loop, only "
                        "when named)")
    p.add_argument("--reps", type=int, help="repetitions (full: 5)")
    p.add_argument("--duration", type=float, help="seconds per login test (full: 3)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per login test (full: 0.5)")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--idle", help="comma-separated idle session counts (full: 1000,5000,9000)")
    p.add_argument("--fetch-reps", type=int, help="FETCHes of the 20 MiB message (full: 30)")
    p.add_argument("--append-reps", type=int, help="APPENDs of 20 MiB (full: 30)")
    p.add_argument("--nginx-proxy-buffer", default="", help="e.g. 64k (default: nginx's)")
    p.add_argument("--trio-workers", type=int, default=0,
                   help="trio-mailproxy's workers (default: the number of cores, as issue 4 "
                        "asks; 1 shows the single-process figures)")
    p.add_argument("--out", type=Path, help="results directory (default bench/results; "
                   "smoke: a temporary one unless given)")
    p.add_argument("--no-install", action="store_true", help="never run bench/install.sh")
    p.add_argument("--render", type=Path, metavar="RESULT.json",
                   help="only re-render RESULT.md from a saved RESULT.json (for latest.json: "
                   "also the README table); runs nothing")
    a = p.parse_args(argv)
    smoke = a.smoke
    a.reps = a.reps or (1 if smoke else 5)
    a.duration = a.duration or (0.5 if smoke else 3.0)
    a.warmup = a.warmup if a.warmup is not None else (0.2 if smoke else 0.5)
    a.fetch_reps = a.fetch_reps or (2 if smoke else 30)
    a.append_reps = a.append_reps or (2 if smoke else 30)
    if a.idle is None:
        a.idle = "50" if smoke else "1000,5000,9000"
    a.idle = [int(x) for x in a.idle.split(",") if x.strip()]
    a.idle_concurrency = 20 if smoke else 100
    a.idle_warmup = 0.3 if smoke else 0.5
    a.idle_settle = 0.3 if smoke else 1.0
    targets = [x.strip() for x in a.targets.split(",") if x.strip()]
    bad = [x for x in targets if x not in ALL_TARGETS]
    if bad:
        p.error(f"unknown target(s) {', '.join(bad)}")
    if "direct" not in targets:
        targets.insert(0, "direct")
    a.targets = [t for t in ALL_TARGETS if t in targets]
    if any(n > 9500 for n in a.idle):
        p.error("idle N above 9500 does not fit the 20,000-descriptor limit of one process")
    return a


def render_only(path: Path) -> int:
    report = json.loads(path.read_text())
    md = markdown(report)
    path.with_suffix(".md").write_text(md)
    print(md)
    if path.resolve() == (BENCH_DIR / "results" / "latest.json").resolve() and update_readme(md):
        log("README.md: Benchmarks table updated")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args.render)
    t_start = time.monotonic()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    ensure_installed(args.no_install)
    if any(n in args.targets for n in DAEMON_TARGETS):
        ensure_trio_mailproxy(args.no_install)
    build_dir = Path("/tmp") / f"bench-build-{os.getuid()}"
    loadgen, authhttp = build_c(build_dir)
    machine = machine_info()

    # the daemon's code as it is now (with what its compiled build is built from):
    # restarts later in the run use this same snapshot
    snapshot = Path(tempfile.mkdtemp(prefix="bench-src-", dir="/tmp"))
    copy_project(REPO_ROOT, snapshot)
    servers.TRIO_SRC = snapshot / "src"
    if "compiled" in args.targets:
        servers.TRIO_COMPILED = compiled_build(snapshot)

    bench = Bench(args, loadgen, authhttp)
    stop_requested = []

    def on_signal(signum, frame):  # turn SIGTERM into a clean unwind through finally
        stop_requested.append(signum)
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        run = bench.run()
    finally:
        servers.stop_all()
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(snapshot, ignore_errors=True)
    machine["loadavg_end"] = os.getloadavg()[0]

    report = {
        "timestamp": stamp,
        "machine": machine,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "requested_targets": args.targets,
        "targets": bench.status,
        "run": run,
        "summary": summarise(run, args.idle, args.concurrency),
        "notes": standard_notes(bench, args, run),
        "wall_s": time.monotonic() - t_start,
    }
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="bench-smoke-")) if args.smoke else BENCH_DIR / "results"
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(report)
    prefix = ("smoke-" if args.smoke else "") + stamp
    (out / f"{prefix}.md").write_text(md)
    (out / f"{prefix}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if not args.smoke:
        (out / "latest.md").write_text(md)
        (out / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        if args.out is None and update_readme(md):
            log("README.md: Benchmarks table updated")
    print()
    print(md)
    log(f"wrote {out / (prefix + '.md')} and .json"
        + ("" if args.smoke else f" (and {out / 'latest.md'})"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started has been stopped", file=sys.stderr)
        sys.exit(130)
