#!/usr/bin/env bash
# The benchmark in one command: installs what is missing (bench/install.sh, Debian
# packages, no packaged service started), builds the C load generator, starts every
# server on loopback, runs, stops them all, writes bench/results/.
#   bash bench/run.sh            full run (~12-15 min on 2 cores)
#   bash bench/run.sh --smoke    a few seconds, nothing asserted
#   bash bench/run.sh --help     all options
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/run.py" "$@"
