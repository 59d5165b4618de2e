"""Properties of the framing and of the IMAP server on arbitrary input (hypothesis)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailproxy.protocols import (
    NEED_DATA,
    AuthFailed,
    AuthRequested,
    ConnectionEnded,
    Event,
    FailureKind,
    RemoteProtocolError,
    StartTLSRequested,
    imap,
)
from mailproxy.protocols._framing import LineReader

# PROTOCOL_PROPERTY_EXAMPLES raises the example count for a longer local run.
SETTINGS = settings(max_examples=int(os.environ.get("PROTOCOL_PROPERTY_EXAMPLES", "300")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Fragments that make interesting IMAP input more likely than uniform random bytes.
FRAGMENTS = st.sampled_from([
    b"a ", b"LOGIN ", b"AUTHENTICATE ", b"PLAIN", b" LOGIN", b"ID ", b"(", b")", b'"', b"\\",
    b"{3}", b"{2+}", b"{999}", b"{}", b"\r\n", b"\n", b"\r", b"*", b" ", b"NIL", b"STARTTLS",
    b"CAPABILITY", b"LOGOUT", b"=", b"AGFsaWNlAHB3", b"~{1}", b"\0", b"\xff", b"x" * 70,
])
INPUT = st.lists(st.one_of(FRAGMENTS, st.binary(max_size=20)), max_size=40).map(b"".join)


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def reader_commands(chunks: list[bytes]) -> tuple[list[tuple[bytes, ...]], str | None]:
    r = LineReader(16, 64)
    out: list[tuple[bytes, ...]] = []
    try:
        for c in chunks:
            r.feed(c)
            while (cmd := r.next_command()) is not None:
                out.append(cmd)
            # after NEED_DATA the buffer stays within the limits
            assert len(r) <= 16 + 64 + 4
    except RemoteProtocolError as e:
        return out, e.msg
    return out, None


@SETTINGS
@given(INPUT, st.lists(st.integers(min_value=0), max_size=8))
def test_any_split_gives_the_same_commands(data: bytes, cuts: list[int]) -> None:
    assert reader_commands(splits(data, cuts)) == reader_commands([data])


def drive_server(chunks: list[bytes]) -> tuple[list[Event], bytes, bytes | None]:
    """Events and output; the error reply if the connection raised. Nothing else may
    escape: any other exception fails the property."""
    conn = imap.ServerConnection(disable_plaintext_auth=False, tls_available=True,
                                 max_line_length=64, max_literal_size=128,
                                 mechanisms=["PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER"])
    events: list[Event] = []
    out = bytearray(conn.data_to_send())
    for chunk in chunks:
        if not chunk:
            continue          # b"" would mean EOF
        conn.receive_data(chunk)
        while True:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as e:
                out += conn.data_to_send()
                return events, bytes(out), e.reply
            out += conn.data_to_send()
            if ev is NEED_DATA:
                assert len(conn._reader) <= 64 + 128 + 4
                break
            events.append(ev)  # type: ignore[arg-type]
            if isinstance(ev, ConnectionEnded):
                return events, bytes(out), None
            if isinstance(ev, AuthRequested):
                out += conn.send(AuthFailed(FailureKind.AUTH_FAILED))
            elif isinstance(ev, StartTLSRequested):
                # where the handshake falls depends on the split: compare up to here, and
                # nothing sent after STARTTLS may survive it
                conn.tls_started()
                assert conn.trailing_data() == b""
                return events, bytes(out), None
    return events, bytes(out), None


@SETTINGS
@given(INPUT, st.lists(st.integers(min_value=0), max_size=8))
def test_server_any_split_same_events(data: bytes, cuts: list[int]) -> None:
    whole = drive_server([data])
    assert drive_server(splits(data, cuts)) == whole


@SETTINGS
@given(st.binary(max_size=600))
def test_server_arbitrary_bytes(data: bytes) -> None:
    events, out, reply = drive_server([data])
    assert all(isinstance(e, Event) for e in events)
    # every line we send ends in CRLF (nothing half-written, nothing injected raw)
    assert out.endswith(b"\r\n")


@SETTINGS
@given(st.binary(max_size=300))
def test_server_bytewise(data: bytes) -> None:
    assert drive_server([data[i:i + 1] for i in range(len(data))]) == drive_server([data])
