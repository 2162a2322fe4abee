#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the sink tests and print its DSN.
#
# Usage (from .ci/run or a shell):
#     export SERVOMEXLIB_TEST_POSTGRES_DSN="$(bash .ci/postgres.sh)"
#     ...run the tests...
#     bash .ci/postgres.sh stop            # optional: stop the server
#
# stdout carries exactly one line, the DSN
#     postgresql://servomex:servomex@127.0.0.1:${SERVOMEXLIB_PG_PORT:-55432}/servomex_test
# and everything else goes to stderr. The same `export SERVOMEXLIB_TEST_POSTGRES_DSN=…` line is
# written to "$STATE/env" so later steps can `source` it.
#
# What it does: installs PostgreSQL from Debian's packages with apt-get if no server binaries are
# found (needs root, no stdin needed); initialises a cluster in $STATE (default
# ${TMPDIR:-/tmp}/servomexlib-pg-$PORT) as the `postgres` system user when run as root (initdb
# refuses root), or as the current user otherwise; starts it listening on 127.0.0.1:$PORT only
# (its Unix socket inside $STATE, so /var/run/postgresql is not needed) with password
# authentication over TCP; creates the role `servomex` (password `servomex`) and the database
# `servomex_test`. Idempotent: a second run finds the server up and only re-checks the role and
# database. It never touches Debian's own clusters (pg_lsclusters).
set -euo pipefail

PORT="${SERVOMEXLIB_PG_PORT:-55432}"
STATE="${SERVOMEXLIB_PG_STATE:-${TMPDIR:-/tmp}/servomexlib-pg-$PORT}"
DATA="$STATE/data"
LOG="$STATE/server.log"
DB_USER="servomex"
DB_PASSWORD="servomex"
DB_NAME="servomex_test"
DSN="postgresql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/$DB_NAME"

log() { printf 'postgres.sh: %s\n' "$*" >&2; }

# CI may run with a short PATH; runuser lives in /usr/sbin on Debian.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

find_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        printf '%s\n' "$dir"
    fi
}

BINDIR="$(find_bindir)"

if [[ "${1:-}" == "stop" ]]; then
    if [[ -n "$BINDIR" && -f "$DATA/postmaster.pid" ]]; then
        if [[ "$(id -u)" -eq 0 ]]; then
            runuser -u postgres -- "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
        else
            "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
        fi
    fi
    exit 0
fi

if [[ -z "$BINDIR" ]]; then
    if [[ "$(id -u)" -ne 0 ]]; then
        log "PostgreSQL server binaries not found and not root: install the 'postgresql' package"
        exit 1
    fi
    log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 </dev/null
    apt-get install -y -q --no-install-recommends postgresql >&2 </dev/null
    BINDIR="$(find_bindir)"
    if [[ -z "$BINDIR" ]]; then
        log "apt-get installed postgresql but no server binaries were found"
        exit 1
    fi
fi
log "using $BINDIR"

# Run a command as the cluster's owner: `postgres` when we are root, ourselves otherwise.
as_owner() {
    if [[ "$(id -u)" -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

mkdir -p "$STATE"
if [[ "$(id -u)" -eq 0 ]]; then
    chown postgres: "$STATE"
    chmod 700 "$STATE"
fi

psql_admin() {
    # Superuser over the private Unix socket (trust), quiet, stop on the first error.
    as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$STATE" -p "$PORT" -d postgres "$@"
}

if ! as_owner "$BINDIR/pg_isready" -q -h "$STATE" -p "$PORT"; then
    if [[ ! -s "$DATA/PG_VERSION" ]]; then
        log "initialising a cluster in $DATA"
        rm -rf "$DATA"
        as_owner "$BINDIR/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 >"$STATE/initdb.log" 2>&1 || {
            cat "$STATE/initdb.log" >&2
            exit 1
        }
    fi
    # A stale pid file from a killed server would stop pg_ctl from starting.
    if [[ -f "$DATA/postmaster.pid" ]]; then
        stale_pid="$(head -n 1 "$DATA/postmaster.pid" || true)"
        if [[ -z "$stale_pid" ]] || ! kill -0 "$stale_pid" 2>/dev/null; then
            rm -f "$DATA/postmaster.pid"
        fi
    fi
    log "starting the server on 127.0.0.1:$PORT (log: $LOG)"
    if ! as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PORT -k $STATE -c fsync=off" start >&2; then
        tail -n 50 "$LOG" >&2 || true
        exit 1
    fi
fi

psql_admin <<SQL
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', '$DB_USER', '$DB_PASSWORD')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER') \gexec
ALTER ROLE $DB_USER WITH LOGIN PASSWORD '$DB_PASSWORD';
SELECT format('CREATE DATABASE %I OWNER %I', '$DB_NAME', '$DB_USER')
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB_NAME') \gexec
SQL

# Prove the DSN works over TCP with the password before handing it out.
if ! PGPASSWORD="$DB_PASSWORD" "$BINDIR/psql" -X -q -tA "$DSN" -c "SELECT 1" >/dev/null; then
    log "the server is up but $DB_USER cannot log in over TCP"
    exit 1
fi

printf 'export SERVOMEXLIB_TEST_POSTGRES_DSN=%q\n' "$DSN" >"$STATE/env"
log "ready: $DSN"
printf '%s\n' "$DSN"
