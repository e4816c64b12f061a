#!/usr/bin/env bash
# Run a local Chroma server for Switchboard: the integration tests, or several processes
# sharing one knowledge base (set SWITCHBOARD_CHROMA_URL=http://127.0.0.1:28000).
#
#   scripts/chroma.sh [start]   start in the background (no-op if it already answers), wait for heartbeat
#   scripts/chroma.sh stop      stop the server this script started
#   scripts/chroma.sh status    say whether it answers
#
# Env: SWITCHBOARD_CHROMA_PORT (default 28000), SWITCHBOARD_CHROMA_PATH (default
# .switchboard/chroma-server), SWITCHBOARD_CHROMA_WAIT seconds to wait for startup (default 30).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PORT=${SWITCHBOARD_CHROMA_PORT:-28000}
DATA=${SWITCHBOARD_CHROMA_PATH:-$ROOT/.switchboard/chroma-server}
WAIT=${SWITCHBOARD_CHROMA_WAIT:-30}
CHROMA=$ROOT/.venv/bin/chroma
URL=http://127.0.0.1:$PORT
# pid and log live next to the data folder, not inside it (Chroma owns that folder).
PIDFILE=$DATA.$PORT.pid
LOG=$DATA.$PORT.log

heartbeat() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS --max-time 2 "$URL/api/v2/heartbeat" >/dev/null 2>&1
    else
        "$ROOT/.venv/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "$URL/api/v2/heartbeat" >/dev/null 2>&1
    fi
}

our_pid() {
    local pid
    [[ -f $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# Like scripts/postgres.sh: stdout is only `export` lines, so `eval "$(scripts/chroma.sh)"` works.
exports() {
    echo "export SWITCHBOARD_TEST_CHROMA_URL=$URL"
}

start() {
    if heartbeat; then
        if pid=$(our_pid); then
            echo "# chroma already running at $URL (pid $pid)" >&2
        else
            echo "# a Chroma server already answers at $URL (not started by this script)" >&2
        fi
        exports
        echo "# started: no"  # for tests/conftest.py: another session's server is not its to stop
        return 0
    fi
    if pid=$(our_pid); then
        echo "chroma (pid $pid) is running but not answering; waiting for it" >&2
    else
        [[ -x $CHROMA ]] || { echo "error: $CHROMA not found; install the project venv first (uv sync)" >&2; return 1; }
        mkdir -p "$DATA"
        # setsid: the server outlives this shell; its own session lets `stop` signal only it.
        setsid "$CHROMA" run --path "$DATA" --host 127.0.0.1 --port "$PORT" >>"$LOG" 2>&1 < /dev/null &
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    for ((i = 0; i < WAIT * 4; i++)); do
        if heartbeat; then
            echo "# chroma running at $URL (pid $pid, data $DATA, log $LOG)" >&2
            exports
            echo "# started: yes"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            echo "error: chroma exited during startup; last lines of $LOG:" >&2
            tail -n 20 "$LOG" >&2 || true
            return 1
        fi
        sleep 0.25
    done
    echo "error: chroma (pid $pid) did not answer $URL/api/v2/heartbeat within ${WAIT}s; see $LOG" >&2
    return 1
}

stop() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        echo "chroma is not running (no live pid in $PIDFILE)"
        return 0
    fi
    kill -TERM "$pid"
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "chroma (pid $pid) ignored SIGTERM for 10s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    echo "chroma stopped (pid $pid)"
}

status() {
    local pid
    pid=$(our_pid) || pid=""
    if heartbeat; then
        echo "chroma answers at $URL${pid:+ (pid $pid)}"
    else
        echo "chroma is not answering at $URL"
        return 3
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
