"""Regenerate the Mermaid login-flow diagrams in this directory from
src/mailproxy/protocols/_states.py (same as ``python3 -m mailproxy.protocols._states``).

    python3 spec/diagrams/generate.py           # rewrite stale diagrams
    python3 spec/diagrams/generate.py --check   # exit 1 if any is stale

tests/protocols/test_states.py fails when a diagram is out of date.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "src"))

from mailproxy.protocols._states import write_diagrams  # noqa: E402


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = write_diagrams(os.path.dirname(os.path.abspath(__file__)), check=check)
    for path in stale:
        print(("stale: " if check else "wrote: ") + path)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
