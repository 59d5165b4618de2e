"""Password databases: Dovecot's passdb chain, drivers, schemes, %variables, auth cache.

Public names for io/, config.py and cli.py. Nothing here imports io/ or does network I/O
at import time.
"""

from .base import (
    DEFAULT_USERNAME_CHARS,
    DEFAULT_USERNAME_FORMAT,
    SECRET_FIELDS,
    AuthOutcome,
    LookupRequest,
    LookupState,
    PassDB,
    PassdbChain,
    PassdbConfigError,
    PassdbEntry,
    PassdbResult,
    PassdbSpec,
    PassdbTempFail,
    build_chain,
)
from .cache import AuthCache
from .fields import RoutingDecision, RoutingError, routing_decision, with_resolved_host

__all__ = [
    "DEFAULT_USERNAME_CHARS",
    "DEFAULT_USERNAME_FORMAT",
    "SECRET_FIELDS",
    "AuthCache",
    "AuthOutcome",
    "LookupRequest",
    "LookupState",
    "PassDB",
    "PassdbChain",
    "PassdbConfigError",
    "PassdbEntry",
    "PassdbResult",
    "PassdbSpec",
    "PassdbTempFail",
    "RoutingDecision",
    "RoutingError",
    "build_chain",
    "routing_decision",
    "with_resolved_host",
]
