"""_states: the python-statemachine declarations, the plain tables the connections run,
and the generated diagrams must agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailproxy.protocols import _states
from mailproxy.protocols._states import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientState,
    ServerState,
    compile_table,
)

REPO = Path(__file__).resolve().parents[2]
DIAGRAMS = REPO / "spec" / "diagrams"


def test_compiled_server_table_equals_declaration() -> None:
    assert compile_table(_states.ServerLoginFlow) == SERVER_TRANSITIONS


def test_compiled_client_table_equals_declaration() -> None:
    assert compile_table(_states.ClientLoginFlow) == CLIENT_TRANSITIONS


@pytest.mark.parametrize("cls_name, table", [("ServerLoginFlow", SERVER_TRANSITIONS),
                                             ("ClientLoginFlow", CLIENT_TRANSITIONS)])
def test_live_machine_agrees_with_table(cls_name: str, table: dict) -> None:  # type: ignore[type-arg]
    # A live machine only here, in tests: walk every rule of the table through it.
    cls = getattr(_states, cls_name)
    for (source, event), target in table.items():
        sm = cls(start_value=source) if "start_value" in cls.__init__.__code__.co_varnames \
            else None
        if sm is None:  # pragma: no cover - older python-statemachine
            pytest.skip("start_value not supported")
        sm.send(event)
        assert sm.current_state_value == target, (source, event)


def test_every_state_is_reachable_and_terminal_states_have_no_exit() -> None:
    for table, initial, finals, enum in (
            (SERVER_TRANSITIONS, ServerState.NOT_AUTHENTICATED,
             {ServerState.PROXYING, ServerState.LOGOUT}, ServerState),
            (CLIENT_TRANSITIONS, ClientState.BANNER,
             {ClientState.LOGGED_IN, ClientState.FAILED}, ClientState)):
        seen = {initial}
        frontier = [initial]
        while frontier:
            s = frontier.pop()
            for (src, _), dst in table.items():
                if src is s and dst not in seen:
                    seen.add(dst)
                    frontier.append(dst)
        expected = set(enum) - ({ServerState.ERROR} if enum is ServerState else set())
        assert seen == expected
        assert not any(src in finals for src, _ in table)


def test_declarations_are_lazy_and_not_in_sys_modules_by_default() -> None:
    code = ("import sys, mailproxy.protocols; "
            "assert 'statemachine' not in sys.modules, 'statemachine imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_diagrams_are_up_to_date() -> None:
    stale = _states.write_diagrams(str(DIAGRAMS), check=True)
    assert not stale, ("regenerate with: python3 spec/diagrams/generate.py", stale)
    for name, content in _states.diagrams().items():
        assert (DIAGRAMS / name).read_text(encoding="utf-8") == content
        assert "stateDiagram-v2" in content


def test_generator_check_mode(tmp_path: Path) -> None:
    assert _states.write_diagrams(str(tmp_path), check=True)      # missing → stale
    assert _states.write_diagrams(str(tmp_path))                  # written
    assert _states.write_diagrams(str(tmp_path), check=True) == []
    r = subprocess.run([sys.executable, "-m", "mailproxy.protocols._states", "--check",
                        str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
