#!/usr/bin/env bash
# THE test command: install what the tests need (scripts/setup.sh), then run pytest.
#
#   bash scripts/test.sh                 # whole suite, quiet
#   bash scripts/test.sh tests/e2e -x    # any pytest arguments are passed through
#
# CI runs exactly this (via .ci/run) with CI=true, where a skipped e2e test is a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup.sh

if (($# == 0)); then
    set -- -q
fi
exec python3 -m pytest "$@"
