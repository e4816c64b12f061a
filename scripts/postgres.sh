#!/usr/bin/env bash
# A throwaway local PostgreSQL for Switchboard's tests, CI and demos.
#
#   scripts/postgres.sh          install (if needed), init, start, load; prints export lines
#   eval "$(scripts/postgres.sh)" sets SWITCHBOARD_TEST_PG_URL & co in the current shell
#   scripts/postgres.sh stop     stops the server (the data dir is kept)
#
# Idempotent and fast when the server is already up and loaded. Listens on 127.0.0.1 only,
# with trust authentication: for local tests, never for anything reachable from outside.
# Progress goes to stderr; stdout carries only the export lines.
#
# Databases: "switchboard" (LangGraph checkpoints) and "chinook" (the demo data, copied from the
# repo's own data/chinook/chinook.sqlite, adapted for PostgreSQL: no file outside the repo needed). Role "chinook_reader" may only read
# chinook: SELECT on its tables, read-only transactions by default, no TEMP tables.
#
# Identifiers stay PascalCase and quoted ("Customer"."FirstName"), exactly as in SQLite; the
# SQL tool quotes unquoted names that match the schema, so the same model SQL runs on both.
set -euo pipefail

PG_DIR=${SWITCHBOARD_PG_DIR:-/tmp/switchboard-pg}
# Ports below Linux's ephemeral range (32768-60999): a client socket in TIME_WAIT cannot hold them.
PG_PORT=${SWITCHBOARD_PG_PORT:-25432}
PG_HOST=127.0.0.1
DATA_DIR=$PG_DIR/data
LOG_FILE=$PG_DIR/postgres.log
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHINOOK_DB=${SWITCHBOARD_CHINOOK_DB:-$REPO_ROOT/data/chinook/chinook.sqlite}

say() { echo "postgres.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Binaries: PATH, then Debian's versioned dir, else install the Debian package.

find_bindir() {
    local candidate
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    for candidate in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        if [[ -x $candidate/initdb && -x $candidate/pg_ctl ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_postgres() {
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed and we are not root: apt-get install postgresql"
    say "installing PostgreSQL from Debian packages (apt-get)…"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
}

BIN_DIR=$(find_bindir || true)
if [[ -z $BIN_DIR && ${1:-start} != stop ]]; then
    install_postgres
    BIN_DIR=$(find_bindir) || die "initdb/pg_ctl still not found after installing postgresql"
fi

# initdb and pg_ctl refuse to run as root: use the postgres OS user (created by the package).
as_pg() {
    if [[ $(id -u) -ne 0 ]]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u postgres -- "$@"
    else
        su -s /bin/sh postgres -c "$(printf '%q ' "$@")"
    fi
}

ensure_os_user() {
    [[ $(id -u) -eq 0 ]] || return 0
    id postgres >/dev/null 2>&1 || useradd --system --user-group --home-dir "$PG_DIR" postgres
    mkdir -p "$PG_DIR"
    chown postgres: "$PG_DIR"
}

is_running() {
    [[ -f $DATA_DIR/PG_VERSION ]] && as_pg "$BIN_DIR/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# Commands

stop() {
    if [[ -n $BIN_DIR ]] && is_running; then
        as_pg "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -m fast -w stop >&2
    else
        say "not running ($DATA_DIR)"
    fi
}

init_cluster() {
    [[ -f $DATA_DIR/PG_VERSION ]] && return 0
    say "creating cluster in $DATA_DIR"
    as_pg "$BIN_DIR/initdb" -D "$DATA_DIR" -U postgres --auth=trust --encoding=UTF8 \
        --no-locale --no-instructions >&2
    # Loopback TCP only, no Unix socket; durability traded for speed (a throwaway test DB).
    cat >>"$DATA_DIR/postgresql.conf" <<EOF

# --- scripts/postgres.sh ---
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = ''
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
}

STARTED_NOW=0  # 1 when this run started the server (a test session then stops it at its end)

start_server() {
    is_running && return 0
    STARTED_NOW=1
    say "starting PostgreSQL on $PG_HOST:$PG_PORT (log: $LOG_FILE)"
    # -p: the port asked for now, even in a cluster created with another one
    if ! as_pg "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -o "-p $PG_PORT" -w -t 60 start >&2; then
        tail -n 20 "$LOG_FILE" >&2 || true
        die "PostgreSQL did not start (is port $PG_PORT taken? see $LOG_FILE)"
    fi
}

psql_admin() {
    # As superuser over loopback TCP; callers pass -d DB and -c/-f.
    PGCLIENTENCODING=UTF8 "$BIN_DIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" \
        -U postgres "$@"
}

ensure_database() {
    local name=$1
    if [[ -z $(psql_admin -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'") ]]; then
        say "creating database $name"
        psql_admin -d postgres -c "CREATE DATABASE $name"
    fi
}

# chinook.sqlite -> PostgreSQL: the tables' DDL as SQLite stores it ([brackets] become "quotes",
# NVARCHAR -> VARCHAR, DATETIME -> TIMESTAMP, foreign keys move to ALTER TABLEs after the data),
# then every row as INSERTs. Loaded in one transaction, so a failed load leaves nothing behind and
# the next run retries.
convert_chinook() {
    local python=${PYTHON:-python3}
    command -v "$python" >/dev/null 2>&1 || python=$REPO_ROOT/.venv/bin/python
    "$python" - "$CHINOOK_DB" <<'PY'
import re
import sqlite3
import sys

db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
tables = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
                    "ORDER BY name").fetchall()
ddl = "\n".join(sql.strip() + ";" for _, sql in tables)
ddl = re.sub(r"\[([^\]]+)\]", r'"\1"', ddl)
ddl = re.sub(r"\bNVARCHAR\b", "VARCHAR", ddl)
ddl = re.sub(r"\bDATETIME\b", "TIMESTAMP", ddl)
fk = re.compile(
    r",\s*FOREIGN KEY\s*\(([^)]*)\)\s*REFERENCES\s*(\"\w+\")\s*\(([^)]*)\)"
    r"\s*ON DELETE NO ACTION ON UPDATE NO ACTION"
)
constraints = []

def strip_fks(m: re.Match) -> str:
    table = m.group(1)
    for cols, ref, ref_cols in fk.findall(m.group(2)):
        constraints.append(f"ALTER TABLE {table} ADD FOREIGN KEY ({cols}) REFERENCES {ref} ({ref_cols});")
    return f"CREATE TABLE {table}\n({fk.sub('', m.group(2))}\n);"

ddl = re.sub(r"CREATE TABLE (\"\w+\")\s*\((.*?)\n\);", strip_fks, ddl, flags=re.S)
if "FOREIGN KEY" in ddl or "[" in ddl:
    sys.exit("convert_chinook: unexpected DDL left after conversion")

def literal(v: object) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, (int, float)):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"

out = sys.stdout
out.write("SET client_min_messages = warning;\n" + ddl + "\n")
for name, _ in tables:
    cur = db.execute(f'SELECT * FROM "{name}"')
    cols = ", ".join(f'"{d[0]}"' for d in cur.description)
    while rows := cur.fetchmany(500):
        out.write(f'INSERT INTO "{name}" ({cols}) VALUES\n'
                  + ",\n".join("(" + ", ".join(literal(v) for v in row) + ")" for row in rows) + ";\n")
out.write("\n".join(constraints) + "\nANALYZE;\n")
PY
}

load_chinook() {
    local loaded
    loaded=$(psql_admin -d chinook -tAc "SELECT to_regclass('public.\"InvoiceLine\"') IS NOT NULL")
    if [[ $loaded != t ]]; then
        [[ -r $CHINOOK_DB ]] || die "Chinook database not found: $CHINOOK_DB (set SWITCHBOARD_CHINOOK_DB)"
        say "loading Chinook from $CHINOOK_DB"
        convert_chinook | psql_admin -d chinook --single-transaction -f - >/dev/null
    fi
}

ensure_reader_role() {
    # Cheap to re-run; keeps the grants right if a database was recreated. The reader may
    # connect to chinook only (switchboard holds conversations), read its tables, nothing else.
    psql_admin -d chinook >/dev/null <<'SQL'
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chinook_reader') THEN
        CREATE ROLE chinook_reader LOGIN;
    END IF;
END $$;
ALTER ROLE chinook_reader SET default_transaction_read_only = on;
REVOKE ALL ON DATABASE chinook, switchboard, postgres FROM PUBLIC;
GRANT CONNECT ON DATABASE chinook TO chinook_reader;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO chinook_reader;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM chinook_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO chinook_reader;
SQL
}

start() {
    ensure_os_user
    init_cluster
    start_server
    ensure_database switchboard
    ensure_database chinook
    load_chinook
    ensure_reader_role
    local base="postgresql://postgres@$PG_HOST:$PG_PORT"
    echo "export SWITCHBOARD_PG_URL=$base/switchboard"
    echo "export SWITCHBOARD_CHINOOK_ADMIN_URL=$base/chinook"
    echo "export SWITCHBOARD_TEST_PG_URL=postgresql://chinook_reader@$PG_HOST:$PG_PORT/chinook"
    # not for the caller's environment: tells tests/conftest.py whether the server is its to stop
    [[ $STARTED_NOW == 1 ]] && echo "# started: yes" || echo "# started: no"
}

case ${1:-start} in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 [start|stop]" ;;
esac
