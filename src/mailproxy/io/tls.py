"""TLS contexts for both sides of the proxy (client-facing and backend-facing).

Owns: building ssl.SSLContext objects from [tls]; the STARTTLS upgrade of a trio stream.
The protocol objects only report the STARTTLS boundary; the handshake happens here, on
trio's SSLStream (the stdlib SSLObject over memory BIOs).
"""

from __future__ import annotations

import ssl

import trio

from ..config import TLSConfig


def server_context(tls: TLSConfig) -> ssl.SSLContext:
    """Client-facing context: our certificate, TLS 1.2+."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert tls.cert_file is not None and tls.key_file is not None
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


class BackendContexts:
    """The two backend-facing contexts: `yes` verifies chain and host name against
    ca_file (or the system store); `any-cert` verifies nothing, as Dovecot's any-cert."""

    def __init__(self, tls: TLSConfig | None) -> None:
        verify = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                            cafile=str(tls.ca_file) if tls and tls.ca_file else None)
        any_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        any_cert.check_hostname = False
        any_cert.verify_mode = ssl.CERT_NONE
        for ctx in (verify, any_cert):
            if tls and tls.client_cert_file and tls.client_key_file:
                ctx.load_cert_chain(str(tls.client_cert_file), str(tls.client_key_file))
        self.verify, self.any_cert = verify, any_cert

    def for_mode(self, mode: str) -> ssl.SSLContext:
        return self.any_cert if mode == "any-cert" else self.verify


async def start_tls_server(stream: trio.abc.Stream, ctx: ssl.SSLContext) -> trio.SSLStream:
    tls = trio.SSLStream(stream, ctx, server_side=True)
    await tls.do_handshake()
    return tls


async def start_tls_client(stream: trio.abc.Stream, ctx: ssl.SSLContext,
                           server_hostname: str) -> trio.SSLStream:
    tls = trio.SSLStream(stream, ctx, server_hostname=server_hostname)
    await tls.do_handshake()
    return tls
