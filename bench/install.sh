#!/usr/bin/env bash
# Install what the benchmark needs (Debian packages), without starting packaged services.
#
# Idempotent: does nothing when everything is present. Needs root (or passwordless sudo)
# only when something is missing. Never leaves a packaged haproxy/nginx/dovecot running:
# a temporary /usr/sbin/policy-rc.d (exit 101) stops maintainer scripts from starting
# them, and anything that started anyway is stopped afterwards.
set -euo pipefail

need=()
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# bench/compare.py --instructions counts instructions per login with callgrind.
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
if ! { command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; }; then
    need+=(nginx-core)
fi
# nginx's mail module ships as a dynamic module on Debian 12.
if ! ls /usr/lib/nginx/modules/ngx_mail_module.so >/dev/null 2>&1; then
    need+=(libnginx-mod-mail)
fi
if ! { command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; } \
   || [ ! -x /usr/lib/dovecot/imap-login ] || [ ! -x /usr/lib/dovecot/pop3-login ]; then
    need+=(dovecot-core dovecot-imapd dovecot-pop3d)
fi

if [ ${#need[@]} -eq 0 ]; then
    echo "bench/install.sh: everything present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "bench/install.sh: missing ${need[*]} and not root: install them by hand" >&2
        exit 1
    fi
fi

echo "bench/install.sh: installing ${need[*]}"
policy=/usr/sbin/policy-rc.d
had_policy=0
if [ -e "$policy" ]; then had_policy=1; $SUDO cp -p "$policy" "$policy.bench-saved"; fi
restore_policy() {
    if [ "$had_policy" -eq 1 ]; then
        $SUDO mv -f "$policy.bench-saved" "$policy"
    else
        $SUDO rm -f "$policy"
    fi
}
trap restore_policy EXIT
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
$SUDO chmod 755 "$policy"

export DEBIAN_FRONTEND=noninteractive
# Refresh the lists only when they are missing or a first install attempt fails.
if ! $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Stop any packaged instance that started anyway (systemd-less containers ignore
# policy-rc.d for some scripts). Only the packaged daemons, by their pid files.
for pidfile in /run/haproxy.pid /run/nginx.pid /run/dovecot/master.pid; do
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            echo "bench/install.sh: stopping packaged daemon pid $pid ($pidfile)"
            $SUDO kill -TERM "$pid" || true
        fi
    fi
done
echo "bench/install.sh: done"
