#!/usr/bin/env bash
# Install everything the test suite and the demo need, on a fresh Debian 12 machine or
# again on a prepared one (idempotent: a second run only re-installs the Python package).
#
#   sudo bash scripts/setup.sh        (CI runs it as root through scripts/test.sh)
#
# - Debian packages: Dovecot 2.3 (the reference proxy and the e2e backend). The packaged
#   service is NOT started: tests run private instances on free loopback ports, and a
#   system Dovecot would hold the standard ports (143, 993, 110, 995).
# - This repository in editable mode with its dev extras (pytest, trustme, ...).
#
# Other engineers: add Debian packages your tests need to APT_PACKAGES and a binary that
# proves each is installed to REQUIRED_FILES.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

APT_PACKAGES=(dovecot-core dovecot-imapd dovecot-pop3d)
REQUIRED_FILES=(
    /usr/sbin/dovecot
    /usr/bin/doveadm
    /usr/lib/dovecot/imap-login
    /usr/lib/dovecot/pop3-login
)

log() { echo "setup.sh: $*" >&2; }

missing=()
for f in "${REQUIRED_FILES[@]}"; do
    [[ -x "$f" ]] || missing+=("$f")
done

if ((${#missing[@]})); then
    if [[ $EUID -ne 0 ]]; then
        log "missing ${missing[*]}; run this script as root to install ${APT_PACKAGES[*]}"
        exit 1
    fi
    log "installing ${APT_PACKAGES[*]} (missing: ${missing[*]})"
    # policy-rc.d exiting 101 tells invoke-rc.d "do not start services": the package's
    # postinst would otherwise start a system Dovecot on the standard ports. Keep and
    # restore whatever policy the machine already had.
    policy=/usr/sbin/policy-rc.d
    backup=""
    if [[ -e $policy ]]; then
        backup=$(mktemp)
        cp -p "$policy" "$backup"
    fi
    restore_policy() {
        if [[ -n $backup ]]; then
            cp -p "$backup" "$policy"
            rm -f "$backup"
        else
            rm -f "$policy"
        fi
    }
    trap restore_policy EXIT
    printf '#!/bin/sh\n# written by trio-mailproxy scripts/setup.sh during apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
    restore_policy
    trap - EXIT
    for f in "${REQUIRED_FILES[@]}"; do
        [[ -x "$f" ]] || { log "still missing after install: $f"; exit 1; }
    done
fi

# A packaged (system) Dovecot must not run: it takes the standard ports and its own
# /run/dovecot. Only that one is stopped: a master started with the system config (no -c,
# or -c under /etc/dovecot). Private instances (tests, demo, benchmarks: -c elsewhere)
# are left alone, so running this while they run is harmless.
if [[ $EUID -eq 0 ]]; then
    for dir in /proc/[0-9]*; do
        [[ $(cat "$dir/comm" 2>/dev/null || true) == dovecot ]] || continue
        pid=${dir#/proc/}
        mapfile -d '' -t argv <"$dir/cmdline" 2>/dev/null || continue
        config=""
        for ((i = 1; i < ${#argv[@]}; i++)); do
            if [[ ${argv[i]} == -c ]]; then
                config=${argv[i + 1]:-}
            fi
        done
        [[ -z $config || $config == /etc/dovecot/* ]] || continue
        log "stopping system dovecot (pid $pid: ${argv[*]})"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
fi

# The project itself, editable, with the test dependencies. Always re-run: CI works in a
# fresh clone, and an editable install left over from another checkout would make the
# tests import that checkout's code.
log "pip install -e .[dev]"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e '.[dev]'
log "done"
