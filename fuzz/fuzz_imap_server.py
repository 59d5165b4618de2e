"""atheris target: arbitrary client bytes into ``imap.ServerConnection``.

Each input is fed whole and byte by byte (cf. h11 ``fuzz/afl-server.py``). The only
exception allowed out of the connection is ``RemoteProtocolError``, and both feeds must
give the same events, output and error reply. The first input byte picks a configuration
(secured or not, plaintext allowed or not, how AuthRequested is answered).

    python3 fuzz/fuzz_imap_server.py -max_total_time=60 [corpus_dir ...]
    (seeds: fuzz/seeds/imap_server/; copy them, libFuzzer writes into its corpus dir)
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from mailproxy.protocols import (
        NEED_DATA,
        AuthFailed,
        AuthRequested,
        AuthSucceeded,
        BackendLoggedIn,
        ConnectionEnded,
        FailureKind,
        RemoteProtocolError,
        StartTLSRequested,
        imap,
    )

MECHS = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
SUCCESS = AuthSucceeded(BackendLoggedIn(b"L OK Logged in", ("IMAP4rev1", "IDLE")))
FAILURE = AuthFailed(FailureKind.AUTH_FAILED)


def drive(config: int, chunks: list[bytes]) -> tuple[list[object], bytes, bytes | None]:
    conn = imap.ServerConnection(
        secured=bool(config & 1), disable_plaintext_auth=bool(config & 2),
        tls_available=bool(config & 4), max_line_length=64, max_literal_size=256,
        mechanisms=MECHS)
    answer = SUCCESS if config & 8 else FAILURE
    events: list[object] = []
    out = bytearray(conn.data_to_send())
    for chunk in chunks:
        conn.receive_data(chunk)
        while conn.state is not imap.ServerState.PROXYING:
            try:
                ev = conn.next_event()
            except RemoteProtocolError as e:
                out += conn.data_to_send()
                return events, bytes(out), e.reply
            out += conn.data_to_send()
            if ev is NEED_DATA:
                if len(conn._reader) > 64 + 256 + 4:
                    raise AssertionError("buffer over its limits")
                break
            events.append(ev)
            if isinstance(ev, ConnectionEnded):
                return events, bytes(out), None
            if isinstance(ev, AuthRequested):
                out += conn.send(answer)
            elif isinstance(ev, StartTLSRequested):
                # Where the handshake falls in the byte stream depends on the split, so
                # the comparison ends here; bytes after it must not have been parsed.
                conn.tls_started()
                if conn.trailing_data():
                    raise AssertionError("bytes after STARTTLS survived the handshake")
                return events, bytes(out), None
    if conn.state is imap.ServerState.PROXYING:
        # what the client pipelined behind its login goes to the backend, whatever the split
        return events, bytes(out), conn.trailing_data()
    return events, bytes(out), None


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    config, payload = data[0], data[1:]
    if not payload:
        return
    whole = drive(config, [payload])
    bytewise = drive(config, [payload[i:i + 1] for i in range(len(payload))])
    if whole != bytewise:
        raise AssertionError(f"whole {whole!r} != bytewise {bytewise!r}")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
