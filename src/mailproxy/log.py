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

# Lines wait at most this long in the daemon's buffer (warnings and errors never wait).
FLUSH_INTERVAL = 0.1
BUFFER_LIMIT = 16384


class LineHandler(logging.StreamHandler):
    """The stderr handler. While the daemon runs it (`batching`), INFO lines collect in a
    buffer written out every FLUSH_INTERVAL, or at BUFFER_LIMIT characters: one write(2)
    for many lines instead of one per line (two per login). A WARNING or worse writes
    the buffer and itself at once, so order is kept and problems show up immediately."""

    def __init__(self, stream: object) -> None:
        super().__init__(stream)          # type: ignore[arg-type]
        self.batching = False
        self._lines: list[str] = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            self.handleError(record)
            return
        self.write_line(line, urgent=record.levelno >= logging.WARNING)

    def write_line(self, line: str, urgent: bool = False) -> None:
        # Under the handler's lock: a line may come from a worker thread (trio.to_thread)
        # while the daemon's thread writes the buffer out.
        self.acquire()
        try:
            self._lines.append(line)
            self._size += len(line)
            if urgent or not self.batching or self._size >= BUFFER_LIMIT:
                self.flush()
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._lines:
                text = "".join(self._lines)
                self._lines.clear()
                self._size = 0
                self.stream.write(text)
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        except Exception:
            pass              # stderr gone (closed pipe): nothing left to tell
        finally:
            self.release()


# The handler set up by setup_logging().
_handler: LineHandler | None = None


async def flush_periodically(interval: float = FLUSH_INTERVAL) -> None:
    """The daemon's log writer task: turns batching on, writes the buffer every
    *interval*, and writes what is left when cancelled (shutdown)."""
    import trio

    if _handler is None:
        return
    _handler.batching = True
    try:
        while True:
            await trio.sleep(interval)
            flush()
    finally:
        if _handler is not None:
            _handler.batching = False
        flush()


def flush() -> None:
    """Write any buffered lines now (before a process exits with os._exit)."""
    if _handler is not None:
        _handler.flush()


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
    handler = _handler
    formatter = handler.formatter if handler is not None else None
    if (not isinstance(formatter, _TextFormatter) or log.handlers != [handler]
            or not log.isEnabledFor(logging.INFO)):
        log.info("%s", message)
        return
    handler.write_line(formatter.prefix(time.time(), "INFO") + message + "\n")


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    # Our lines carry their own context: skip the per-record getpid()/thread look-ups and
    # the stack walk that finds the caller's file and line (the costliest part of a record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _handler
    if _handler is not None:
        _handler.flush()          # a reload: nothing buffered is lost
    handler = LineHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JSONFormatter())
    else:
        handler.setFormatter(_TextFormatter())
    if _handler is not None:
        handler.batching = _handler.batching
    _handler = handler
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
