#!/usr/bin/env bash
# sluice's whole test suite: formatting, lints, and every test — the store suite on SQLite and a
# real PostgreSQL, the Lightning suite on the dev wallet and a real LNbits (LND and Core Lightning
# against sample responses), the gateway's API and failure tests, the end-to-end process tests,
# a third-party L402 client paying over LNbits, and an answer from the real local model.
#
# It installs and starts what it needs (PostgreSQL when none listens on 127.0.0.1:5432, LNbits in
# .venv-lnbits, the model file in the user's cache) and stops what it started, even on failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*" >&2; }
LNBITS_DIR=""
cleanup() {
    local rc=$?
    if [ -n "$LNBITS_DIR" ]; then scripts/lnbits.sh stop "$LNBITS_DIR" || true; fi
    scripts/postgres.sh stop || true
    exit $rc
}
trap cleanup EXIT INT TERM

command -v cargo >/dev/null || { echo "cargo is needed (https://rustup.rs)" >&2; exit 1; }

step "PostgreSQL"
if [ -z "${SLUICE_TEST_PG_URL:-}" ]; then
    SLUICE_TEST_PG_URL=$(scripts/postgres.sh start)
    export SLUICE_TEST_PG_URL
fi
echo "SLUICE_TEST_PG_URL=$SLUICE_TEST_PG_URL" >&2

step "LNbits (FakeWallet, offline)"
envfile=$(scripts/lnbits.sh start)
set -a
# shellcheck disable=SC1090
. "$envfile"
set +a
LNBITS_DIR="$SLUICE_TEST_LNBITS_DIR"

step "a third-party L402 client (Alby lightning-tools, from npm)"
command -v npm >/dev/null || { echo "npm (Node.js) is needed for the L402 interoperability test" >&2; exit 1; }
(cd scripts/l402-client && npm ci --silent --no-audit --no-fund 2>&1 | grep -v 'Unknown user config' >&2 || true)
test -d scripts/l402-client/node_modules/@getalby/lightning-tools || { echo "npm ci failed in scripts/l402-client" >&2; exit 1; }

step "the default local model"
scripts/fetch-model.sh >&2

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked
