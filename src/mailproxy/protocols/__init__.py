"""``mailproxy.protocols``: a sans-io library for mail login proxies.

Each protocol module offers a server-role connection (the proxy facing a client, until the
login is done) and a client-role connection (the proxy logging in to a backend). Both take
bytes in (``receive_data``), give typed events out (``next_event``) and turn the driver's
events into bytes (``send`` / ``data_to_send``). Nothing under this package imports
socket, ssl, trio, anyio, asyncio or selectors; TLS happens in the driver, and a connection
reports the STARTTLS boundary and refuses bytes past it.

Public names:

- :mod:`imap` — ``imap.ServerConnection``, ``imap.ClientConnection``;
- :mod:`sasl` — SASL PLAIN/LOGIN/XOAUTH2/OAUTHBEARER, both roles;
- :mod:`forwarding` — ``ForwardedFields`` (ID / XCLIENT session forwarding);
- events (:mod:`._events`): ``NEED_DATA``, ``Event``, ``Credentials``, ``StartTLSRequested``,
  ``AuthRequested``, ``ClientIdentified``, ``ConnectionEnded``, ``AuthSucceeded``,
  ``AuthFailed``, ``FailureKind``, ``Referral``, ``Bye``, ``BackendLogin``,
  ``StartTLSRequired``, ``UntaggedRelay``, ``BackendLoggedIn``, ``BackendLoginFailed``,
  ``BackendFailure``;
- errors: ``ProtocolError``, ``RemoteProtocolError``, ``LocalProtocolError``;
- ``Secret``;
- states: ``ServerState``, ``ClientState``.
"""

from . import forwarding, imap, sasl
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    NEED_DATA,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    BackendFailure,
    BackendLoggedIn,
    BackendLogin,
    BackendLoginFailed,
    Bye,
    ClientIdentified,
    ConnectionEnded,
    Credentials,
    Event,
    FailureKind,
    Referral,
    StartTLSRequested,
    StartTLSRequired,
    UntaggedRelay,
)
from ._secret import Secret
from ._states import ClientState, ServerState
from .forwarding import ForwardedFields

__all__ = [
    "imap",
    "sasl",
    "forwarding",
    "ForwardedFields",
    "Secret",
    "ProtocolError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "NEED_DATA",
    "Event",
    "Credentials",
    "StartTLSRequested",
    "AuthRequested",
    "ClientIdentified",
    "ConnectionEnded",
    "AuthSucceeded",
    "AuthFailed",
    "FailureKind",
    "Referral",
    "Bye",
    "BackendLogin",
    "StartTLSRequired",
    "UntaggedRelay",
    "BackendLoggedIn",
    "BackendLoginFailed",
    "BackendFailure",
    "ServerState",
    "ClientState",
]
