"""Build the passdb chain of a loaded Config: the one place config meets passdb.

Errors come out as PassdbSetupError in the operator's `FILE:LINE: KEY: message` shape,
pointing at the [[passdb]] entry that is wrong.
"""

from __future__ import annotations

from ..config import Config
from .base import PassdbChain, PassdbConfigError, PassdbSpec, build_chain
from .cache import AuthCache


class PassdbSetupError(Exception):
    """One line: `FILE:LINE: passdb.args: message`."""


def build_chain_from_config(config: Config) -> PassdbChain:
    specs = [PassdbSpec(p.driver, p.args, p.master, p.source) for p in config.passdbs]
    auth = config.auth
    cache = (AuthCache(auth.cache_size, auth.cache_ttl, auth.cache_negative_ttl)
             if auth.cache_size > 0 else None)
    try:
        return build_chain(specs, base_dir=config.base_dir, cache=cache)
    except PassdbConfigError as e:
        raise PassdbSetupError(f"{e.source or config.path}: passdb.args: {e.message}") from None


async def check_chain(config: Config) -> list[str]:
    """Build the chain and read every passdb once (`trio-mailproxy check`)."""
    chain = build_chain_from_config(config)
    try:
        return [f"{source}: passdb.args: {problem}" for source, problem in await chain.check()]
    finally:
        await chain.aclose()
