"""Logging set-up and Dovecot-shaped log lines.

Owns: the stderr handler (text or JSON) and the helpers that build the line shapes
operators grep for (`proxy(USER,IP:PORT): Started proxying to ...`, `Disconnected ...:
user=<...>, rip=..., lip=..., session=<...>`). Nothing here ever receives a password:
callers pass user names and addresses only.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER_NAME = "mailproxy"
log = logging.getLogger(LOGGER_NAME)

# The text handler set up by setup_logging(), for info_line(); None = go through logging.
_text_handler: logging.StreamHandler | None = None


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        })


class _TextFormatter(logging.Formatter):
    """`YYYY-mm-dd HH:MM:SS LEVEL message`; the time text is made once per second, not
    once per line (two lines per login add up)."""

    _second = -1
    _text = ""

    def prefix(self, created: float, levelname: str) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._text} {levelname} "

    def format(self, record: logging.LogRecord) -> str:
        text = self.prefix(record.created, record.levelname) + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def info_line(message: str) -> None:
    """One INFO line whose text the caller has already built: the two lines every login
    writes (started proxying, disconnected). With the text format and our own handler in
    place, the line is formatted and written directly, skipping the LogRecord and the
    handler chain, which cost about a tenth of a login's CPU; otherwise (JSON, tests with
    their own handlers) it is an ordinary log.info()."""
    handler = _text_handler
    if handler is None or log.handlers != [handler] or not log.isEnabledFor(logging.INFO):
        log.info("%s", message)
        return
    formatter = handler.formatter
    assert isinstance(formatter, _TextFormatter)
    line = formatter.prefix(time.time(), "INFO") + message + "\n"
    handler.acquire()
    try:
        stream = handler.stream
        stream.write(line)
        stream.flush()
    except Exception:
        handler.handleError(logging.makeLogRecord({"msg": message}))
    finally:
        handler.release()


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    # Our lines carry their own context: skip the per-record getpid()/thread look-ups and
    # the stack walk that finds the caller's file and line (the costliest part of a record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _text_handler
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
        _text_handler = None
    else:
        handler.setFormatter(_TextFormatter())
        _text_handler = handler
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def login_vars(user: str | None, method: str | None, rip: str, lip: str, session: str,
               **extra: object) -> str:
    """Dovecot's login_log_format_elements, in its order."""
    parts = []
    if user is not None:
        parts.append(f"user=<{user}>")
    if method:
        parts.append(f"method={method}")
    parts.append(f"rip={rip}")
    parts.append(f"lip={lip}")
    for key, value in extra.items():
        parts.append(f"{key}={value}")
    parts.append(f"session=<{session}>")
    return ", ".join(parts)
