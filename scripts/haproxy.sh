#!/usr/bin/env bash
# A local HAProxy in front of several `switchboard serve` replicas (scripts/cluster.sh uses it).
#
#   SWITCHBOARD_LB_BACKENDS="127.0.0.1:28101 127.0.0.1:28102" scripts/haproxy.sh start
#   scripts/haproxy.sh reload   same, with a new backend list: a new process takes over the
#                               listening socket (-x, -sf); the old one finishes its streams, then exits
#   scripts/haproxy.sh status   is it running, and each backend's health-check state
#   scripts/haproxy.sh stop     soft stop (open responses may finish), then SIGTERM, then SIGKILL
#
# Listens on 127.0.0.1 only. `balance leastconn` (a streamed answer holds its connection for
# minutes, so counting open connections balances better than round-robin); every backend is
# checked with GET $SWITCHBOARD_LB_CHECK_PATH every second and leaves rotation after 2 failed
# checks (a draining replica answers 503 there, a dead one refuses the connection), back after 1
# good one. Timeouts allow long Server-Sent Events streams; no compression, no response buffering.
#
# Env: SWITCHBOARD_LB_BACKENDS (space-separated host:port, required for start/reload),
# SWITCHBOARD_LB_PORT (default 28080), SWITCHBOARD_LB_CHECK_PATH (default /readyz),
# SWITCHBOARD_LB_TIMEOUT_S (client/server inactivity timeout, default 600),
# SWITCHBOARD_LB_STOP_WAIT (seconds `stop` lets open responses finish, default 10),
# SWITCHBOARD_LB_DIR (config, pid, log and stats socket; default
# ${SWITCHBOARD_CLUSTER_DIR:-/tmp/switchboard-cluster}/haproxy).
#
# HAProxy runs in the foreground (-db) in its own session, its log (`log stdout`) redirected to
# $SWITCHBOARD_LB_DIR/haproxy.log: no syslog needed. Installs Debian's haproxy package with
# apt-get when missing and we are root. Idempotent: `start` on a running proxy with the same
# config does nothing, with another config it reloads. Progress goes to stderr; stdout carries
# only the export line (SWITCHBOARD_LB_URL) after start/reload.
set -euo pipefail

PORT=${SWITCHBOARD_LB_PORT:-28080}
HOST=127.0.0.1
BACKENDS=${SWITCHBOARD_LB_BACKENDS:-}
CHECK_PATH=${SWITCHBOARD_LB_CHECK_PATH:-/readyz}
TIMEOUT_S=${SWITCHBOARD_LB_TIMEOUT_S:-600}
STOP_WAIT=${SWITCHBOARD_LB_STOP_WAIT:-10}
RUN=${SWITCHBOARD_LB_DIR:-${SWITCHBOARD_CLUSTER_DIR:-/tmp/switchboard-cluster}/haproxy}
CFG=$RUN/haproxy.cfg
PIDFILE=$RUN/haproxy.pid
OLDPIDS=$RUN/haproxy.old-pids   # processes replaced by a reload, still finishing their connections
LOG=$RUN/haproxy.log
SOCK=$RUN/haproxy.sock
URL=http://$HOST:$PORT
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

say() { echo "haproxy.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Binary: PATH, else Debian's package.

install_haproxy() {
    [[ $(id -u) -eq 0 ]] || die "HAProxy is not installed and we are not root: apt-get install haproxy"
    command -v apt-get >/dev/null 2>&1 || die "HAProxy is not installed and there is no apt-get: install haproxy"
    say "installing HAProxy from Debian packages (apt-get)…"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq haproxy >&2
}

find_haproxy() {
    local candidate
    for candidate in "$(command -v haproxy 2>/dev/null || true)" /usr/sbin/haproxy /usr/local/sbin/haproxy; do
        [[ -n $candidate && -x $candidate ]] && { echo "$candidate"; return 0; }
    done
    return 1
}

ensure_haproxy() {
    HAPROXY=$(find_haproxy || true)
    if [[ -z $HAPROXY ]]; then
        install_haproxy
        HAPROXY=$(find_haproxy) || die "haproxy still not found after installing the package"
    fi
}

# ---------------------------------------------------------------------------------------------
# Processes: only pids we recorded, and only while they still are haproxy (pids get reused).

is_haproxy_pid() {
    local pid=$1
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == haproxy ]]
}

our_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    is_haproxy_pid "$pid" || return 1
    echo "$pid"
}

old_pids() {
    local pid
    [[ -f $OLDPIDS ]] || return 0
    while read -r pid; do
        is_haproxy_pid "$pid" && echo "$pid"
    done <"$OLDPIDS"
    return 0
}

answers() {
    # Any HTTP answer on the frontend (a 503 while no backend is up counts: the proxy listens).
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL$CHECK_PATH" 2>/dev/null || true)
    [[ -n $code && $code != 000 ]]
}

# The stats socket, without needing socat: a few lines of Python are enough.
stats_cmd() {
    local python
    if command -v socat >/dev/null 2>&1; then
        echo "$1" | socat -t 2 - "UNIX-CONNECT:$SOCK"
        return
    fi
    python=$(command -v python3 || echo "$ROOT/.venv/bin/python")
    "$python" - "$SOCK" "$1" <<'PY'
import socket
import sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(2)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
sys.stdout.write(out.decode(errors="replace"))
PY
}

# ---------------------------------------------------------------------------------------------
# Config

validate_env() {
    local backend
    [[ $PORT =~ ^[0-9]+$ ]] || die "SWITCHBOARD_LB_PORT must be a port number, not '$PORT'"
    [[ $TIMEOUT_S =~ ^[0-9]+$ ]] || die "SWITCHBOARD_LB_TIMEOUT_S must be whole seconds, not '$TIMEOUT_S'"
    [[ $CHECK_PATH == /* && $CHECK_PATH != *[[:space:]]* ]] || die "SWITCHBOARD_LB_CHECK_PATH must be a path like /readyz"
    [[ -n ${BACKENDS// /} ]] || die "SWITCHBOARD_LB_BACKENDS is empty: give space-separated host:port entries"
    for backend in $BACKENDS; do
        [[ $backend =~ ^[A-Za-z0-9_.-]+:[0-9]+$ ]] || die "SWITCHBOARD_LB_BACKENDS: '$backend' is not host:port"
    done
}

write_config() {
    local out=$1 backend i=0 user_lines=""
    # As root: bind and open the socket as root, then run as Debian's haproxy user.
    if [[ $(id -u) -eq 0 ]] && id haproxy >/dev/null 2>&1; then
        user_lines=$'    user haproxy\n    group haproxy'
    fi
    {
        cat <<EOF
# Written by scripts/haproxy.sh: edits are lost on the next start/reload.
global
    log stdout format iso local0 info
$user_lines
    maxconn 2000
    # expose-fd listeners: a reload (-x) takes over the listening socket, no connection refused
    stats socket $SOCK mode 600 level admin expose-fd listeners
    # a process replaced by a reload exits when its last stream ends, at the latest after this
    hard-stop-after $((TIMEOUT_S + 60))s

defaults
    mode http
    log global
    option httplog
    option dontlognull
    # a new server connection per request: a replica that drains or restarts never has idle
    # keep-alive connections for the proxy to race against (loopback connects are cheap)
    option http-server-close
    option forwardfor
    # a refused connection (replica just killed, checks not yet failed) goes to another replica;
    # only connection failures are retried: a chat turn that reached a replica is never re-sent
    retries 2
    option redispatch 1
    timeout connect 3s
    timeout client ${TIMEOUT_S}s
    timeout server ${TIMEOUT_S}s
    timeout http-request 30s
    timeout http-keep-alive 15s
    timeout queue 30s
    timeout check 2s
    # no "compression" anywhere: Server-Sent Events chunks are forwarded as they arrive

frontend switchboard
    bind $HOST:$PORT
    default_backend replicas

backend replicas
    balance leastconn
    option httpchk
    http-check send meth GET uri $CHECK_PATH ver HTTP/1.1 hdr Host $HOST
    http-check expect status 200
    default-server check inter 1s fastinter 500ms downinter 1s fall 2 rise 1
EOF
        for backend in $BACKENDS; do
            i=$((i + 1))
            echo "    server r$i $backend"
        done
    } >"$out"
}

# ---------------------------------------------------------------------------------------------
# Commands

exports() {
    echo "export SWITCHBOARD_LB_URL=$URL"
}

# Launch a new haproxy process on $CFG (taking over from the given old pid, if any); wait until
# it answers. The process runs in the foreground of its own session, its output to the log.
launch() {
    local old=${1:-} pid i
    local args=(-db -f "$CFG")
    if [[ -n $old ]]; then
        [[ -S $SOCK ]] && args+=(-x "$SOCK")
        args+=(-sf "$old")
    fi
    setsid "$HAPROXY" "${args[@]}" >>"$LOG" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < 40; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$LOG" >&2 || true
            die "haproxy exited during startup (is port $PORT taken? see $LOG)"
        fi
        if answers; then
            if [[ -n $old ]]; then
                echo "$old" >>"$OLDPIDS"
            fi
            echo "$pid" >"$PIDFILE"
            say "haproxy running at $URL (pid $pid, backends: $BACKENDS; check $CHECK_PATH; log $LOG)"
            return 0
        fi
        sleep 0.25
    done
    kill -TERM "$pid" 2>/dev/null || true
    die "haproxy (pid $pid) did not answer on $URL within 10s; see $LOG"
}

prepare() {
    validate_env
    ensure_haproxy
    mkdir -p "$RUN"
    chmod 700 "$RUN"
    NEW_CFG=$(mktemp "$RUN/haproxy.cfg.XXXXXX")
    write_config "$NEW_CFG"
    if ! "$HAPROXY" -c -q -f "$NEW_CFG" >&2; then
        rm -f "$NEW_CFG"
        die "the generated config does not validate (see above)"
    fi
}

start() {
    local pid
    prepare
    if pid=$(our_pid); then
        if cmp -s "$NEW_CFG" "$CFG"; then
            rm -f "$NEW_CFG"
            say "already running at $URL (pid $pid) with this config"
            exports
            return 0
        fi
        say "running (pid $pid) with another config: reloading"
        mv -f "$NEW_CFG" "$CFG"
        launch "$pid"
        exports
        return 0
    fi
    if answers; then
        rm -f "$NEW_CFG"
        die "something else already answers on $URL (not started by this script)"
    fi
    mv -f "$NEW_CFG" "$CFG"
    rm -f "$SOCK"
    say "starting HAProxy $("$HAPROXY" -v | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p') on $HOST:$PORT"
    launch ""
    exports
}

reload() {
    local pid
    prepare
    mv -f "$NEW_CFG" "$CFG"
    if pid=$(our_pid); then
        say "reloading (old pid $pid finishes its open connections)"
        launch "$pid"
    else
        say "not running: starting"
        rm -f "$SOCK"
        launch ""
    fi
    exports
}

# Wait up to $2 seconds for pid $1 to exit.
wait_gone() {
    local pid=$1 i
    for ((i = 0; i < $2 * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    ! kill -0 "$pid" 2>/dev/null
}

stop_pid() {
    local pid=$1
    # SIGUSR1: soft stop (stop listening, let open responses finish), then SIGTERM, then SIGKILL.
    kill -USR1 "$pid" 2>/dev/null || return 0
    wait_gone "$pid" "$STOP_WAIT" && return 0
    say "pid $pid still has open connections after ${STOP_WAIT}s: SIGTERM"
    kill -TERM "$pid" 2>/dev/null || return 0
    wait_gone "$pid" 5 && return 0
    say "pid $pid ignored SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {
    local pid stopped=0
    for pid in $(old_pids) $(our_pid || true); do
        stop_pid "$pid"
        stopped=1
    done
    rm -f "$PIDFILE" "$OLDPIDS" "$SOCK"
    if [[ $stopped == 1 ]]; then
        say "stopped"
    else
        say "not running (no live pid in $PIDFILE)"
    fi
}

status() {
    local pid old
    if ! pid=$(our_pid); then
        echo "haproxy is not running (no live pid in $PIDFILE)"
        return 3
    fi
    old=$(old_pids | tr '\n' ' ')
    echo "haproxy (pid $pid${old:+; finishing after a reload: $old}) at $URL, log $LOG"
    if [[ -S $SOCK ]]; then
        # CSV: "# pxname,svname,..." header; print each server's name, address and state.
        stats_cmd "show stat" | awk -F, '
            NR == 1 { sub(/^# /, ""); for (i = 1; i <= NF; i++) col[$i] = i; next }
            $col["pxname"] == "replicas" && $col["svname"] != "BACKEND" && $col["svname"] != "" {
                printf "  %-4s %-22s %-6s cur_sess=%s total=%s %s\n", $col["svname"], $col["addr"],
                    $col["status"], $col["scur"], $col["stot"], $col["check_status"] }
            $col["pxname"] == "replicas" && $col["svname"] == "BACKEND" {
                printf "  backend: %s, %s server(s) up\n", $col["status"], $col["act"] }'
    fi
}

case ${1:-start} in
    start) start ;;
    reload) reload ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 [start|reload|stop|status]" >&2; exit 2 ;;
esac
