#!/usr/bin/env bash
# Runs every test of the workspace against real infrastructure, starting it from nothing:
# Kafka, Postgres and Redis come up through scripts/infra.sh (installed if missing), the tests
# use their own database (paystream_test) so a dev fleet's data is left alone.
#
#   scripts/test.sh                 all tests
#   scripts/test.sh -p order-store  extra arguments go to `cargo test`
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "ERROR: cargo not found: install Rust (rustup) first" >&2; exit 1; }

"$SCRIPT_DIR/infra.sh" up

PG_PORT="${PAYSTREAM_PG_PORT:-5432}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:${PAYSTREAM_KAFKA_PORT:-9092}}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:${PAYSTREAM_REDIS_PORT:-6379}}"
export DATABASE_URL="${PAYSTREAM_TEST_DATABASE_URL:-postgres://paystream:paystream@127.0.0.1:$PG_PORT/paystream_test}"

db_name="${DATABASE_URL##*/}"
admin_url="${DATABASE_URL%/*}/postgres"
if [[ "$(psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db_name'")" != 1 ]]; then
  echo "==> creating test database $db_name"
  psql "$admin_url" -qc "CREATE DATABASE \"$db_name\""
fi

# Each in-process test fleet makes a database of its own (tests/src/lib.rs); forget earlier runs'.
for old in $(psql "$admin_url" -tAc "SELECT datname FROM pg_database WHERE datname LIKE 'e2e\_%'"); do
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS \"$old\" WITH (FORCE)" >/dev/null
done

cd "$REPO_ROOT"
echo "==> cargo test (first build compiles librdkafka; several minutes on 2 cores)"
cargo test --workspace --no-fail-fast "$@"
