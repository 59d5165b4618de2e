"""`trio-mailproxy` command line: run / check / lookup / pw (kick and list come later).

Exit codes: 0 ok; 1 config problem (or refused, for lookup); 2 usage (or tempfail, for
lookup). Operator mistakes are one line on stderr (`FILE:LINE: KEY: message`), never a
traceback.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import NoReturn, Sequence

from . import __version__
from .config import Config, ConfigError, ConfigErrors, load_config

# Extra fields whose values are secrets: shown redacted by `lookup`.
SECRET_FIELDS = {"pass", "password", "nopassword_password"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, exit 2 (argparse's own exit code for usage errors).
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trio-mailproxy", description="A Trio mail login proxy.")
    p.add_argument("--version", action="version", version=f"trio-mailproxy {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", required=True, metavar="FILE.toml")

    check = sub.add_parser("check", help="validate the config and every passdb")
    check.add_argument("-c", "--config", required=True, metavar="FILE.toml")

    lookup = sub.add_parser("lookup", help="run the passdb chain as a login would")
    lookup.add_argument("-c", "--config", required=True, metavar="FILE.toml")
    lookup.add_argument("user")
    lookup.add_argument("--password", "-p")
    lookup.add_argument("--protocol", default="imap")
    lookup.add_argument("--remote-ip", default="127.0.0.1")

    pw = sub.add_parser("pw", help="print a password hash in Dovecot's {SCHEME} form")
    pw.add_argument("-s", "--scheme", default="CRYPT")
    pw.add_argument("-p", "--password")

    for name in ("kick", "list"):
        s = sub.add_parser(name, help=f"{name} sessions of the running daemon (not yet)")
        s.add_argument("-c", "--config", required=True, metavar="FILE.toml")
        s.add_argument("args", nargs="*")
        s.add_argument("--json", action="store_true")
    return p


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigErrors as e:
        for err in e.errors:
            print(err, file=sys.stderr)
        raise SystemExit(1) from None


def cmd_run(args: argparse.Namespace) -> int:
    import ssl

    from . import log as logmod
    from .io.server import run_daemon
    from .log import setup_logging
    from .passdb.from_config import PassdbSetupError

    config = _load(args.config)
    setup_logging(config.log_format, config.log_level)
    try:
        return run_daemon(args.config, config)
    except (PassdbSetupError, ConfigError) as e:   # ConfigError: a listener not bindable
        logmod.flush()
        print(e, file=sys.stderr)
        return 1
    except ssl.SSLError as e:
        print(f"{args.config}:0: tls.cert_file: cannot load certificate/key: {e}",
              file=sys.stderr)
        return 1
    except OSError as e:   # e.g. a listener address in use
        print(f"{args.config}:0: listener.bind: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def cmd_check(args: argparse.Namespace) -> int:
    import trio

    from .passdb.from_config import PassdbSetupError, check_chain

    config = _load(args.config)
    try:
        problems = trio.run(check_chain, config)
    except PassdbSetupError as e:
        problems = [str(e)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    if config.tls is not None and config.tls.cert_file and config.tls.key_file:
        import ssl

        from .io.tls import server_context
        try:
            server_context(config.tls)
        except (ssl.SSLError, OSError) as e:
            print(f"{args.config}:0: tls.cert_file: cannot load certificate/key: {e}",
                  file=sys.stderr)
            return 1
    print(f"{args.config}: OK ({len(config.listeners)} listeners, "
          f"{len(config.passdbs)} passdbs)")
    return 0


def cmd_lookup(args: argparse.Namespace) -> int:
    import trio

    from .passdb.base import AuthOutcome, LookupRequest
    from .passdb.from_config import PassdbSetupError, build_chain_from_config
    from .protocols import Secret

    config = _load(args.config)

    async def lookup():  # type: ignore[no-untyped-def]
        chain = build_chain_from_config(config)
        try:
            request = LookupRequest(
                user=args.user,
                password=Secret(args.password) if args.password is not None else None,
                protocol=args.protocol, remote_ip=args.remote_ip, remote_port=0,
                local_ip="127.0.0.1", local_port=0, session_id="lookup")
            return await chain.authenticate(request)
        finally:
            await chain.aclose()

    try:
        result = trio.run(lookup)
    except PassdbSetupError as e:
        print(e, file=sys.stderr)
        return 1
    word = {AuthOutcome.OK: "succeeded", AuthOutcome.TEMPFAIL: "tempfailed"}.get(
        result.outcome, "failed")
    print(f"passdb: {args.user} auth {word}")
    print("extra fields:")
    print(f"  user={result.user}")
    for key, value in result.fields:
        if key == "user":
            continue
        shown = "<hidden>" if key in SECRET_FIELDS else value
        print(f"  {key}={shown}")
    if result.outcome is AuthOutcome.OK:
        return 0
    return 2 if result.outcome is AuthOutcome.TEMPFAIL else 1


def cmd_pw(args: argparse.Namespace) -> int:
    from .passdb import schemes

    password = args.password
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Enter new password: ")
            if getpass.getpass("Retype new password: ") != password:
                print("trio-mailproxy pw: passwords don't match", file=sys.stderr)
                return 1
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    try:
        print(schemes.generate(args.scheme, password))
    except schemes.UnknownScheme as e:
        print(f"trio-mailproxy pw: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_not_yet(args: argparse.Namespace) -> int:
    print(f"trio-mailproxy {args.command}: the admin socket is not implemented yet",
          file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = {"run": cmd_run, "check": cmd_check, "lookup": cmd_lookup, "pw": cmd_pw,
               "kick": cmd_not_yet, "list": cmd_not_yet}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
