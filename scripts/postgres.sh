#!/usr/bin/env bash
# A PostgreSQL server for sluice's tests.
#
#   scripts/postgres.sh start   print a connection URL; uses the server on 127.0.0.1:5432 when it
#                               accepts `postgres` without a password (trust auth), otherwise
#                               installs Debian's postgresql if needed and starts a private
#                               cluster (trust auth, a free port, data under .cache/pg)
#   scripts/postgres.sh stop    stop the private cluster, if this script started one
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="$ROOT/.cache/pg"
log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

can_connect() { # URL
    if command -v psql >/dev/null; then
        psql "$1" -qAtc 'select 1' >/dev/null 2>&1
    else
        return 1
    fi
}

bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cmd_start() {
    local shared="postgres://postgres@127.0.0.1:5432/test"
    if can_connect "$shared"; then
        log "using the PostgreSQL server on 127.0.0.1:5432"
        echo "$shared"
        return
    fi
    local bin
    bin=$(bindir || true)
    if [ -z "$bin" ]; then
        log "installing Debian's postgresql"
        command -v apt-get >/dev/null || die "no PostgreSQL server and no apt-get to install one"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        bin=$(bindir) || die "postgresql installed but initdb not found"
    fi
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    local port
    port=$(free_port)
    rm -rf "$DATA"
    mkdir -p "$DATA"
    chown postgres "$DATA"
    runuser -u postgres -- "$bin/initdb" -D "$DATA/data" -A trust -U postgres >"$DATA/initdb.log" 2>&1 \
        || die "initdb failed: $(tail -5 "$DATA/initdb.log")"
    runuser -u postgres -- "$bin/pg_ctl" -D "$DATA/data" -l "$DATA/server.log" -w -t 60 \
        -o "-p $port -k $DATA -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >&2 \
        || die "PostgreSQL did not start: $(tail -5 "$DATA/server.log")"
    echo "$port" >"$DATA/port"
    runuser -u postgres -- "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres test
    log "started a private PostgreSQL on 127.0.0.1:$port"
    echo "postgres://postgres@127.0.0.1:$port/test"
}

cmd_stop() {
    [ -f "$DATA/port" ] || return 0
    local bin
    bin=$(bindir) || return 0
    runuser -u postgres -- "$bin/pg_ctl" -D "$DATA/data" -m fast stop >&2 || true
    rm -rf "$DATA"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
