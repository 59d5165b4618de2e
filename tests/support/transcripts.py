"""The one reader of spec/imap/*.txt (format: spec/README.md).

Both replays use it: tests/protocols/test_spec_replay.py (sans-io, both roles) and
tests/test_spec_transcripts.py (the real daemon over sockets). A transcript becomes its
header fields and its two legs, each a list of (kind, text) steps in recorded order:

- client leg: ("C>P", line) the client sent, ("P>C", line) the proxy sent,
  ("close", "by proxy" | "by client");
- backend leg, one list per backend connection: ("S>P", line), ("P>S", line),
  ("tls", ""), ("tls failed", ""), ("close", "by server" | "by proxy").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SPEC_DIR = Path(__file__).resolve().parents[2] / "spec" / "imap"


@dataclass
class Transcript:
    name: str
    headers: dict[str, str] = field(default_factory=dict)
    client: list[tuple[str, str]] = field(default_factory=list)
    backend: list[list[tuple[str, str]]] = field(default_factory=list)

    @property
    def passdb(self) -> dict[str, str]:
        """The `# passdb:` extra fields, in order (values may hold placeholders)."""
        out: dict[str, str] = {}
        for item in self.headers.get("passdb", "").split(" "):
            if item:
                key, _, value = item.partition("=")
                out[key] = value
        return out

    @property
    def trusted_networks(self) -> list[str]:
        return self.headers.get("login_trusted_networks", "").replace(",", " ").split()


def parse(path: Path) -> Transcript:
    t = Transcript(path.stem)
    for raw in path.read_text(encoding="utf-8").split("\n"):
        if raw.startswith("# ") and ":" in raw and not raw.startswith("# log:"):
            key, _, value = raw[2:].partition(":")
            if key in ("passdb", "login_trusted_networks", "backend tls", "racy", "scenario"):
                t.headers[key] = value.strip()
            continue
        if not raw or raw.startswith("#"):
            continue
        prefix, text = raw[:5], raw[5:]
        if prefix in ("C>P: ", "P>C: "):
            t.client.append((prefix[:3], text))
        elif prefix in ("S>P: ", "P>S: "):
            t.backend[-1].append((prefix[:3], text))
        elif raw.startswith("-- backend connect"):
            t.backend.append([])
        elif raw.startswith("-- backend close "):
            t.backend[-1].append(("close", raw[len("-- backend close "):]))
        elif raw.startswith("-- backend tls"):
            t.backend[-1].append((raw[len("-- backend "):], ""))
        elif raw.startswith("-- client close "):
            t.client.append(("close", raw[len("-- client close "):]))
        else:
            raise ValueError(f"{path.name}: unknown line {raw!r}")
    return t


def all_transcripts() -> list[Path]:
    return sorted(SPEC_DIR.glob("*.txt"))
