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

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        text = f"{self._text} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    # Our lines carry their own context: skip the per-record getpid()/thread look-ups and
    # the stack walk that finds the caller's file and line (the costliest part of a record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(_TextFormatter())
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
