#!/usr/bin/env bash
# Test harness: a real, offline LNbits (FakeWallet funding source, SQLite) for
# sluice-lightning's LNbits conformance tests. No real money moves.
#
#   scripts/lnbits.sh install        create .venv-lnbits at the repo root and install LNbits (idempotent)
#   scripts/lnbits.sh start          install if needed, start a fresh LNbits, print the path of its env file
#   scripts/lnbits.sh stop [DIR]     stop the instance started from DIR (default: the last one) and delete DIR
#   scripts/lnbits.sh env [DIR]      print the env file of DIR (default: the last one)
#
# The env file holds KEY=VALUE lines, ready for `set -a; . "$file"; set +a`:
#   SLUICE_TEST_LNBITS_URL          base URL, e.g. http://127.0.0.1:41234
#   SLUICE_TEST_LNBITS_ADMIN_TOKEN  the superuser's bearer token (creates and funds wallets)
#   SLUICE_TEST_LNBITS_DIR          the data folder (pass it to `stop`)
#
# Variables: SLUICE_LNBITS_PYTHON (interpreter for the venv, default python3),
# SLUICE_LNBITS_START_TIMEOUT (seconds to wait for health, default 60).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-lnbits"
LNBITS_VERSION="1.6.2"
BITSTRING_VERSION="4.4.0" # bitstring 5 breaks lnbits' bolt11 dependency
STATE="$ROOT/.cache/lnbits-last"
PY="$VENV/bin/python"

log() { echo "lnbits.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

installed() {
    [ -x "$PY" ] && "$PY" - "$LNBITS_VERSION" "$BITSTRING_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("lnbits") == sys.argv[1] and version("bitstring") == sys.argv[2] else 1)
EOF
}

cmd_install() {
    if installed; then
        log "lnbits $LNBITS_VERSION already installed in $VENV"
        return 0
    fi
    local base="${SLUICE_LNBITS_PYTHON:-python3}"
    command -v "$base" >/dev/null || die "$base not found (LNbits needs Python 3.10-3.12)"
    "$base" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' \
        || die "$base is $("$base" --version 2>&1); LNbits $LNBITS_VERSION needs Python 3.10-3.12 (set SLUICE_LNBITS_PYTHON)"
    [ -x "$PY" ] || "$base" -m venv "$VENV"
    log "installing lnbits $LNBITS_VERSION into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check \
        "lnbits==$LNBITS_VERSION" "bitstring==$BITSTRING_VERSION" >&2
    installed || die "install finished but lnbits $LNBITS_VERSION is not importable"
}

# Start detached in its own session (so `stop` can kill the whole process
# group, children included), with output to $2 and the pid in $3.
spawn() {
    local workdir="$1" logfile="$2" pidfile="$3"; shift 3
    # `cd` first, separately: `cd && setsid ... &` would background a subshell
    # and record its pid instead of the server's. A non-interactive shell does
    # not put background jobs in their own group, so setsid execs in place and
    # $! is the new session's (and process group's) leader.
    (
        cd "$workdir" || exit 1
        setsid "$@" >"$logfile" 2>&1 </dev/null &
        echo $! >"$pidfile"
    )
}

# Stop a process group whose leader's pid is in a file.
kill_group() {
    local pidfile="$1" pid i
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    rm -f "$pidfile"
    [ -n "$pid" ] || return 0
    if ! kill -TERM -- "-$pid" 2>/dev/null; then
        # Not a group leader after all: stop at least the process itself.
        kill -TERM "$pid" 2>/dev/null || true
        return 0
    fi
    for i in $(seq 1 50); do
        kill -0 -- "-$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
}

cmd_start() {
    cmd_install
    command -v setsid >/dev/null || die "setsid not found (util-linux)"
    # Globals, not locals: the EXIT trap below may run after this function's scope is gone.
    dir="$(mktemp -d "${TMPDIR:-/tmp}/sluice-lnbits.XXXXXX")"
    mkdir -p "$ROOT/.cache"
    echo "$dir" >"$STATE"
    # Whatever fails from here on, do not leave processes or folders behind.
    started=""
    trap 'if [ -z "$started" ]; then log "start failed; log tail:"; tail -n 30 "$dir/lnbits.log" >&2 2>/dev/null || true; cmd_stop "$dir" || true; fi' EXIT

    local pkg
    pkg="$("$PY" -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("lnbits").origin))')"
    # LNbits mounts ./lnbits/static and ./lnbits/templates relative to its cwd.
    mkdir -p "$dir/run/lnbits" "$dir/data"
    ln -s "$pkg/static" "$dir/run/lnbits/static"
    ln -s "$pkg/templates" "$dir/run/lnbits/templates"

    # A local BTC price source, so invoices do not wait on online price lookups.
    cat >"$dir/price.py" <<'EOF'
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"rates": {"median": 100000}}).encode()
        self.send_response(200 if self.path.startswith("/rate/") else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
EOF
    spawn "$dir" "$dir/price.log" "$dir/price.pid" "$PY" "$dir/price.py" "$dir/price.port"
    local i
    for i in $(seq 1 100); do [ -s "$dir/price.port" ] && break; sleep 0.05; done
    [ -s "$dir/price.port" ] || die "price server did not start"
    local price_port port
    price_port="$(cat "$dir/price.port")"
    port="$("$PY" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"

    spawn "$dir/run" "$dir/lnbits.log" "$dir/lnbits.pid" env \
        LNBITS_BACKEND_WALLET_CLASS=FakeWallet \
        FAKE_WALLET_SECRET="sluice-test-$RANDOM$RANDOM" \
        LNBITS_DATA_FOLDER="$dir/data" \
        LNBITS_ADMIN_UI=true \
        LNBITS_EXTENSIONS_MANIFESTS='[]' \
        LNBITS_WASM_EXTENSIONS_MANIFESTS='[]' \
        LNBITS_PRICE_AGGREGATOR_URL="http://127.0.0.1:$price_port" \
        LNBITS_EXCHANGE_RATE_PROVIDERS='[]' \
        LNBITS_CALLBACK_URL_RULES='["http://127\\.0\\.0\\.1(:\\d+)?"]' \
        LNBITS_CALLBACK_ALLOW_PRIVATE_IPS=true \
        "$VENV/bin/lnbits" --host 127.0.0.1 --port "$port"

    local url="http://127.0.0.1:$port"
    # Health, then first install (the superuser); both in Python so curl is not needed.
    "$PY" - "$url" "${SLUICE_LNBITS_START_TIMEOUT:-60}" "$dir/env" "$dir" "$dir/lnbits.pid" <<'EOF'
import json, os, secrets, sys, time, urllib.request, urllib.error
url, timeout, envfile, folder, pidfile = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
pid = int(open(pidfile).read())
deadline = time.monotonic() + timeout

class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None
opener = urllib.request.build_opener(NoRedirect)

def req(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    r = urllib.request.Request(url + path, data=data, method=method, headers={"content-type": "application/json"})
    with opener.open(r, timeout=10) as resp:
        return json.loads(resp.read() or b"null")

while True:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("lnbits exited during startup")
    try:
        req("GET", "/api/v1/health")
        break
    except urllib.error.HTTPError as e:
        if e.code in (307, 308):  # up, but redirecting everything to /first_install
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"lnbits did not become healthy within {timeout:.0f}s")
    time.sleep(0.1)

password = secrets.token_urlsafe(18)
while True:
    try:
        out = req("PUT", "/api/v1/auth/first_install",
                  {"username": "sluice", "password": password, "password_repeat": password})
        break
    except urllib.error.HTTPError as e:
        if time.monotonic() > deadline:
            sys.exit(f"first_install failed: HTTP {e.code} {e.read()[:300]!r}")
        time.sleep(0.2)
token = out["access_token"]
with open(envfile + ".tmp", "w") as f:
    f.write(f"SLUICE_TEST_LNBITS_URL={url}\n")
    f.write(f"SLUICE_TEST_LNBITS_ADMIN_TOKEN={token}\n")
    f.write(f"SLUICE_TEST_LNBITS_DIR={folder}\n")
os.chmod(envfile + ".tmp", 0o600)
os.rename(envfile + ".tmp", envfile)
EOF
    started=yes
    trap - EXIT
    log "LNbits $LNBITS_VERSION up at $url (data: $dir); stop with: scripts/lnbits.sh stop $dir"
    log "load it with: set -a; . $dir/env; set +a"
    echo "$dir/env"
}

resolve_dir() {
    local dir="${1:-}"
    if [ -z "$dir" ]; then
        [ -f "$STATE" ] || die "no instance recorded in $STATE; pass its folder"
        dir="$(cat "$STATE")"
    fi
    echo "$dir"
}

cmd_stop() {
    local dir="${1:-}"
    if [ -z "$dir" ] && [ ! -f "$STATE" ]; then
        log "no instance recorded; nothing to stop"
        return 0
    fi
    dir="$(resolve_dir "$dir")"
    [ -d "$dir" ] || { log "$dir is gone; nothing to stop"; rm -f "$STATE"; return 0; }
    # Refuse to delete anything that is not one of our folders.
    case "$(basename "$dir")" in sluice-lnbits.*) ;; *) die "$dir is not an lnbits.sh folder";; esac
    kill_group "$dir/lnbits.pid"
    kill_group "$dir/price.pid"
    rm -rf -- "$dir"
    if [ -f "$STATE" ] && [ "$(cat "$STATE")" = "$dir" ]; then rm -f "$STATE"; fi
    log "stopped and removed $dir"
}

cmd_env() {
    local dir
    dir="$(resolve_dir "${1:-}")"
    cat "$dir/env"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) shift; cmd_stop "${1:-}" ;;
    env) shift; cmd_env "${1:-}" ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
