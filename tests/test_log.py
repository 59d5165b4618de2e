"""The log lines operators read: the direct INFO path must write exactly what the
logging module would, honour the level, and step aside for JSON and foreign handlers."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest

from mailproxy import log as logmod


class Captured(io.StringIO):
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.monkeypatch = monkeypatch

    def setup(self, fmt: str, level: str) -> None:
        # sys.stderr is swapped here, in the test's call phase: pytest's own capture
        # replaces it again between fixture set-up and the call.
        self.monkeypatch.setattr(logmod.sys, "stderr", self)
        logmod.setup_logging(fmt, level)


@pytest.fixture
def captured(monkeypatch):
    """setup_logging() writing into a StringIO instead of stderr; restored afterwards."""
    logger = logging.getLogger(logmod.LOGGER_NAME)
    saved = (logger.handlers[:], logger.level, logger.propagate, logmod._handler)
    yield Captured(monkeypatch)
    logger.handlers[:], logger.level, logger.propagate = saved[:3]
    logmod._handler = saved[3]


LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR) (.*)")


def test_info_line_matches_a_logged_line(captured):
    captured.setup("text", "info")
    logmod.info_line("imap-login: proxy(u,127.0.0.1:143): Started proxying to <127.0.0.1>")
    logmod.log.info("%s: %s", "imap-login", "through logging")
    lines = captured.getvalue().splitlines()
    assert [LINE.fullmatch(x).groups() for x in lines] == [
        ("INFO", "imap-login: proxy(u,127.0.0.1:143): Started proxying to <127.0.0.1>"),
        ("INFO", "imap-login: through logging"),
    ]


def test_info_line_respects_the_level(captured):
    captured.setup("text", "warning")
    logmod.info_line("not shown")
    logmod.log.warning("shown")
    assert [LINE.fullmatch(x).groups() for x in captured.getvalue().splitlines()] == [
        ("WARNING", "shown")]


def test_info_line_with_json_format_goes_through_logging(captured):
    captured.setup("json", "info")
    logmod.info_line('a "quoted" message')
    (record,) = [json.loads(x) for x in captured.getvalue().splitlines()]
    assert record["level"] == "info" and record["message"] == 'a "quoted" message'


def test_info_line_reaches_a_handler_added_later(captured, caplog):
    # caplog adds its own handler: the direct path must not bypass it
    captured.setup("text", "info")
    logger = logging.getLogger(logmod.LOGGER_NAME)
    logger.addHandler(caplog.handler)
    try:
        logmod.info_line("seen by both")
    finally:
        logger.removeHandler(caplog.handler)
    assert [r.getMessage() for r in caplog.records] == ["seen by both"]
    assert "seen by both" in captured.getvalue()


async def test_daemon_batches_info_lines_but_never_warnings(captured, autojump_clock):
    import trio
    import trio.testing

    captured.setup("text", "info")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(logmod.flush_periodically)
        await trio.testing.wait_all_tasks_blocked()   # the writer runs: batching
        logmod.info_line("first login")
        logmod.log.info("second line")
        assert captured.getvalue() == ""         # waiting for the next flush...
        await trio.sleep(logmod.FLUSH_INTERVAL * 1.5)
        assert [LINE.fullmatch(x).group(2) for x in captured.getvalue().splitlines()] == [
            "first login", "second line"]
        logmod.info_line("third")
        logmod.log.error("an error")             # ...but an error goes out at once,
        assert [LINE.fullmatch(x).group(2)       # after what was buffered before it
                for x in captured.getvalue().splitlines()][2:] == ["third", "an error"]
        logmod.info_line("at shutdown")
        nursery.cancel_scope.cancel()
    assert captured.getvalue().splitlines()[-1].endswith("INFO at shutdown")
    logmod.info_line("after the daemon")         # no writer task: written at once
    assert captured.getvalue().splitlines()[-1].endswith("INFO after the daemon")
