#!/usr/bin/env bash
# Start the PC/SC stack the end-to-end tests need: pcscd with vsmartcard's vpcd driver loaded,
# so that a virtual reader listens on 127.0.0.1:35963 for the emulated card (the vpcd client).
#
# Idempotent: does nothing when the vpcd port already listens; asks a running pcscd to re-read
# /etc/reader.conf.d when the driver was installed after it started, and restarts it only if
# that does not help. Needs root. Under systemd it starts pcscd.service; without systemd
# (containers, CI runners) pcscd runs as a plain background process logging to $IOTID_PCSCD_LOG.
#
# Environment: IOTID_VPCD_PORT (default: the CHANNELID of the vpcd reader.conf entry, else
# 35963), IOTID_SERVICES_TIMEOUT (seconds, default 20), IOTID_PCSCD_LOG
# (default /var/log/iotid-pcscd.log).
set -euo pipefail

TIMEOUT="${IOTID_SERVICES_TIMEOUT:-20}"
PCSCD_LOG="${IOTID_PCSCD_LOG:-/var/log/iotid-pcscd.log}"
RUN_DIR=/run/pcscd
PID_FILE="$RUN_DIR/pcscd.pid"

say() { echo "services.sh: $*"; }
die() {
    echo "services.sh: error: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "must run as root (pcscd owns $RUN_DIR)"
command -v pcscd >/dev/null || die "pcscd is not installed (apt-get install pcscd vsmartcard-vpcd)"

# The vpcd reader entry, as Debian's vsmartcard-vpcd installs it.
VPCD_CONF="$(grep -l libifdvpcd /etc/reader.conf.d/* 2>/dev/null | head -n 1 || true)"
[ -n "$VPCD_CONF" ] || die "no vpcd entry in /etc/reader.conf.d (apt-get install vsmartcard-vpcd)"
VPCD_LIB="$(awk '$1 == "LIBPATH" { print $2 }' "$VPCD_CONF")"
[ -e "$VPCD_LIB" ] || die "vpcd driver $VPCD_LIB (from $VPCD_CONF) is missing"
CONF_PORT="$(awk '$1 == "CHANNELID" { print $2 }' "$VPCD_CONF")"
PORT="${IOTID_VPCD_PORT:-$((${CONF_PORT:-35963}))}"

# True when something listens on TCP $PORT. Reads /proc instead of connecting: vpcd would
# take a probe connection for a card.
port_listening() {
    local hex
    hex="$(printf '%04X' "$PORT")"
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 }
        END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

wait_port() { # $1: seconds
    local deadline=$((SECONDS + $1))
    while [ "$SECONDS" -lt "$deadline" ]; do
        port_listening && return 0
        sleep 0.2
    done
    port_listening
}

# True when $1 is a live (not zombie) pcscd process.
pcscd_alive() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # /proc/PID/stat: "PID (comm) STATE ..."
    [[ "$stat" == *"(pcscd) "* ]] && [[ "${stat##*) }" != Z* ]]
}

pcscd_pid() {
    local pid
    if [ -r "$PID_FILE" ]; then
        pid="$(tr -dc 0-9 <"$PID_FILE")"
        if [ -n "$pid" ] && pcscd_alive "$pid"; then
            echo "$pid"
            return 0
        fi
    fi
    for pid in $(pidof pcscd || true); do
        if pcscd_alive "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

if port_listening; then
    say "vpcd reader already listening on port $PORT (pcscd pid $(pcscd_pid || echo '?')); nothing to do"
    exit 0
fi

if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    # Under systemd pcscd is socket-activated: start (or restart) the service itself, since
    # the vpcd port only listens once the daemon runs.
    if systemctl is-active --quiet pcscd.service; then
        say "restarting pcscd.service (running without the vpcd reader)"
        systemctl restart pcscd.service
    else
        say "starting pcscd.service"
        systemctl start pcscd.service
    fi
    wait_port "$TIMEOUT" || die "vpcd reader not listening on port $PORT after ${TIMEOUT}s"
    say "pcscd.service running; vpcd reader listening on port $PORT"
    exit 0
fi

PID="$(pcscd_pid || true)"
if [ -n "$PID" ]; then
    # Started before the driver was installed: SIGUSR1 (pcscd --hotplug) re-reads reader.conf.d.
    say "pcscd running (pid $PID) without the vpcd reader; asking it to rescan its readers"
    pcscd --hotplug >/dev/null 2>&1 || true
    if wait_port 5; then
        say "vpcd reader listening on port $PORT after rescan"
        exit 0
    fi
    say "still no vpcd reader: restarting pcscd (pid $PID)"
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 50); do
        pcscd_alive "$PID" || break
        sleep 0.1
    done
    if pcscd_alive "$PID"; then
        say "pcscd (pid $PID) ignored SIGTERM; killing it"
        kill -KILL "$PID" 2>/dev/null || true
        sleep 0.2
    fi
fi

# Leftovers of a pcscd that died without cleaning up make a new one refuse to start.
if [ -z "$(pcscd_pid || true)" ]; then
    rm -f "$PID_FILE" "$RUN_DIR/pcscd.comm"
fi

mkdir -p "$RUN_DIR" "$(dirname "$PCSCD_LOG")"
say "starting pcscd (log: $PCSCD_LOG)"
# A plain background daemon in its own session (no systemd here): foreground mode keeps its
# log in a file instead of a syslog that containers usually lack.
setsid pcscd --foreground --info >>"$PCSCD_LOG" 2>&1 </dev/null &

if ! wait_port "$TIMEOUT"; then
    tail -n 20 "$PCSCD_LOG" >&2 || true
    die "vpcd reader not listening on port $PORT after ${TIMEOUT}s"
fi
say "pcscd running (pid $(pcscd_pid || echo '?')); vpcd reader listening on port $PORT"
