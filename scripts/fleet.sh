#!/usr/bin/env bash
# The whole paystream fleet on this machine, natively:
#   scripts/fleet.sh up      infrastructure (Kafka, Postgres, Redis), build, migrations, topics,
#                            psp-sim alpha+beta (unless PSP_<NAME>_URL is set), every service
#   scripts/fleet.sh down    stop the services (SIGTERM: they finish in-flight work), then the infra
#   scripts/fleet.sh stop    stop the services only
#   scripts/fleet.sh status  what runs where
#
# Settings (environment; the names are contract, see README): KAFKA_BOOTSTRAP_SERVERS,
# DATABASE_URL, REDIS_URL, PAYSTREAM_JWT_SECRET, PAYSTREAM_API_ADDR, PSP_<NAME>_URL,
# PSP_<NAME>_API_KEY, PSP_<NAME>_WEBHOOK_SECRET; PAYSTREAM_REPLICAS (default 1) instances of each
# consuming service; PAYSTREAM_PROFILE=release for an optimised build.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
DATA_DIR="$(realpath -m "${PAYSTREAM_DATA_DIR:-$REPO_ROOT/.data}")"
RUN_DIR="$DATA_DIR/fleet"
LOG_DIR="$DATA_DIR/logs"
PROFILE="${PAYSTREAM_PROFILE:-debug}"
REPLICAS="${PAYSTREAM_REPLICAS:-1}"

export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
export DATABASE_URL="${DATABASE_URL:-postgres://paystream:paystream@127.0.0.1:5432/paystream}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export PAYSTREAM_JWT_SECRET="${PAYSTREAM_JWT_SECRET:-dev-secret-change-me}"
export PAYSTREAM_API_ADDR="${PAYSTREAM_API_ADDR:-127.0.0.1:8080}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    [[ -x "$HOME/.cargo/bin/cargo" ]] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (rustup) first"
}

bin_dir() { echo "$REPO_ROOT/target/$PROFILE"; }

build() {
  ensure_rust
  say "building the fleet ($PROFILE; the first build compiles librdkafka and takes several minutes)"
  local flags=()
  [[ "$PROFILE" == release ]] && flags+=(--release)
  (cd "$REPO_ROOT" && cargo build "${flags[@]}" --bins \
      -p api-ingress -p risk-engine -p psp-gateway -p order-store -p account-store \
      -p validator -p psp-sim -p payctl >"$LOG_DIR/build.log" 2>&1) \
    || { tail -n 40 "$LOG_DIR/build.log" >&2; die "build failed (full log: $LOG_DIR/build.log)"; }
}

# start NAME LOGNAME ENV... -- ARGS...
start() {
  local bin="$1" name="$2"; shift 2
  local envs=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do envs+=("$1"); shift; done
  [[ "${1:-}" == "--" ]] && shift
  local pidfile="$RUN_DIR/$name.pid"
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    printf '    %-18s already running (pid %s)\n' "$name" "$(cat "$pidfile")"
    return
  fi
  env "${envs[@]}" setsid nohup "$(bin_dir)/$bin" "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  printf '    %-18s pid %-7s log %s\n' "$name" "$!" "$LOG_DIR/$name.log"
}

wait_http() {
  local url="$1" name="$2" deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if (( SECONDS > deadline )); then
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name did not answer on $url"
    fi
    sleep 0.5
  done
}

cmd_up() {
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  "$SCRIPT_DIR/infra.sh" up
  build
  say "applying migrations"
  "$(bin_dir)/payctl" migrate
  say "creating topics"
  "$(bin_dir)/payctl" topics create --bootstrap "$KAFKA_BOOTSTRAP_SERVERS"
  say "starting services"
  local port
  for psp in alpha beta; do
    local upper; upper=$(tr a-z A-Z <<<"$psp")
    local url_var="PSP_${upper}_URL"
    if [[ -n "${!url_var:-}" ]]; then
      printf '    %-18s external at %s (psp-sim not started)\n' "psp-$psp" "${!url_var}"
      continue
    fi
    port=$([[ $psp == alpha ]] && echo 8091 || echo 8092)
    export "$url_var=http://127.0.0.1:$port"
    # webhooks go to the first gateway instance's HTTP listener
    start psp-sim "psp-sim-$psp" PSP_SIM_WEBHOOK_URL="http://127.0.0.1:9112/webhooks/$psp" -- --name "$psp" --addr "127.0.0.1:$port"
  done
  local i
  for i in $(seq 1 "$REPLICAS"); do
    start risk-engine "risk-engine-$i" PAYSTREAM_ADMIN_ADDR="127.0.0.1:$((9100 + i * 10 + 1))"
    start psp-gateway "psp-gateway-$i" PAYSTREAM_ADMIN_ADDR="127.0.0.1:$((9100 + i * 10 + 2))"
    start order-store "order-store-$i" PAYSTREAM_ADMIN_ADDR="127.0.0.1:$((9100 + i * 10 + 3))"
    start account-store "account-store-$i" PAYSTREAM_ADMIN_ADDR="127.0.0.1:$((9100 + i * 10 + 4))"
    start validator "validator-$i" PAYSTREAM_ADMIN_ADDR="127.0.0.1:$((9100 + i * 10 + 5))"
  done
  start api-ingress api-ingress
  wait_http "http://$PAYSTREAM_API_ADDR/readyz" api-ingress
  for i in $(seq 1 "$REPLICAS"); do
    for n in 1 2 3 4 5; do
      wait_http "http://127.0.0.1:$((9100 + i * 10 + n))/readyz" "admin port $((9100 + i * 10 + n))"
    done
  done
  local token
  token=$("$(bin_dir)/payctl" token --sub merchant_demo --role merchant)
  cat <<TXT

paystream is up. API: http://$PAYSTREAM_API_ADDR   (logs: $LOG_DIR, stop: scripts/fleet.sh down)

  TOKEN=$token
  curl -s -X POST http://$PAYSTREAM_API_ADDR/v1/payments -H "Authorization: Bearer \$TOKEN" \\
       -H 'Idempotency-Key: demo-1' -H 'Content-Type: application/json' \\
       -d '{"amount": 1999, "currency": "EUR", "customer_id": "cus_1", "payment_method": "pm_card_visa"}'
  curl -s http://$PAYSTREAM_API_ADDR/v1/payments/<id> -H "Authorization: Bearer \$TOKEN"
TXT
}

cmd_stop() {
  [[ -d "$RUN_DIR" ]] || return 0
  say "stopping services"
  local f pid
  for f in "$RUN_DIR"/*.pid; do
    [[ -e "$f" ]] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || true
  done
  for f in "$RUN_DIR"/*.pid; do
    [[ -e "$f" ]] || continue
    pid=$(cat "$f")
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$f"
  done
}

cmd_status() {
  "$SCRIPT_DIR/infra.sh" status || true
  local f
  for f in "$RUN_DIR"/*.pid; do
    [[ -e "$f" ]] || continue
    if kill -0 "$(cat "$f")" 2>/dev/null; then state=up; else state=down; fi
    printf '%-18s %-5s pid %s\n' "$(basename "$f" .pid)" "$state" "$(cat "$f")"
  done
}

case "${1:-}" in
  up) cmd_up ;;
  stop) cmd_stop ;;
  down) cmd_stop; "$SCRIPT_DIR/infra.sh" down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|stop|status" >&2; exit 2 ;;
esac
