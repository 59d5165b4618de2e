"""_framing.LineReader: lines, literals, limits, resumable search, trailing data."""

from __future__ import annotations

import time

import pytest

from mailproxy.protocols import LocalProtocolError, RemoteProtocolError
from mailproxy.protocols._framing import LineReader


def commands(reader: LineReader, data: bytes, *, bytewise: bool = False) -> list[tuple[bytes, ...]]:
    out = []
    chunks = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for c in chunks:
        reader.feed(c)
        while (cmd := reader.next_command()) is not None:
            out.append(cmd)
    return out


@pytest.mark.parametrize("data, expected", [
    (b"a NOOP\r\n", [(b"a NOOP",)]),
    (b"a NOOP\n", [(b"a NOOP",)]),
    (b"a\r\nb\nc\r\n", [(b"a",), (b"b",), (b"c",)]),
    (b"\r\n", [(b"",)]),
    (b"a x\ry\r\n", [(b"a x\ry",)]),                    # a bare CR is not a line end
    (b"a LOGIN {5}\r\nalice {6}\r\nsecret\r\n",
     [(b"a LOGIN {5}", b"alice", b" {6}", b"secret", b"")]),
    (b"a LOGIN {5+}\nali\nc x\r\n", [(b"a LOGIN {5+}", b"ali\nc", b" x")]),
    (b"a X ({0}\r\n)\r\n", [(b"a X ({0}", b"", b")")]),
    (b"a X {}\r\n\r\n", [(b"a X {}", b"", b"")]),       # Dovecot reads {} as {0}
    (b"a X foo{5}\r\n", [(b"a X foo{5}",)]),            # not after SP or "(": no literal
    (b"a X ~{5}\r\n", [(b"a X ~{5}",)]),
    (b"a X {5x}\r\n", [(b"a X {5x}",)]),
    (b"a X {5\r\n", [(b"a X {5",)]),
])
def test_commands(data: bytes, expected: list[tuple[bytes, ...]]) -> None:
    assert commands(LineReader(100, 100), data) == expected
    assert commands(LineReader(100, 100), data, bytewise=True) == expected


def test_literal_bytes_are_never_scanned_for_commands() -> None:
    r = LineReader(100, 100)
    assert commands(r, b"a LOGIN u {12}\r\nb LOGOUT\r\n\r\n\r\n") == [
        (b"a LOGIN u {12}", b"b LOGOUT\r\n\r\n", b"")]


def test_without_literals() -> None:
    r = LineReader(100)
    assert commands(r, b"USER {5}\r\nPASS x\r\n") == [(b"USER {5}",), (b"PASS x",)]
    r = LineReader(100)
    r.feed(b"+OK hi\r\n-ERR")
    assert r.next_line() == b"+OK hi"
    assert r.next_line() is None
    assert r.trailing_data() == b"-ERR"


def test_continuations_are_counted() -> None:
    r = LineReader(100, 100)
    r.feed(b"a LOGIN {5}\r\n")
    assert r.next_command() is None
    assert r.pop_continuations() == 1
    assert r.pop_continuations() == 0
    r.feed(b"alice {1+}\r\nx {0}\r\n\r\n")
    assert r.next_command() == (b"a LOGIN {5}", b"alice", b" {1+}", b"x", b" {0}", b"", b"")
    assert r.pop_continuations() == 1


def too_long() -> RemoteProtocolError:
    return RemoteProtocolError("long", reply=b"* BYE long\r\n")


def too_large() -> RemoteProtocolError:
    return RemoteProtocolError("large", reply=b"* BYE large\r\n")


def test_line_limit() -> None:
    # max_line_length bytes + CRLF fit (Dovecot: 1024 + 2 = LOGIN_MAX_INBUF_SIZE)
    r = LineReader(10, 100, line_too_long=too_long)
    assert commands(r, b"0123456789\r\n") == [(b"0123456789",)]
    assert commands(r, b"0123456789a\n") == [(b"0123456789a",)]     # 12 bytes with LF
    with pytest.raises(RemoteProtocolError) as e:
        commands(LineReader(10, 100, line_too_long=too_long), b"0123456789a\r\n")
    assert e.value.reply == b"* BYE long\r\n"
    r = LineReader(10, line_too_long=too_long)
    r.feed(b"0123456789ab")
    assert r.next_command() is None
    r.feed(b"c")
    with pytest.raises(RemoteProtocolError):
        r.next_command()
    # each segment between literals has the limit; the literal itself does not
    r = LineReader(10, 100, line_too_long=too_long)
    assert commands(r, b"a X {50}\r\n" + b"z" * 50 + b" y\r\n") == [
        (b"a X {50}", b"z" * 50, b" y")]


def test_literal_limit_counts_the_whole_command() -> None:
    r = LineReader(100, 20, literal_too_large=too_large)
    assert commands(r, b"a X {12}\r\n" + b"z" * 12 + b"\r\n")[0][1] == b"z" * 12
    with pytest.raises(RemoteProtocolError) as e:
        commands(LineReader(100, 20, literal_too_large=too_large), b"a X {13}\r\n")
    assert e.value.reply == b"* BYE large\r\n"
    with pytest.raises(RemoteProtocolError):
        commands(LineReader(100, 20, literal_too_large=too_large),
                 b"a X {5}\r\n12345 {5}\r\n")
    with pytest.raises(RemoteProtocolError):
        commands(LineReader(100, 20, literal_too_large=too_large), b"a X {" + b"9" * 30 + b"}\r\n")


def test_raw_lines() -> None:
    def raw(prefix: bytes) -> bool:
        return prefix.startswith(b"a AUTH")

    r = LineReader(10, 100, raw_line=raw, max_raw_line_length=50, line_too_long=too_long,
                   raw_line_too_long=lambda: RemoteProtocolError("raw", reply=b""))
    assert commands(r, b"a AUTH " + b"x" * 30 + b" {5}\r\n") == [(b"a AUTH " + b"x" * 30 + b" {5}",)]
    assert commands(r, b"b X {1}\r\nz\r\n") == [(b"b X {1}", b"z", b"")]
    with pytest.raises(RemoteProtocolError) as e:
        commands(r, b"a AUTH " + b"x" * 50 + b"\r\n")
    assert e.value.reply == b""


def test_next_line_limit_override() -> None:
    r = LineReader(10)
    r.feed(b"x" * 30 + b"\r\n")
    assert r.next_line(max_length=30) == b"x" * 30
    r.feed(b"y" * 40)
    with pytest.raises(RemoteProtocolError):
        r.next_line(max_length=30)


def test_discard_and_trailing_data() -> None:
    r = LineReader(100, 100)
    r.feed(b"a STARTTLS\r\nb LOGIN {5}\r\nal")
    assert r.next_command() == (b"a STARTTLS",)
    assert r.next_command() is None
    assert r.trailing_data() == b"b LOGIN {5}\r\nal"
    assert r.discard() == len(b"b LOGIN {5}\r\nal")
    assert r.pop_continuations() == 0
    r.feed(b"c NOOP\r\n")
    assert r.next_command() == (b"c NOOP",)


def test_eof() -> None:
    r = LineReader(100)
    r.feed(b"abc")
    r.feed(b"")
    assert r.eof and r.next_line() is None
    r.feed(b"")
    with pytest.raises(LocalProtocolError):
        r.feed(b"more")


def test_mixing_line_and_command_mid_command_is_refused() -> None:
    r = LineReader(100, 100)
    r.feed(b"a X {3}\r\nab")
    assert r.next_command() is None
    with pytest.raises(LocalProtocolError):
        r.next_line()


def test_bytewise_input_is_linear() -> None:
    # 200 KB fed one byte at a time must stay O(n): resumable LF search.
    def feed(n: int) -> float:
        r = LineReader(10 * n, 10)
        t = time.perf_counter()
        for _ in range(n):
            r.feed(b"x")
            assert r.next_command() is None
        return time.perf_counter() - t

    # best of three against scheduling noise; linear is ~10x, quadratic ~100x
    small = min(feed(20_000) for _ in range(3))
    big = min(feed(200_000) for _ in range(3))
    assert big < small * 40


def test_many_pipelined_commands_are_linear() -> None:
    data = b"a NOOP\r\n" * 200_000
    r = LineReader(100, 100)
    t = time.perf_counter()
    r.feed(data)
    n = 0
    while r.next_command() is not None:
        n += 1
    assert n == 200_000
    assert time.perf_counter() - t < 5
