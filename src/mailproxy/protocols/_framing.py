"""``LineReader``: turns received bytes into lines and IMAP commands with literals.

Owns: framing only (where a line or command ends, literal sizes, size limits). It knows
no command names and builds no replies: the protocol hands it the error builders and, for
IMAP, a predicate saying which command lines are "raw" (AUTHENTICATE with its long SASL-IR).
Imports only ``_errors``.

Design (cf. h11 ``_receivebuffer.py``, imap-codec ``fragmentizer.rs``):
- one ``bytearray``; a command always starts at index 0 and is deleted when handed out
  (``del buf[:n]`` is amortized O(1) at the front of a bytearray);
- the LF search resumes where it stopped, so byte-at-a-time input stays O(n);
- lines end in CRLF or a bare LF (Dovecot accepts LF-only lines); the CR is stripped;
- limits follow Dovecot's login input buffer: a line may hold ``max_line_length`` bytes
  plus its CRLF (LOGIN_MAX_INBUF_SIZE = 1024+2); an unfinished line past that raises at
  once, so a peer can never make the buffer grow without bound;
- with ``max_literal_size`` set, a segment ending in ``{n}`` or ``{n+}`` (after SP or "(")
  announces a literal of n bytes that is part of the same command; the running size of
  the command including the literal may not exceed ``max_literal_size`` (Dovecot's parser
  check ``literal_size > max_line_size - line_size``). Literal bytes are framed, never
  scanned for line ends, so they can never be read as a command.
"""

from __future__ import annotations

from typing import Callable

from ._errors import LocalProtocolError, RemoteProtocolError

__all__ = ["LineReader"]

ErrorFactory = Callable[[], RemoteProtocolError]

_MAX_LITERAL_DIGITS = 20


def _default_too_long() -> RemoteProtocolError:
    return RemoteProtocolError("line too long")


def _default_too_large() -> RemoteProtocolError:
    return RemoteProtocolError("literal too large")


class LineReader:
    """Line and command framing over one receive buffer.

    ``max_line_length``: bytes of one line (or one command segment) without its CRLF.
    ``max_literal_size``: None disables literal parsing (POP3, SMTP, backend replies);
    else the most bytes one command may reach including its literals.
    ``line_too_long`` / ``literal_too_large``: build the ``RemoteProtocolError`` (with the
    protocol's reply) to raise. ``raw_line(prefix)``: True if the command starting with
    ``prefix`` is a raw line: no literal parsing, limit ``max_raw_line_length``, error
    ``raw_line_too_long`` (IMAP AUTHENTICATE). It is only asked when it matters: when the
    first line of a command passes the normal limit or looks like it announces a literal.
    """

    __slots__ = (
        "_buf", "_search", "_seg_start", "_spans", "_lit_end", "_eof", "_limit", "_raw",
        "_continuations", "max_line_length", "max_literal_size", "max_raw_line_length",
        "_line_too_long", "_literal_too_large", "_raw_line", "_raw_line_too_long",
    )

    def __init__(
        self,
        max_line_length: int,
        max_literal_size: int | None = None,
        *,
        line_too_long: ErrorFactory | None = None,
        literal_too_large: ErrorFactory | None = None,
        raw_line: Callable[[bytes], bool] | None = None,
        max_raw_line_length: int | None = None,
        raw_line_too_long: ErrorFactory | None = None,
    ) -> None:
        if max_line_length < 1:
            raise ValueError("max_line_length must be positive")
        if max_literal_size is not None and max_literal_size < 0:
            raise ValueError("max_literal_size must be >= 0")
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_raw_line_length = max_raw_line_length if max_raw_line_length is not None \
            else max_line_length
        self._line_too_long = line_too_long or _default_too_long
        self._literal_too_large = literal_too_large or _default_too_large
        self._raw_line = raw_line
        self._raw_line_too_long = raw_line_too_long or self._line_too_long
        self._buf = bytearray()
        self._eof = False
        self._continuations = 0
        self._reset_command()

    def _reset_command(self) -> None:
        self._search = 0          # where the LF search resumes
        self._seg_start = 0       # start of the current text segment
        self._spans: list[tuple[int, int]] = []   # text, literal, text, ... spans
        self._lit_end = -1        # end of the literal being read, -1: none
        self._limit = self.max_line_length
        self._raw = False

    # ------------------------------------------------------------------ input

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes; ``b""`` marks EOF."""
        if self._eof:
            if data:
                raise LocalProtocolError("received data after EOF")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def eof(self) -> bool:
        """True once ``feed(b"")`` was called."""
        return self._eof

    def __len__(self) -> int:
        return len(self._buf)

    def trailing_data(self) -> bytes:
        """All bytes not yet handed out (a partly framed command included)."""
        return bytes(self._buf)

    def discard(self) -> int:
        """Drop every buffered byte (STARTTLS: nothing sent before the handshake may be
        parsed after it). Returns how many were dropped."""
        n = len(self._buf)
        self._buf.clear()
        self._continuations = 0
        self._reset_command()
        return n

    def pop_continuations(self) -> int:
        """How many synchronizing literals were announced since the last call (the IMAP
        server answers each with ``+ OK``)."""
        n = self._continuations
        self._continuations = 0
        return n

    # ------------------------------------------------------------------ framing

    def _over(self, size: int) -> bool:
        """True if a first-segment/line of *size* bytes (terminator included) is over the
        limit, after giving the raw-line predicate its say."""
        if size <= self._limit + 2:
            return False
        # The predicate always sees the same window (the first max_line_length + 2 bytes),
        # so its answer cannot depend on how the input was split.
        if (not self._raw and not self._spans and self._raw_line is not None
                and self._raw_line(bytes(self._buf[:self.max_line_length + 2]))):
            self._raw = True
            self._limit = self.max_raw_line_length
            return size > self._limit + 2
        return True

    def _raise_too_long(self) -> None:
        raise (self._raw_line_too_long if self._raw else self._line_too_long)()

    def next_line(self, max_length: int | None = None,
                  too_long: ErrorFactory | None = None) -> bytes | None:
        """The next line without its CRLF/LF, or None if it is not complete yet. No literal
        parsing. ``max_length``/``too_long`` override the reader's limit for this line (IMAP
        SASL responses may be longer than command lines)."""
        if self._spans or self._lit_end >= 0:
            raise LocalProtocolError("next_line() while a command is partly framed")
        buf = self._buf
        limit = self.max_line_length if max_length is None else max_length
        lf = buf.find(b"\n", self._search)
        if lf < 0:
            self._search = len(buf)
            if len(buf) > limit + 2:
                raise (too_long or self._line_too_long)()
            return None
        if lf + 1 > limit + 2:
            raise (too_long or self._line_too_long)()
        end = lf - 1 if lf and buf[lf - 1] == 13 else lf
        line = bytes(buf[:end])
        del buf[:lf + 1]
        self._search = 0
        return line

    def next_command(self) -> tuple[bytes, ...] | None:
        """The next command as ``(text, literal, text, ..., text)`` (always an odd number of
        parts; text parts have no CRLF; a text part before a literal ends with its
        ``{n}``/``{n+}``), or None if incomplete. Without literal parsing it is ``(line,)``."""
        buf = self._buf
        literals = self.max_literal_size is not None
        while True:
            if self._lit_end >= 0:
                if len(buf) < self._lit_end:
                    return None
                # _seg_start points at the literal's first byte (after the header's LF)
                self._spans.append((self._seg_start, self._lit_end))
                self._seg_start = self._search = self._lit_end
                self._lit_end = -1
            seg_start = self._seg_start
            lf = buf.find(b"\n", self._search)
            if lf < 0:
                self._search = len(buf)
                if self._over(len(buf) - seg_start):
                    self._raise_too_long()
                return None
            if self._over(lf + 1 - seg_start):
                self._raise_too_long()
            end = lf - 1 if lf > seg_start and buf[lf - 1] == 13 else lf
            if literals and not self._raw and end > seg_start and buf[end - 1] == 0x7D:  # }
                size = self._literal_header(seg_start, end)
                if size is not None and not (
                        not self._spans and self._raw_line is not None
                        and self._raw_line(bytes(buf[:min(end, self.max_line_length + 2)]))):
                    n, sync = size
                    assert self.max_literal_size is not None
                    if end >= self.max_literal_size or n > self.max_literal_size - end:
                        raise self._literal_too_large()
                    if sync:
                        self._continuations += 1
                    self._spans.append((seg_start, end))
                    self._seg_start = lf + 1
                    self._lit_end = lf + 1 + n
                    self._search = self._lit_end
                    continue
                if size is not None:
                    self._raw = True
                    self._limit = self.max_raw_line_length
            self._spans.append((seg_start, end))
            parts = tuple([bytes(buf[a:b]) for a, b in self._spans])
            del buf[:lf + 1]
            self._reset_command()
            return parts

    def _literal_header(self, seg_start: int, end: int) -> tuple[int, bool] | None:
        """Parse ``{digits}`` / ``{digits+}`` ending at *end*, preceded by SP or "(".
        Returns (size, synchronizing) or None."""
        buf = self._buf
        brace = buf.rfind(b"{", seg_start, end)
        if brace <= seg_start or buf[brace - 1] not in (0x20, 0x28):
            return None
        inner = bytes(buf[brace + 1:end - 1])
        sync = True
        if inner.endswith(b"+"):
            inner = inner[:-1]
            sync = False
        if inner and not inner.isdigit():
            return None
        if len(inner) > _MAX_LITERAL_DIGITS:
            raise self._literal_too_large()   # Dovecot: size overflow is "too large"
        # Dovecot accepts an empty size ({} or {+}) as 0.
        return (int(inner) if inner else 0), sync
