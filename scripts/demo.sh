#!/usr/bin/env bash
# Quick demo: install what is needed (scripts/setup.sh), then start a private Dovecot
# backend on 127.0.0.1:14300 and trio-mailproxy on 127.0.0.1:10143 in front of it.
# Ctrl-C stops both. Arguments go to scripts/demo.py (--backend-only, --backend-port N).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec python3 scripts/demo.py "$@"
