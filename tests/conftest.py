"""Shared pytest fixtures and the CI rule for end-to-end tests.

Owns: TLS test certificates (``tls_certs``), private Dovecot instances
(``dovecot_backend``, ``dovecot_factory``) and the rule that under ``CI=true`` no test in
tests/e2e may be skipped: a skip there means CI silently stopped testing against real
servers, so it is reported as a failure instead. Outside CI, e2e tests skip with a reason
naming what is missing (e.g. "dovecot binary not found ...: run scripts/setup.sh").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# tests.support is imported as a package from the repo root, whatever pytest's rootdir or
# import mode (and scripts/demo.py and spec/capture.py do the same).
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.dovecot import (  # noqa: E402
    DEFAULT_MASTER_USERS,
    DEFAULT_USERS,
    DovecotBackend,
    dovecot_missing_reason,
)
from tests.support.net import free_port  # noqa: E402,F401  (re-exported for tests)
from tests.support.tls import TLSFiles, make_tls_files  # noqa: E402

E2E_DIR = REPO_ROOT / "tests" / "e2e"


def in_ci() -> bool:
    """True when running under CI (the CI runner sets CI=true)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _is_e2e(path: Any) -> bool:
    try:
        Path(str(path)).resolve().relative_to(E2E_DIR)
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------ CI: no e2e skips
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/e2e carries the "e2e" marker, so `-m "not e2e"` works.
    for item in items:
        if _is_e2e(item.path):
            item.add_marker(pytest.mark.e2e)


def _skip_reason(longrepr: Any) -> str:
    # A skip's longrepr is (path, lineno, "Skipped: <reason>").
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _ci_failure_text(reason: str) -> str:
    return (
        "e2e test skipped under CI=true, which is a failure: every end-to-end test must "
        f"run in CI (fix .ci/run / scripts/setup.sh). Skip reason: {reason}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # xfail also reports as "skipped" but carries wasxfail: an expected failure is a
    # deliberate, visible decision, not a missing dependency.
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and in_ci()
        and _is_e2e(item.path)
    ):
        report.outcome = "failed"
        report.longrepr = _ci_failure_text(_skip_reason(report.longrepr))
    return report


_ci_skipped_modules = pytest.StashKey[list[str]]()


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    # Module-level skips (pytest.skip(allow_module_level=True), importorskip) never reach
    # pytest_runtest_makereport: they are collection reports. Turning those into errors
    # would abort the whole session ("Interrupted: 1 error during collection") and hide
    # every other result, so they are remembered and fail the session at the end instead.
    report = yield
    if report.skipped and in_ci() and _is_e2e(collector.path):
        collector.config.stash.setdefault(_ci_skipped_modules, []).append(
            f"{report.nodeid}: {_skip_reason(report.longrepr)}"
        )
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = config.stash.get(_ci_skipped_modules, [])
    if skipped:
        terminalreporter.section("e2e modules skipped under CI=true", red=True)
        for line in skipped:
            terminalreporter.line(_ci_failure_text(line), red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.stash.get(_ci_skipped_modules, []) and exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A session-wide trustme CA and PEM files: ca, cert/key (names localhost, 127.0.0.1,
    ::1) and wrong_cert/wrong_key (name wrong.example, same CA)."""
    pytest.importorskip("trustme", reason="trustme not installed: run scripts/setup.sh")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def require_dovecot() -> None:
    """Skip (outside CI) or fail (CI) when Dovecot is not installed."""
    reason = dovecot_missing_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def dovecot_factory(require_dovecot: None) -> Iterator[Callable[..., DovecotBackend]]:
    """Start extra private Dovecots: ``dovecot_factory(**DovecotBackend kwargs)`` returns
    a started instance; all are stopped at the end of the test.
    ``dovecot_factory.proxy(backend_port, **kwargs)`` starts a Dovecot login proxy."""
    started: list[DovecotBackend] = []

    def make(*args: Any, **kwargs: Any) -> DovecotBackend:
        backend = DovecotBackend(*args, **kwargs)
        started.append(backend)
        return backend.start()

    def make_proxy(*args: Any, **kwargs: Any) -> DovecotBackend:
        backend = DovecotBackend.proxy(*args, **kwargs)
        started.append(backend)
        return backend.start()

    make.proxy = make_proxy  # type: ignore[attr-defined]
    try:
        yield make
    finally:
        for backend in reversed(started):
            backend.stop()


@pytest.fixture
def dovecot_backend(
    dovecot_factory: Callable[..., DovecotBackend], tls_certs: TLSFiles
) -> DovecotBackend:
    """A private Dovecot IMAP/POP3 backend, fresh per test.

    Users ``alice``/``alicepw`` and ``bob``/``bobpw`` (DEFAULT_USERS), master user
    ``master``/``masterpw`` (log in as ``alice*master``), login_trusted_networks
    127.0.0.0/8 (so it believes the ID a proxy on loopback sends), TLS with
    ``tls_certs.cert`` on ``imaps_port``/``pop3s_port`` and STARTTLS on the plain ports.
    auth_failure_delay is 0 so failed logins do not slow the suite down.
    """
    return dovecot_factory(
        DEFAULT_USERS,
        master_users=DEFAULT_MASTER_USERS,
        trusted_networks=["127.0.0.0/8"],
        tls_cert=tls_certs.cert,
        tls_key=tls_certs.key,
        auth_failure_delay=0,
    )
