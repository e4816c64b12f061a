#!/usr/bin/env bash
# A loopback Switchboard cluster: N `switchboard serve` replicas behind HAProxy, sharing one
# PostgreSQL (conversations/checkpoints) and one Chroma server (knowledge base).
#
#   eval "$(scripts/cluster.sh up [N])"   start PostgreSQL, Chroma, N replicas (default 2, at most 8)
#                                         and HAProxy; wait until all are ready; print export lines
#   scripts/cluster.sh status             each replica's readiness and the load balancer's
#   scripts/cluster.sh kill I             SIGKILL replica I (failure tests)
#   scripts/cluster.sh start I            start replica I again, with the settings `up` saved
#   scripts/cluster.sh down               drain and stop the replicas, stop HAProxy, and stop
#                                         PostgreSQL/Chroma only if `up` started them
#
# Ports (all on 127.0.0.1): load balancer $SWITCHBOARD_LB_PORT (28080); replica I on
# $SWITCHBOARD_REPLICA_BASE_PORT + I - 1 (28101, 28102, ...); PostgreSQL 25432 and Chroma 28000
# (their scripts' defaults). Runtime dir $SWITCHBOARD_CLUSTER_DIR (/tmp/switchboard-cluster):
# replica-I/{data,serve.log,serve.pid}, haproxy/, cluster.env (state), replica.env (the replicas'
# environment, mode 600), api_key and user_id_key (mode 600, when generated).
#
# Replicas get the caller's whole environment unchanged (SWITCHBOARD_API_KEYS, _MODELS_FILE,
# _SETUP_HOOK, OPENAI_API_KEY, ...) plus: SWITCHBOARD_DATA_DIR (their own), and, unless the
# caller set them, SWITCHBOARD_CHECKPOINT_URL (the PostgreSQL "switchboard" database),
# SWITCHBOARD_CHROMA_URL, SWITCHBOARD_USER_ID_KEY (one random key for all replicas, so the
# `user` field names the same conversation on each) and, when neither SWITCHBOARD_API_KEYS nor
# SWITCHBOARD_API_KEYS_FILE is set, SWITCHBOARD_API_KEYS=cluster=<random key> (exported to the
# caller as SWITCHBOARD_CLUSTER_API_KEY; never written to a log). Never --insecure-no-auth.
# settings.yaml/profile.yaml from the caller's data dir (`switchboard init`) are copied to each.
#
# Other env: SWITCHBOARD_CLUSTER_WAIT (seconds for readiness, default 120),
# SWITCHBOARD_CLUSTER_STOP_WAIT (seconds from SIGTERM to SIGKILL on down, default 40: `serve` gives
# in-flight turns 30 s (its --graceful-timeout), then needs a moment to close its stores),
# SWITCHBOARD_LB_CHECK_PATH (readiness path for HAProxy and the waits, default /readyz),
# SWITCHBOARD_CLUSTER_VERBOSE=1 (replicas run `switchboard -v serve`: INFO logs, access log).
# Progress goes to stderr; stdout carries only export lines.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${SWITCHBOARD_CLUSTER_DIR:-/tmp/switchboard-cluster}
STATE=$RUN/cluster.env
REPLICA_ENV=$RUN/replica.env
HOST=127.0.0.1
SERVE=$ROOT/.venv/bin/switchboard
MAX_REPLICAS=8

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Settings: from the state file when a cluster exists (so down/kill/start use what `up` used),
# else from the environment.
load_settings() {
    N=0 STARTED_PG=no STARTED_CHROMA=no KEY_GENERATED=no
    BASE=${SWITCHBOARD_REPLICA_BASE_PORT:-28101}
    LB_PORT=${SWITCHBOARD_LB_PORT:-28080}
    CHECK_PATH=${SWITCHBOARD_LB_CHECK_PATH:-/readyz}
    PG_EXPORTS="" CHROMA_EXPORTS="" CHECKPOINT_URL="" CHROMA_URL=""
    if [[ -f $STATE ]]; then
        # shellcheck source=/dev/null
        . "$STATE"
    fi
    WAIT=${SWITCHBOARD_CLUSTER_WAIT:-120}
    STOP_WAIT=${SWITCHBOARD_CLUSTER_STOP_WAIT:-40}
    if ! is_uint "$BASE" || ! is_uint "$LB_PORT"; then die "ports must be numbers (BASE=$BASE, LB=$LB_PORT)"; fi
    if ! is_uint "$WAIT" || ! is_uint "$STOP_WAIT"; then
        die "SWITCHBOARD_CLUSTER_WAIT/_STOP_WAIT must be whole seconds"
    fi
    LB_URL=http://$HOST:$LB_PORT
}

save_state() {
    local tmp
    tmp=$(mktemp "$RUN/cluster.env.XXXXXX")
    {
        echo "# scripts/cluster.sh state: what \`up\` started and with which settings"
        printf '%s=%q\n' N "$N" BASE "$BASE" LB_PORT "$LB_PORT" CHECK_PATH "$CHECK_PATH" \
            STARTED_PG "$STARTED_PG" STARTED_CHROMA "$STARTED_CHROMA" KEY_GENERATED "$KEY_GENERATED" \
            CHECKPOINT_URL "$CHECKPOINT_URL" CHROMA_URL "$CHROMA_URL" \
            PG_EXPORTS "$PG_EXPORTS" CHROMA_EXPORTS "$CHROMA_EXPORTS"
    } >"$tmp"
    mv -f "$tmp" "$STATE"
}

port_of() { echo $((BASE + $1 - 1)); }
replica_dir() { echo "$RUN/replica-$1"; }
replica_url() { echo "http://$HOST:$(port_of "$1")"; }

# The pid of replica I when it runs: the pidfile's process, and only while it is still our
# `switchboard serve --port P` (pids get reused).
replica_pid() {
    local i=$1 pid pidfile cmd
    pidfile=$(replica_dir "$i")/serve.pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    is_uint "$pid" && kill -0 "$pid" 2>/dev/null || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *" serve "*"--port $(port_of "$i") "* ]] || return 1
    echo "$pid"
}

http_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Shared servers: PostgreSQL and Chroma via their scripts (which say whether they started them).

# Run a server script; sets OUT (its export lines) and STARTED (yes|no).
run_server_script() {
    local script=$1 out
    out=$(bash "$ROOT/scripts/$script") || die "scripts/$script failed"
    OUT=$(grep -E '^export [A-Za-z_][A-Za-z0-9_]*=[^[:space:]]+$' <<<"$out" || true)
    if grep -qx '# started: yes' <<<"$out"; then STARTED=yes; else STARTED=no; fi
}

# The value of NAME in export lines ("export NAME=value").
export_value() {
    sed -n "s/^export $1=//p" <<<"$2" | tail -n 1
}

start_shared_servers() {
    say "PostgreSQL (scripts/postgres.sh)…"
    run_server_script postgres.sh
    PG_EXPORTS=$OUT
    # A server this cluster started stays ours until down, even if a later `up` found it running.
    [[ $STARTED == yes ]] && STARTED_PG=yes
    CHECKPOINT_URL=${SWITCHBOARD_CHECKPOINT_URL:-$(export_value SWITCHBOARD_PG_URL "$PG_EXPORTS")}
    [[ -n $CHECKPOINT_URL ]] || die "scripts/postgres.sh printed no SWITCHBOARD_PG_URL"

    say "Chroma (scripts/chroma.sh)…"
    run_server_script chroma.sh
    CHROMA_EXPORTS=$OUT
    [[ $STARTED == yes ]] && STARTED_CHROMA=yes
    CHROMA_URL=${SWITCHBOARD_CHROMA_URL:-$(export_value SWITCHBOARD_TEST_CHROMA_URL "$CHROMA_EXPORTS")}
    [[ -n $CHROMA_URL ]] || die "scripts/chroma.sh printed no SWITCHBOARD_TEST_CHROMA_URL"
    save_state
}

# ---------------------------------------------------------------------------------------------
# Secrets and the replicas' environment

random_hex() {
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

# A file holding a random key, created once (mode 600); prints the key.
secret_file() {
    local path=$1
    if [[ ! -s $path ]]; then
        (umask 077 && random_hex >"$path.tmp" && mv -f "$path.tmp" "$path")
    fi
    chmod 600 "$path"
    cat "$path"
}

# The environment every replica starts with: the caller's, plus the cluster's settings. Saved
# (mode 600: it may hold keys) so that `start I` later runs a replica with the same settings.
write_replica_env() {
    local tmp key
    tmp=$(mktemp "$RUN/replica.env.XXXXXX")  # mktemp: mode 600
    (
        export SWITCHBOARD_CHECKPOINT_URL=$CHECKPOINT_URL
        export SWITCHBOARD_CHROMA_URL=$CHROMA_URL
        if [[ -z ${SWITCHBOARD_USER_ID_KEY:-} ]]; then
            SWITCHBOARD_USER_ID_KEY=$(secret_file "$RUN/user_id_key")
            export SWITCHBOARD_USER_ID_KEY
        fi
        if [[ $KEY_GENERATED == yes ]]; then
            key=$(secret_file "$RUN/api_key")
            # shellcheck disable=SC2030  # on purpose: only the saved environment gets it
            export SWITCHBOARD_API_KEYS="cluster=$key"
        fi
        # bash's own and per-shell variables are not settings (and some are read-only on re-entry)
        export -p | grep -Ev '^declare -x (BASHOPTS|SHELLOPTS|PWD|OLDPWD|SHLVL|_)(=|$)'
    ) >"$tmp"
    mv -f "$tmp" "$REPLICA_ENV"
}

# ---------------------------------------------------------------------------------------------
# Replicas

launch_replica() {
    local i=$1 dir port pid src f verbose=()
    dir=$(replica_dir "$i")
    port=$(port_of "$i")
    if pid=$(replica_pid "$i"); then
        say "replica $i already running (pid $pid, port $port)"
        return 0
    fi
    [[ -f $REPLICA_ENV ]] || die "no $REPLICA_ENV: run \`$0 up\` first"
    [[ $(http_code "http://$HOST:$port/healthz") == 000 ]] ||
        die "port $port already answers (not replica $i of this cluster): set SWITCHBOARD_REPLICA_BASE_PORT"
    mkdir -p "$dir/data"
    # What `switchboard init` chose (database, help center, profile) applies to every replica.
    src=${SWITCHBOARD_DATA_DIR:-$ROOT/.switchboard}
    for f in settings.yaml profile.yaml; do
        if [[ -f $src/$f && ! $src/$f -ef $dir/data/$f ]]; then cp -p "$src/$f" "$dir/data/$f"; fi
    done
    [[ ${SWITCHBOARD_CLUSTER_VERBOSE:-0} == 1 ]] && verbose=(-v)
    say "starting replica $i on $HOST:$port (log $dir/serve.log)"
    # A clean environment holding exactly the saved one; cwd is the repo (its .env applies, as for
    # a `switchboard serve` run there); setsid: a session of its own, outliving this shell.
    (
        cd "$ROOT"
        echo "--- $(date -Is) starting replica $i on port $port" >>"$dir/serve.log"
        # shellcheck disable=SC2016  # expanded by the inner bash, after it loaded the saved env
        env -i bash --noprofile --norc -c \
            'set -a; . "$1"; set +a; export SWITCHBOARD_DATA_DIR=$2; shift 2; exec setsid "$@"' \
            replica "$REPLICA_ENV" "$dir/data" \
            "$SERVE" "${verbose[@]}" serve --host "$HOST" --port "$port" \
            >>"$dir/serve.log" 2>&1 </dev/null &
        echo $! >"$dir/serve.pid"
    )
}

# Wait until replicas (the arguments) answer CHECK_PATH with 200, within WAIT seconds in all.
wait_ready() {
    local deadline=$((SECONDS + WAIT)) i pid pending=("$@") left
    while ((${#pending[@]})); do
        left=()
        for i in "${pending[@]}"; do
            if ! pid=$(replica_pid "$i"); then
                # just launched: the pid may not have exec'd `switchboard serve` yet
                pid=$(cat "$(replica_dir "$i")/serve.pid" 2>/dev/null || true)
                if is_uint "$pid" && kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); then
                    left+=("$i")
                    continue
                fi
                say "replica $i exited during startup; last lines of its log:"
                tail -n 20 "$(replica_dir "$i")/serve.log" >&2 || true
                die "replica $i did not start (see $(replica_dir "$i")/serve.log; \`$0 down\` cleans up)"
            fi
            if [[ $(http_code "$(replica_url "$i")$CHECK_PATH") == 200 ]]; then
                say "replica $i ready ($(replica_url "$i"), pid $pid)"
            else
                left+=("$i")
            fi
        done
        pending=(${left[@]+"${left[@]}"})
        ((${#pending[@]})) || break
        ((SECONDS < deadline)) || die "replica(s) ${pending[*]} not ready ($CHECK_PATH != 200) within ${WAIT}s; see their serve.log"
        sleep 0.5
    done
}

# SIGTERM the given replicas together (they drain in-flight turns), SIGKILL what is left after
# STOP_WAIT seconds.
stop_replicas() {
    local i pid pids=() deadline=$((SECONDS + STOP_WAIT)) alive
    for i in "$@"; do
        if pid=$(replica_pid "$i"); then
            say "stopping replica $i (pid $pid, SIGTERM: in-flight turns finish)"
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    while ((${#pids[@]})); do
        alive=()
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive+=("$pid")
        done
        pids=(${alive[@]+"${alive[@]}"})
        ((${#pids[@]})) || break
        if ((SECONDS >= deadline)); then
            say "still running after ${STOP_WAIT}s, SIGKILL: ${pids[*]}"
            kill -KILL "${pids[@]}" 2>/dev/null || true
            break
        fi
        sleep 0.25
    done
    for i in "$@"; do rm -f "$(replica_dir "$i")/serve.pid"; done
}

# Replica indexes that have a directory in RUN (any N a previous `up` used).
known_replicas() {
    local d
    for d in "$RUN"/replica-*; do
        [[ -d $d && ${d##*/replica-} =~ ^[0-9]+$ ]] && echo "${d##*/replica-}"
    done | sort -n
}

backends() {
    local i list=""
    for ((i = 1; i <= N; i++)); do list+="$HOST:$(port_of "$i") "; done
    echo "${list% }"
}

haproxy_cmd() {
    SWITCHBOARD_LB_DIR=$RUN/haproxy SWITCHBOARD_LB_PORT=$LB_PORT SWITCHBOARD_LB_CHECK_PATH=$CHECK_PATH \
        SWITCHBOARD_LB_BACKENDS=$(backends) bash "$ROOT/scripts/haproxy.sh" "$@"
}

# ---------------------------------------------------------------------------------------------
# Commands

print_exports() {
    local i urls="" pid_list="" pid lb_pid=""
    for ((i = 1; i <= N; i++)); do
        urls+="$(replica_url "$i") "
        pid=$(replica_pid "$i" || true)
        pid_list+="${pid:-none} "
    done
    [[ -f $RUN/haproxy/haproxy.pid ]] && lb_pid=$(<"$RUN/haproxy/haproxy.pid")
    echo "export SWITCHBOARD_CLUSTER_DIR=$RUN"
    echo "export SWITCHBOARD_CLUSTER_URL=$LB_URL"
    echo "export SWITCHBOARD_CLUSTER_REPLICAS=\"${urls% }\""
    echo "export SWITCHBOARD_CLUSTER_PIDS=\"${pid_list% }\""
    echo "export SWITCHBOARD_CLUSTER_LB_PID=$lb_pid"
    [[ $KEY_GENERATED == yes ]] && echo "export SWITCHBOARD_CLUSTER_API_KEY=$(<"$RUN/api_key")"
    echo "export SWITCHBOARD_CHECKPOINT_URL=$CHECKPOINT_URL"
    echo "export SWITCHBOARD_CHROMA_URL=$CHROMA_URL"
    [[ -n $PG_EXPORTS ]] && echo "$PG_EXPORTS"
    [[ -n $CHROMA_EXPORTS ]] && echo "$CHROMA_EXPORTS"
    return 0
}

cmd_up() {
    local want=${1:-2} i extra=() running=0 all=() deadline
    if ! [[ $want =~ ^[0-9]+$ ]] || ((want < 1 || want > MAX_REPLICAS)); then
        die "N must be 1..$MAX_REPLICAS, not '$want'"
    fi
    [[ -x $SERVE ]] || die "$SERVE not found: install the project venv first (uv sync)"
    command -v curl >/dev/null 2>&1 || die "curl is needed"
    mkdir -p "$RUN"
    chmod 700 "$RUN"
    load_settings
    for i in $(known_replicas); do replica_pid "$i" >/dev/null && running=1; done
    if [[ $running == 1 && -f $REPLICA_ENV ]]; then
        say "a cluster is running in $RUN: keeping the settings its first \`up\` saved (\`down\` first to change them)"
    else
        # a fresh cluster takes its settings from this environment
        BASE=${SWITCHBOARD_REPLICA_BASE_PORT:-28101}
        LB_PORT=${SWITCHBOARD_LB_PORT:-28080}
        CHECK_PATH=${SWITCHBOARD_LB_CHECK_PATH:-/readyz}
        LB_URL=http://$HOST:$LB_PORT
        KEY_GENERATED=no
        # shellcheck disable=SC2031  # the caller's variable, not the subshell's in write_replica_env
        if [[ -z ${SWITCHBOARD_API_KEYS:-} && -z ${SWITCHBOARD_API_KEYS_FILE:-} ]]; then
            KEY_GENERATED=yes
            say "SWITCHBOARD_API_KEYS is not set: the replicas accept the key in $RUN/api_key (principal 'cluster')"
        fi
    fi
    ((BASE + want - 1 <= 65535)) || die "replica ports past 65535"
    start_shared_servers
    if [[ $running == 0 || ! -f $REPLICA_ENV ]]; then
        write_replica_env
    fi
    # fewer replicas than last time: the extra ones leave (HAProxy's reload below drops them first)
    for i in $(known_replicas); do ((i > want)) && extra+=("$i"); done
    N=$want
    save_state
    for ((i = 1; i <= N; i++)); do launch_replica "$i"; done
    haproxy_cmd start >/dev/null
    if ((${#extra[@]})); then stop_replicas "${extra[@]}"; fi
    mapfile -t all < <(seq 1 "$N")
    wait_ready "${all[@]}"
    deadline=$((SECONDS + WAIT))
    until [[ $(http_code "$LB_URL$CHECK_PATH") == 200 ]]; do
        ((SECONDS < deadline)) || die "HAProxy at $LB_URL does not answer $CHECK_PATH with 200 (see $RUN/haproxy/haproxy.log)"
        sleep 0.5
    done
    say "cluster up: $N replica(s) behind $LB_URL (state in $RUN)"
    print_exports
}

url_port() { sed -n 's|^[a-z]*://[^/]*:\([0-9][0-9]*\).*|\1|p' <<<"$1"; }

# Established TCP connections to a local port (our replicas are stopped by then: any is someone
# else's, e.g. a test session that found the server running and uses it).
clients_of() {
    if [[ -z $1 ]] || ! command -v ss >/dev/null 2>&1; then
        echo 0
        return
    fi
    ss -Htn state established "( sport = :$1 )" | wc -l
}

# Stop a server `up` started (never one that was already running), unless others still use it.
stop_shared() {
    local name=$1 script=$2 started=$3 port=$4 n
    if [[ $started != yes ]]; then
        [[ -f $STATE ]] && say "leaving $name running (it was already running before \`up\`)"
        return 0
    fi
    n=$(clients_of "$port")
    if ((n > 0)); then
        say "leaving $name running: this cluster started it, but $n other connection(s) use it now" \
            "(stop it later with scripts/$script stop)"
        return 0
    fi
    say "stopping $name (this cluster started it)"
    bash "$ROOT/scripts/$script" stop >&2 || say "warning: scripts/$script stop failed"
}

cmd_down() {
    local i replicas=()
    load_settings
    mapfile -t replicas < <(known_replicas)
    if ((${#replicas[@]})); then stop_replicas "${replicas[@]}"; fi
    SWITCHBOARD_LB_DIR=$RUN/haproxy bash "$ROOT/scripts/haproxy.sh" stop
    stop_shared Chroma chroma.sh "$STARTED_CHROMA" "$(url_port "$(export_value SWITCHBOARD_TEST_CHROMA_URL "$CHROMA_EXPORTS")")"
    stop_shared PostgreSQL postgres.sh "$STARTED_PG" "$(url_port "$(export_value SWITCHBOARD_PG_URL "$PG_EXPORTS")")"
    # the keys stay (api_key, user_id_key: a new `up` reuses them); the saved environment goes
    rm -f "$STATE" "$REPLICA_ENV"
    say "cluster down (logs and data kept in $RUN)"
}

cmd_status() {
    local i pid code ok=0
    load_settings
    if [[ ! -f $STATE ]]; then
        echo "no cluster in $RUN"
        return 3
    fi
    for ((i = 1; i <= N; i++)); do
        pid=$(replica_pid "$i" || true)
        code=$(http_code "$(replica_url "$i")$CHECK_PATH")
        [[ $code == 200 ]] || ok=3
        printf 'replica %d  %-24s pid %-8s %s %s\n' "$i" "$(replica_url "$i")" "${pid:-none}" "$CHECK_PATH" "$code"
    done
    code=$(http_code "$LB_URL$CHECK_PATH")
    [[ $code == 200 ]] || ok=3
    printf 'lb         %-24s %-12s %s %s\n' "$LB_URL" "" "$CHECK_PATH" "$code"
    SWITCHBOARD_LB_DIR=$RUN/haproxy bash "$ROOT/scripts/haproxy.sh" status || ok=3
    return $ok
}

replica_index() {
    if ! [[ ${1:-} =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > N)); then
        die "replica index must be 1..$N, not '${1:-}'"
    fi
}

cmd_kill() {
    local pid
    load_settings
    [[ -f $STATE ]] || die "no cluster in $RUN"
    replica_index "${1:-}"
    if pid=$(replica_pid "$1"); then
        kill -KILL "$pid"
        rm -f "$(replica_dir "$1")/serve.pid"
        say "replica $1 (pid $pid) killed with SIGKILL"
    else
        say "replica $1 is not running"
    fi
}

cmd_start() {
    load_settings
    [[ -f $STATE ]] || die "no cluster in $RUN: use \`$0 up\`"
    replica_index "${1:-}"
    launch_replica "$1"
    wait_ready "$1"
    wait_in_rotation "$1"
}

# Wait (a few seconds: checks run every second) until HAProxy has replica I back in rotation.
wait_in_rotation() {
    local i
    for ((i = 0; i < 20; i++)); do
        if haproxy_cmd status 2>/dev/null | grep -Eq "^ +r$1 +[^ ]+ +UP "; then
            say "replica $1 is back in HAProxy's rotation"
            return 0
        fi
        sleep 0.25
    done
    say "warning: HAProxy does not show replica $1 UP yet (see \`$0 status\`)"
}

case ${1:-} in
    up) cmd_up "${2:-2}" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    kill) cmd_kill "${2:-}" ;;
    start) cmd_start "${2:-}" ;;
    *) echo "usage: $0 up [N] | down | status | kill I | start I" >&2; exit 2 ;;
esac
