"""The login flow of both roles: python-statemachine declarations, and the plain tables
that run.

Owns: the state enums, every (state, event) → state rule of the login flow (protocol-
neutral: IMAP today, POP3/SMTP/ManageSieve reuse it), the compiler from declaration to
table, and the Mermaid diagrams in ``spec/diagrams/`` (``python3 -m
mailproxy.protocols._states`` rewrites them; ``--check`` exits 1 when they are stale).
Knows nothing of bytes or roles' wire formats (cf. h11 ``_state.py``).

Why two forms: python-statemachine is the readable declaration that drives the diagrams
and the tests, but a live machine costs ~0.3 ms and ~10 KB per session and importing it
pulls in asyncio, socket and ssl, which ``protocols/`` must never import. So the
connections use ``SERVER_TRANSITIONS`` / ``CLIENT_TRANSITIONS``, plain dicts, and
``tests/protocols/test_states.py`` checks ``compile_table(<declaration>)`` equals them.
The declarations are built lazily (``ServerLoginFlow``/``ClientLoginFlow`` module
attributes, PEP 562), and never instantiated per connection.

Events are outcomes, not guards (``credentials_received``, ``auth_failed``), so every rule
is a pure (state, event) → state lookup. Lines that change no login state (CAPABILITY,
NOOP, ID, a bad command) never touch the table.
"""

from __future__ import annotations

import enum
from typing import Any, Mapping

__all__ = [
    "ServerState",
    "ClientState",
    "SERVER_TRANSITIONS",
    "CLIENT_TRANSITIONS",
    "compile_table",
    "mermaid",
    "write_diagrams",
]


class ServerState(enum.Enum):
    """Client-facing (proxy as server) login states."""

    # Members are singletons: identity hashing is exact, and cheaper than Enum's
    # hash of the name, paid on every transition-table lookup.
    __hash__ = object.__hash__

    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"  # greeting sent, reading commands
    STARTTLS = "STARTTLS"                    # STARTTLS OK queued; waiting for tls_started()
    AUTHENTICATING = "AUTHENTICATING"        # SASL challenge sent; reading the response
    LOGGING_IN = "LOGGING_IN"                # AuthRequested out; waiting for AuthSucceeded/Failed
    PROXYING = "PROXYING"                    # login done; bytes belong to the relay
    LOGOUT = "LOGOUT"                        # closed (LOGOUT, Bye, EOF, too many errors)
    ERROR = "ERROR"                          # the peer broke the protocol


class ClientState(enum.Enum):
    """Backend-facing (proxy as client) login states: what the connection waits for."""

    # Members are singletons: identity hashing is exact, and cheaper than Enum's
    # hash of the name, paid on every transition-table lookup.
    __hash__ = object.__hash__

    BANNER = "BANNER"                # connected, waiting for the greeting
    ID = "ID"                        # nopipelining: ID sent alone, waiting for its reply
    STARTTLS = "STARTTLS"            # STARTTLS sent, waiting for its reply
    TLS_HANDSHAKE = "TLS_HANDSHAKE"  # STARTTLS accepted; waiting for tls_started()
    CAPABILITY = "CAPABILITY"        # nopipelining: CAPABILITY sent, login waits for its OK
    LOGIN = "LOGIN"                  # LOGIN/AUTHENTICATE sent, waiting for the tagged reply
    LOGGED_IN = "LOGGED_IN"          # success; bytes belong to the relay
    FAILED = "FAILED"                # BackendLoginFailed reported


_S = ServerState
_C = ClientState

SERVER_TRANSITIONS: dict[tuple[ServerState, str], ServerState] = {
    (_S.NOT_AUTHENTICATED, "starttls_accepted"): _S.STARTTLS,
    (_S.STARTTLS, "tls_established"): _S.NOT_AUTHENTICATED,
    (_S.NOT_AUTHENTICATED, "challenge_sent"): _S.AUTHENTICATING,
    (_S.AUTHENTICATING, "challenge_sent"): _S.AUTHENTICATING,
    (_S.NOT_AUTHENTICATED, "credentials_received"): _S.LOGGING_IN,
    (_S.AUTHENTICATING, "credentials_received"): _S.LOGGING_IN,
    (_S.AUTHENTICATING, "client_aborted"): _S.NOT_AUTHENTICATED,
    (_S.AUTHENTICATING, "auth_failed"): _S.NOT_AUTHENTICATED,
    (_S.LOGGING_IN, "auth_failed"): _S.NOT_AUTHENTICATED,
    (_S.LOGGING_IN, "failure_challenge_sent"): _S.AUTHENTICATING,
    (_S.LOGGING_IN, "auth_succeeded"): _S.PROXYING,
    (_S.NOT_AUTHENTICATED, "logged_out"): _S.LOGOUT,
    (_S.NOT_AUTHENTICATED, "closed"): _S.LOGOUT,
    (_S.STARTTLS, "closed"): _S.LOGOUT,
    (_S.AUTHENTICATING, "closed"): _S.LOGOUT,
    (_S.LOGGING_IN, "closed"): _S.LOGOUT,
}

CLIENT_TRANSITIONS: dict[tuple[ClientState, str], ClientState] = {
    (_C.BANNER, "id_sent"): _C.ID,
    (_C.BANNER, "starttls_sent"): _C.STARTTLS,
    (_C.ID, "starttls_sent"): _C.STARTTLS,
    (_C.STARTTLS, "starttls_accepted"): _C.TLS_HANDSHAKE,
    (_C.BANNER, "capability_sent"): _C.CAPABILITY,
    (_C.ID, "capability_sent"): _C.CAPABILITY,
    (_C.TLS_HANDSHAKE, "capability_sent"): _C.CAPABILITY,
    (_C.BANNER, "login_sent"): _C.LOGIN,
    (_C.ID, "login_sent"): _C.LOGIN,
    (_C.TLS_HANDSHAKE, "login_sent"): _C.LOGIN,
    (_C.CAPABILITY, "login_sent"): _C.LOGIN,
    (_C.LOGIN, "logged_in"): _C.LOGGED_IN,
    (_C.BANNER, "failed"): _C.FAILED,
    (_C.ID, "failed"): _C.FAILED,
    (_C.STARTTLS, "failed"): _C.FAILED,
    (_C.TLS_HANDSHAKE, "failed"): _C.FAILED,
    (_C.CAPABILITY, "failed"): _C.FAILED,
    (_C.LOGIN, "failed"): _C.FAILED,
}


def compile_table(cls: Any) -> dict[tuple[Any, str], Any]:
    """A python-statemachine class → ``{(source state value, event id): target value}``."""
    table: dict[tuple[Any, str], Any] = {}
    for state in cls.states:
        for transition in state.transitions:
            for event in transition.events:
                key = (transition.source.value, event.id)
                if key in table and table[key] != transition.target.value:
                    raise ValueError(f"non-deterministic transition {key}")
                table[key] = transition.target.value
    return table


def _declare() -> dict[str, Any]:
    """Build the declarations (imports python-statemachine; tests and tools only)."""
    from statemachine import State, StateMachine

    class ServerLoginFlow(StateMachine):
        """Client-facing login flow (the proxy acts as the server until login)."""

        not_authenticated = State(initial=True, value=_S.NOT_AUTHENTICATED)
        starttls = State(value=_S.STARTTLS)
        authenticating = State(value=_S.AUTHENTICATING)
        logging_in = State(value=_S.LOGGING_IN)
        proxying = State(final=True, value=_S.PROXYING)
        logout = State(final=True, value=_S.LOGOUT)

        starttls_accepted = not_authenticated.to(starttls)
        tls_established = starttls.to(not_authenticated)
        challenge_sent = (not_authenticated.to(authenticating)
                          | authenticating.to.itself())  # type: ignore[no-untyped-call]
        credentials_received = not_authenticated.to(logging_in) | authenticating.to(logging_in)
        client_aborted = authenticating.to(not_authenticated)
        auth_failed = authenticating.to(not_authenticated) | logging_in.to(not_authenticated)
        auth_succeeded = logging_in.to(proxying)
        # XOAUTH2/OAUTHBEARER: the failure is a JSON challenge; the NO follows its answer
        failure_challenge_sent = logging_in.to(authenticating)
        logged_out = not_authenticated.to(logout)
        closed = (not_authenticated.to(logout) | starttls.to(logout)
                  | authenticating.to(logout) | logging_in.to(logout))

    class ClientLoginFlow(StateMachine):
        """Backend-facing login flow (the proxy acts as a client)."""

        banner = State(initial=True, value=_C.BANNER)
        id_wait = State(value=_C.ID)
        starttls = State(value=_C.STARTTLS)
        tls_handshake = State(value=_C.TLS_HANDSHAKE)
        capability = State(value=_C.CAPABILITY)
        login = State(value=_C.LOGIN)
        logged_in_state = State(final=True, value=_C.LOGGED_IN)
        failed_state = State(final=True, value=_C.FAILED)

        id_sent = banner.to(id_wait)
        starttls_sent = banner.to(starttls) | id_wait.to(starttls)
        starttls_accepted = starttls.to(tls_handshake)
        capability_sent = (banner.to(capability) | id_wait.to(capability)
                           | tls_handshake.to(capability))
        login_sent = (banner.to(login) | id_wait.to(login) | tls_handshake.to(login)
                      | capability.to(login))
        logged_in = login.to(logged_in_state)
        failed = (banner.to(failed_state) | id_wait.to(failed_state) | starttls.to(failed_state)
                  | tls_handshake.to(failed_state) | capability.to(failed_state)
                  | login.to(failed_state))

    return {"ServerLoginFlow": ServerLoginFlow, "ClientLoginFlow": ClientLoginFlow}


_declared: dict[str, Any] | None = None


def __getattr__(name: str) -> Any:  # PEP 562: build the declarations on first use
    global _declared
    if name in ("ServerLoginFlow", "ClientLoginFlow"):
        if _declared is None:
            _declared = _declare()
        return _declared[name]
    raise AttributeError(name)


def mermaid(table: Mapping[tuple[Any, str], Any], initial: Any, finals: tuple[Any, ...],
            title: str) -> str:
    """A Mermaid ``stateDiagram-v2`` (in a Markdown file) drawn from a compiled table."""
    lines = [f"# {title}", "", "Generated from `src/mailproxy/protocols/_states.py` by"
             " `python3 spec/diagrams/generate.py`; do not edit.", "",
             "```mermaid", "stateDiagram-v2", f"    [*] --> {initial.value}"]
    merged: dict[tuple[str, str], list[str]] = {}
    for (src, event), dst in table.items():
        merged.setdefault((src.value, dst.value), []).append(event)
    enum_cls: Any = type(initial)
    states: list[Any] = list(enum_cls)
    order = {s: i for i, s in enumerate(states)}
    for (src, dst), events in sorted(
            merged.items(), key=lambda kv: (order[type(initial)(kv[0][0])],
                                            order[type(initial)(kv[0][1])])):
        lines.append(f"    {src} --> {dst}: {', '.join(sorted(events))}")
    for f in finals:
        lines.append(f"    {f.value} --> [*]")
    lines += ["```", ""]
    return "\n".join(lines)


def diagrams() -> dict[str, str]:
    """File name → content of every diagram in ``spec/diagrams/``."""
    return {
        "server_login_flow.md": mermaid(
            SERVER_TRANSITIONS, _S.NOT_AUTHENTICATED, (_S.PROXYING, _S.LOGOUT),
            "Login flow, server role (client-facing)"),
        "client_login_flow.md": mermaid(
            CLIENT_TRANSITIONS, _C.BANNER, (_C.LOGGED_IN, _C.FAILED),
            "Login flow, client role (backend-facing)"),
    }


def write_diagrams(directory: str, *, check: bool = False) -> list[str]:
    """Write the diagrams into *directory*; with ``check`` only list the stale ones."""
    import os

    stale = []
    for name, content in diagrams().items():
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != content:
            stale.append(path)
            if not check:
                os.makedirs(directory, exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(content)
    return stale


def _main(argv: list[str]) -> int:
    import os

    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.normpath(os.path.join(here, "..", "..", "..", "spec", "diagrams"))
    directory = args[0] if args else default
    stale = write_diagrams(directory, check=check)
    for path in stale:
        print(("stale: " if check else "wrote: ") + path)
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
