#!/usr/bin/env bash
# paystream dev infrastructure, natively (no Docker): PostgreSQL 15, Redis 7 and a
# single-node Apache Kafka 4.4 (KRaft, broker+controller in one JVM, jars from Maven Central).
#
#   scripts/infra.sh up            install what is missing, start what is not running, wait until ready
#   scripts/infra.sh down          stop all three (graceful), idempotent
#   scripts/infra.sh status        show what is up (exit 0 only if all three are)
#   scripts/infra.sh reset [--all] down + delete all state; keeps the cached Kafka jars unless --all
#   scripts/infra.sh env           print `export ...` lines for the services (eval "$(scripts/infra.sh env)")
#   scripts/infra.sh kafka-tool CLASS [ARGS...]
#                                  run a Kafka CLI class with the broker's classpath, e.g.
#                                  kafka-tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#
# Settings (environment):
#   PAYSTREAM_DATA_DIR              default <repo>/.data
#   PAYSTREAM_PG_PORT               default 5432
#   PAYSTREAM_REDIS_PORT            default 6379
#   PAYSTREAM_KAFKA_PORT            default 9092   (PLAINTEXT listener)
#   PAYSTREAM_KAFKA_CONTROLLER_PORT default 9093   (KRaft CONTROLLER listener)
#   PAYSTREAM_KAFKA_HEAP            default "-Xms512m -Xmx1g"
#   PAYSTREAM_KAFKA_START_TIMEOUT   default 120 (seconds)
#
# Works from any cwd, as root, non-interactively (CI). Everything is idempotent.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
INFRA_DIR="$REPO_ROOT/infra"

DATA_DIR="$(realpath -m "${PAYSTREAM_DATA_DIR:-$REPO_ROOT/.data}")"

PG_PORT="${PAYSTREAM_PG_PORT:-5432}"
REDIS_PORT="${PAYSTREAM_REDIS_PORT:-6379}"
KAFKA_PORT="${PAYSTREAM_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${PAYSTREAM_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${PAYSTREAM_KAFKA_HEAP:--Xms512m -Xmx1g}"
KAFKA_START_TIMEOUT="${PAYSTREAM_KAFKA_START_TIMEOUT:-120}"

PG_USER=paystream
PG_PASSWORD=paystream
PG_DB=paystream
PG_SOCKET_DIR=/var/run/postgresql

LOG_DIR="$DATA_DIR/logs"
CACHE_DIR="$DATA_DIR/cache"
KAFKA_LIBS="$CACHE_DIR/kafka-libs"
KAFKA_DIR="$DATA_DIR/kafka"
KAFKA_LOG_DIRS="$KAFKA_DIR/data"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
REDIS_DIR="$DATA_DIR/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
# PGDATA is normally <data>/postgres; see pg_resolve_dirs for the fallback
PG_LINK="$DATA_DIR/postgres"
PGDATA=""
PG_LOG=""

JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# ---------------------------------------------------------------------------- helpers

say()  { printf '==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# print the last lines of a log file to stderr (for failure messages)
tail_log() {
  local file="$1" n="${2:-40}"
  if [[ -f "$file" ]]; then
    printf -- '---- last %s lines of %s ----\n' "$n" "$file" >&2
    tail -n "$n" "$file" >&2 || true
    printf -- '----\n' >&2
  fi
}

# true if something accepts TCP connections on 127.0.0.1:$1
port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# describe who listens on a port (best effort, for error messages)
port_owner() {
  if command -v ss >/dev/null 2>&1; then
    ss -H -ltnp "sport = :$1" 2>/dev/null | head -3 || true
  fi
}

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

read_pid() { [[ -f "$1" ]] && tr -dc '0-9' <"$1" || true; }

now() { date +%s; }

need_root() {
  [[ "$(id -u)" -eq 0 ]] || die "run as root (it installs packages and runs postgres as the postgres user)"
}

# -------------------------------------------------------------------- package installs

APT_UPDATED=0
apt_install() {
  need_root
  mkdir -p "$LOG_DIR"
  local apt_log="$LOG_DIR/apt.log"
  export DEBIAN_FRONTEND=noninteractive
  # Debian's packages start their own postgres cluster / redis on the default ports right
  # after install. Forbid that for the duration of the install (unless a policy already exists).
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  if [[ "$APT_UPDATED" -eq 0 ]]; then
    info "apt-get update (log: $apt_log)"
    apt-get update >>"$apt_log" 2>&1 || rc=$?
    APT_UPDATED=1
  fi
  if [[ "$rc" -eq 0 ]]; then
    info "apt-get install $* (log: $apt_log)"
    apt-get install -y --no-install-recommends "$@" >>"$apt_log" 2>&1 || rc=$?
  fi
  if [[ "$made_policy" -eq 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi
  if [[ "$rc" -ne 0 ]]; then
    tail_log "$apt_log" 30
    die "apt-get failed installing: $*"
  fi
}

pg_bindir() {
  local d
  # prefer 15 (the version the project targets), else the newest installed
  if [[ -x /usr/lib/postgresql/15/bin/pg_ctl && -x /usr/lib/postgresql/15/bin/initdb ]]; then
    echo /usr/lib/postgresql/15/bin; return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$d/pg_ctl" && -x "$d/initdb" ]]; then echo "$d"; return 0; fi
  done
  return 1
}

ensure_packages() {
  local pkgs=()
  pg_bindir >/dev/null || pkgs+=(postgresql)
  command -v psql >/dev/null 2>&1 || pkgs+=(postgresql-client)
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
  command -v "$JAVA" >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  if [[ ${#pkgs[@]} -gt 0 ]]; then
    say "installing missing packages: ${pkgs[*]}"
    apt_install "${pkgs[@]}"
  fi
  pg_bindir >/dev/null || die "postgresql installed but no initdb/pg_ctl in /usr/lib/postgresql/*/bin"
  id postgres >/dev/null 2>&1 || die "OS user 'postgres' does not exist (it comes with Debian's postgresql-common)"
}

# Kafka jars: copied from Maven Central (via ~/.m2) into $KAFKA_LIBS once per pom version.
ensure_kafka_libs() {
  local pom="$INFRA_DIR/kafka/pom.xml"
  local want have=""
  want="$(sha256sum "$pom" | cut -d' ' -f1)"
  [[ -f "$KAFKA_LIBS/.complete" ]] && have="$(cat "$KAFKA_LIBS/.complete")"
  if [[ "$want" == "$have" ]]; then
    return 0
  fi
  mkdir -p "$CACHE_DIR" "$LOG_DIR"
  local mvn_log="$LOG_DIR/mvn.log" tmp="$CACHE_DIR/kafka-libs.tmp"
  say "fetching Kafka jars with Maven (first time only; log: $mvn_log)"
  rm -rf "$tmp"
  local t0; t0=$(now)
  if ! (cd "$INFRA_DIR/kafka" && mvn -B -q -f "$pom" dependency:copy-dependencies \
          -DoutputDirectory="$tmp") >"$mvn_log" 2>&1; then
    tail_log "$mvn_log" 30
    die "mvn dependency:copy-dependencies failed"
  fi
  ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn ran but no kafka_2.13 jar in $tmp"
  # a broker running from the old jars must not lose them under its feet
  if [[ -d "$KAFKA_LIBS" ]] && kafka_ours_running; then
    say "Kafka jars changed: stopping the running broker first"
    kafka_down >/dev/null
  fi
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
  echo "$want" >"$KAFKA_LIBS/.complete"
  info "$(ls "$KAFKA_LIBS"/*.jar | wc -l) jars in $KAFKA_LIBS ($(( $(now) - t0 ))s)"
}

# run a Kafka CLI class with the broker's classpath and a quiet logging config
kafka_tool() {
  "$JAVA" -Xmx512m -cp "$KAFKA_LIBS/*" \
    -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2-tools.xml" "$@"
}

# ------------------------------------------------------------------------ PostgreSQL

as_pg() { (cd / && runuser -u postgres -- "$@"); }

# Decide where PGDATA lives. Normally <data>/postgres. If the postgres OS user cannot reach
# the data dir (e.g. the repo is under /root, mode 700), the cluster lives in
# /var/lib/paystream/pg-<hash> instead and <data>/postgres is a symlink to it.
pg_resolve_dirs() {
  if [[ -L "$PG_LINK" ]]; then
    PGDATA="$(readlink -f "$PG_LINK")"
    PG_LOG="$(dirname "$PGDATA")/postgres.log"
    return 0
  fi
  PGDATA="$PG_LINK"
  PG_LOG="$LOG_DIR/postgres.log"
}

pg_choose_dirs_for_init() {
  pg_resolve_dirs
  [[ -L "$PG_LINK" || -d "$PG_LINK" ]] && return 0
  chmod 755 "$DATA_DIR" 2>/dev/null || true
  mkdir -p "$LOG_DIR"; chmod 755 "$LOG_DIR" 2>/dev/null || true
  if ! as_pg test -x "$DATA_DIR" 2>/dev/null || ! as_pg test -x "$LOG_DIR" 2>/dev/null; then
    local alt
    alt="/var/lib/paystream/pg-$(printf '%s' "$DATA_DIR" | sha256sum | cut -c1-12)"
    warn "user postgres cannot reach $DATA_DIR; keeping the cluster in $alt (symlinked from $PG_LINK)"
    mkdir -p "$alt"; chown postgres:postgres "$alt"; chmod 700 "$alt"
    ln -sfn "$alt/data" "$PG_LINK"
    PGDATA="$alt/data"
    PG_LOG="$alt/postgres.log"
  fi
}

pg_running() {
  local bin; bin="$(pg_bindir)" || return 1
  [[ -n "$PGDATA" && -f "$PGDATA/PG_VERSION" ]] || return 1
  as_pg "$bin/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1
}

# the port our running postmaster listens on (4th line of postmaster.pid)
pg_running_port() { sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null || true; }

# something else on our port: stop a Debian cluster (pg_ctlcluster) or give up clearly
pg_free_port() {
  port_open "$PG_PORT" || return 0
  if command -v pg_lsclusters >/dev/null 2>&1; then
    local ver name port status
    while read -r ver name port status _; do
      if [[ "$port" == "$PG_PORT" && "$status" == online* ]]; then
        say "stopping Debian's own PostgreSQL cluster $ver/$name (it holds port $PG_PORT)"
        pg_ctlcluster "$ver" "$name" stop -m fast >/dev/null 2>&1 \
          || pg_ctlcluster "$ver" "$name" stop --force >/dev/null 2>&1 || true
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
  for _ in $(seq 1 20); do port_open "$PG_PORT" || return 0; sleep 0.5; done
  die "port $PG_PORT is taken by something that is not paystream's cluster:
$(port_owner "$PG_PORT")
Stop it, or pick another port with PAYSTREAM_PG_PORT=...."
}

pg_write_conf() {
  # settings live in an included file so that they can be rewritten on every `up`
  local conf="$PGDATA/paystream.conf" tmp
  tmp="$(mktemp)"
  cat >"$tmp" <<EOF
# written by scripts/infra.sh on every 'up' -- edit the script, not this file
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
max_connections = 300
shared_buffers = 256MB
# durability stays on (fsync, synchronous_commit): the exactly-once tests rely on it
fsync = on
synchronous_commit = on
# tests: fewer checkpoints, no WAL archiving
wal_level = replica
max_wal_size = 2GB
checkpoint_timeout = 15min
timezone = 'UTC'
log_timezone = 'UTC'
log_min_messages = warning
log_min_error_statement = error
log_line_prefix = '%m [%p] %q%u@%d '
EOF
  if ! cmp -s "$tmp" "$conf" 2>/dev/null; then
    install -o postgres -g postgres -m 600 "$tmp" "$conf"
    rm -f "$tmp"
    return 0   # changed
  fi
  rm -f "$tmp"
  return 1     # unchanged
}

pg_up() {
  local bin; bin="$(pg_bindir)"
  pg_choose_dirs_for_init
  mkdir -p "$PG_SOCKET_DIR"; chown postgres:postgres "$PG_SOCKET_DIR"; chmod 2775 "$PG_SOCKET_DIR"

  if [[ ! -f "$PGDATA/PG_VERSION" ]]; then
    say "initialising PostgreSQL cluster in $PGDATA ($("$bin/postgres" --version | awk '{print $3}'))"
    mkdir -p "$PGDATA"; chown postgres:postgres "$PGDATA"; chmod 700 "$PGDATA"
    local init_log="$LOG_DIR/initdb.log"
    mkdir -p "$LOG_DIR"
    if ! as_pg "$bin/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C \
          --auth-local=peer --auth-host=scram-sha-256 >"$init_log" 2>&1; then
      tail_log "$init_log" 30
      die "initdb failed"
    fi
    echo "include_if_exists = 'paystream.conf'" >>"$PGDATA/postgresql.conf"
  fi

  local changed=0
  pg_write_conf && changed=1
  touch "$PG_LOG"; chown postgres:postgres "$PG_LOG"

  if pg_running; then
    if [[ "$changed" -eq 1 || "$(pg_running_port)" != "$PG_PORT" ]]; then
      say "PostgreSQL settings changed: restarting"
      as_pg "$bin/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 >/dev/null
    else
      say "PostgreSQL already running on 127.0.0.1:$PG_PORT"
    fi
  fi
  if ! pg_running; then
    pg_free_port
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    if ! as_pg "$bin/pg_ctl" start -D "$PGDATA" -l "$PG_LOG" -w -t 60 >/dev/null 2>&1 9>&-; then
      tail_log "$PG_LOG" 30
      die "PostgreSQL did not start (log: $PG_LOG)"
    fi
  fi

  for _ in $(seq 1 60); do
    "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
    sleep 0.5
  done
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" || { tail_log "$PG_LOG"; die "PostgreSQL not ready on 127.0.0.1:$PG_PORT"; }

  # role + database (idempotent). SUPERUSER for dev simplicity: the migrations create
  # schemas, the read-only `analyst` role and grants; never do this in production.
  local psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U postgres)
  as_pg "${psql[@]}" -d postgres >/dev/null <<EOF
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER;
  END IF;
END
\$\$;
ALTER ROLE $PG_USER WITH LOGIN SUPERUSER CREATEROLE CREATEDB PASSWORD '$PG_PASSWORD';
EOF
  if [[ "$(as_pg "${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]]; then
    info "creating database $PG_DB"
    as_pg "${psql[@]}" -d postgres -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >/dev/null
  fi
}

pg_down() {
  local bin; bin="$(pg_bindir)" || { info "postgres: not installed"; return 0; }
  pg_resolve_dirs
  if pg_running; then
    say "stopping PostgreSQL"
    as_pg "$bin/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 >/dev/null \
      || warn "pg_ctl stop failed (log: $PG_LOG)"
  else
    info "postgres: not running"
  fi
}

# ----------------------------------------------------------------------------- Redis

redis_ours_running() {
  local pid; pid="$(read_pid "$REDIS_PID")"
  pid_alive "$pid" && grep -q redis "/proc/$pid/comm" 2>/dev/null
}

redis_write_conf() {
  local conf="$REDIS_DIR/redis.conf" tmp
  tmp="$(mktemp)"
  cat >"$tmp" <<EOF
# written by scripts/infra.sh on every 'up' -- edit the script, not this file
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
supervised no
pidfile $REDIS_PID
dir $REDIS_DIR
logfile $LOG_DIR/redis.log
loglevel notice
databases 16
save 300 100
save 60 10000
appendonly no
maxmemory 512mb
maxmemory-policy noeviction
EOF
  if ! cmp -s "$tmp" "$conf" 2>/dev/null; then
    mv "$tmp" "$conf"; chmod 644 "$conf"
    return 0
  fi
  rm -f "$tmp"
  return 1
}

redis_free_port() {
  port_open "$REDIS_PORT" || return 0
  # Debian's redis-server package starts its own daemon on 6379
  local deb_pid; deb_pid="$(read_pid /run/redis/redis-server.pid)"
  if pid_alive "$deb_pid"; then
    say "stopping Debian's own redis-server service (it holds port $REDIS_PORT)"
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
      systemctl stop redis-server >/dev/null 2>&1 || true
    elif [[ -x /etc/init.d/redis-server ]]; then
      /etc/init.d/redis-server stop >/dev/null 2>&1 || true
    fi
    pid_alive "$deb_pid" && kill "$deb_pid" 2>/dev/null || true
  fi
  for _ in $(seq 1 20); do port_open "$REDIS_PORT" || return 0; sleep 0.5; done
  die "port $REDIS_PORT is taken by something that is not paystream's redis:
$(port_owner "$REDIS_PORT")
Stop it, or pick another port with PAYSTREAM_REDIS_PORT=...."
}

redis_conf_port() { awk '$1=="port"{print $2}' "$REDIS_DIR/redis.conf" 2>/dev/null || true; }

redis_up() {
  mkdir -p "$REDIS_DIR" "$LOG_DIR"
  local changed=0 old_port
  old_port="$(redis_conf_port)"
  redis_write_conf && changed=1
  if redis_ours_running; then
    if [[ "$changed" -eq 1 ]]; then
      say "Redis settings changed: restarting"
      redis_down "$old_port" >/dev/null
    else
      say "Redis already running on 127.0.0.1:$REDIS_PORT"
    fi
  fi
  if ! redis_ours_running; then
    rm -f "$REDIS_PID"
    redis_free_port
    say "starting Redis on 127.0.0.1:$REDIS_PORT"
    (cd "$REDIS_DIR" && redis-server "$REDIS_DIR/redis.conf") >/dev/null 2>&1 9>&- \
      || { tail_log "$LOG_DIR/redis.log"; die "redis-server failed to start"; }
  fi
  for _ in $(seq 1 40); do
    [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]] && return 0
    sleep 0.25
  done
  tail_log "$LOG_DIR/redis.log"
  die "Redis does not answer PING on 127.0.0.1:$REDIS_PORT"
}

redis_down() {
  if redis_ours_running; then
    say "stopping Redis"
    local pid; pid="$(read_pid "$REDIS_PID")"
    local port="${1:-}"
    [[ -n "$port" ]] || port="$(redis_conf_port)"
    redis-cli -h 127.0.0.1 -p "${port:-$REDIS_PORT}" shutdown >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do pid_alive "$pid" || { rm -f "$REDIS_PID"; return 0; }; sleep 0.25; done
    warn "redis (pid $pid) did not stop on SHUTDOWN; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$REDIS_PID"
  else
    info "redis: not running"
  fi
}

# ----------------------------------------------------------------------------- Kafka

kafka_ours_running() {
  local pid; pid="$(read_pid "$KAFKA_PID")"
  # the pid must still be *this* broker (not a reused pid, nor another kafka.Kafka JVM)
  pid_alive "$pid" && tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF "$KAFKA_DIR/server.properties"
}

kafka_write_conf() {
  local conf="$KAFKA_DIR/server.properties" tmp
  tmp="$(mktemp)"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
      -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
      -e "s|@LOG_DIRS@|$KAFKA_LOG_DIRS|g" \
      "$INFRA_DIR/kafka/server.properties.in" >"$tmp"
  if ! cmp -s "$tmp" "$conf" 2>/dev/null; then
    mv "$tmp" "$conf"; chmod 644 "$conf"
    return 0
  fi
  rm -f "$tmp"
  return 1
}

kafka_format() {
  [[ -f "$KAFKA_LOG_DIRS/meta.properties" ]] && return 0
  local id_file="$KAFKA_DIR/cluster-id" fmt_log="$LOG_DIR/kafka-format.log"
  if [[ ! -s "$id_file" ]]; then
    kafka_tool kafka.tools.StorageTool random-uuid 2>>"$fmt_log" | tail -n1 | tr -d '[:space:]' >"$id_file" \
      || { tail_log "$fmt_log"; die "StorageTool random-uuid failed"; }
    [[ -s "$id_file" ]] || { tail_log "$fmt_log"; die "StorageTool random-uuid printed nothing"; }
  fi
  say "formatting KRaft storage (cluster id $(cat "$id_file"))"
  if ! kafka_tool kafka.tools.StorageTool format --standalone -t "$(cat "$id_file")" \
        -c "$KAFKA_DIR/server.properties" >>"$fmt_log" 2>&1; then
    tail_log "$fmt_log"
    die "kafka StorageTool format failed (log: $fmt_log)"
  fi
}

kafka_free_ports() {
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port $p is taken by something that is not paystream's Kafka:
$(port_owner "$p")
Stop it, or pick other ports with PAYSTREAM_KAFKA_PORT / PAYSTREAM_KAFKA_CONTROLLER_PORT."
    fi
  done
}

kafka_up() {
  mkdir -p "$KAFKA_DIR" "$KAFKA_LOG_DIRS" "$LOG_DIR"
  local changed=0
  kafka_write_conf && changed=1
  if kafka_ours_running; then
    if [[ "$changed" -eq 1 ]]; then
      say "Kafka settings changed: restarting"
      kafka_down >/dev/null
    else
      say "Kafka already running on 127.0.0.1:$KAFKA_PORT"
    fi
  fi
  local started_now=0 log_offset=0
  local klog="$LOG_DIR/kafka.log" kout="$LOG_DIR/kafka.out"
  if ! kafka_ours_running; then
    rm -f "$KAFKA_PID"
    kafka_free_ports
    kafka_format
    say "starting Kafka 4.4 (KRaft broker+controller) on 127.0.0.1:$KAFKA_PORT"
    [[ -f "$klog" ]] && log_offset=$(stat -c %s "$klog")
    # many topics x partitions => many open segment files
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
    # shellcheck disable=SC2086  # KAFKA_HEAP is a list of JVM flags
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PID" \
      nohup "$JAVA" $KAFKA_HEAP -server \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dkafka.logs.dir="$LOG_DIR" \
        -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2.xml" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
      >>"$kout" 2>&1 </dev/null 9>&- &
    disown || true
    started_now=1
  fi

  # wait: TCP accept on the PLAINTEXT port, then the broker's own "started" line
  local deadline=$(( $(now) + KAFKA_START_TIMEOUT )) pid
  while :; do
    pid="$(read_pid "$KAFKA_PID")"
    if [[ -n "$pid" ]] && ! pid_alive "$pid"; then
      tail_log "$klog"; tail_log "$kout" 20
      die "Kafka exited during startup (logs: $klog, $kout)"
    fi
    if port_open "$KAFKA_PORT"; then
      if [[ "$started_now" -eq 0 ]]; then break; fi
      if [[ -f "$klog" ]] && tail -c +"$((log_offset + 1))" "$klog" | grep -q 'Kafka Server started'; then
        break
      fi
    fi
    if (( $(now) > deadline )); then
      tail_log "$klog"; tail_log "$kout" 20
      die "Kafka not ready on 127.0.0.1:$KAFKA_PORT after ${KAFKA_START_TIMEOUT}s (logs: $klog, $kout)"
    fi
    sleep 0.5
  done
}

kafka_down() {
  if kafka_ours_running; then
    say "stopping Kafka"
    local pid; pid="$(read_pid "$KAFKA_PID")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 120); do pid_alive "$pid" || { rm -f "$KAFKA_PID"; return 0; }; sleep 0.5; done
    warn "Kafka (pid $pid) still running 60s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$KAFKA_PID"
  else
    info "kafka: not running"
    rm -f "$KAFKA_PID"
  fi
}

# -------------------------------------------------------------------------- commands

# Serialise up/down/reset on one data dir. NB: fd 9 must not leak into the daemons we start
# (every daemon launch below closes it with 9>&-), or they would hold the lock forever.
lock() {
  mkdir -p "$DATA_DIR"
  exec 9>"$DATA_DIR/.infra.lock"
  flock -w 300 9 || die "another scripts/infra.sh up/down/reset holds $DATA_DIR/.infra.lock (waited 300s)"
}

cmd_up() {
  need_root
  lock
  local t0; t0=$(now)
  ensure_packages
  ensure_kafka_libs
  pg_up
  redis_up
  kafka_up
  say "infra up in $(( $(now) - t0 ))s"
  summary
}

summary() {
  pg_resolve_dirs
  cat <<EOF
    postgres  postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB   data $PGDATA  log $PG_LOG
    redis     redis://127.0.0.1:$REDIS_PORT                        data $REDIS_DIR  log $LOG_DIR/redis.log
    kafka     127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT)    data $KAFKA_LOG_DIRS  log $LOG_DIR/kafka.log
    kafka jars $KAFKA_LIBS   (CLI: scripts/infra.sh kafka-tool <class> ...)
    env for the services: eval "\$(scripts/infra.sh env)"
EOF
}

cmd_down() {
  lock
  kafka_down
  redis_down
  pg_down
  say "infra down"
}

cmd_status() {
  local all=0 bin pid
  pg_resolve_dirs
  if bin="$(pg_bindir)" && pg_running; then
    if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
      printf '%-9s up    127.0.0.1:%s  (data %s)\n' postgres "$PG_PORT" "$PGDATA"
    else
      printf '%-9s starting/not ready on 127.0.0.1:%s\n' postgres "$PG_PORT"; all=1
    fi
  else
    printf '%-9s down\n' postgres; all=1
  fi
  if redis_ours_running && [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]; then
    printf '%-9s up    127.0.0.1:%s  (pid %s)\n' redis "$REDIS_PORT" "$(read_pid "$REDIS_PID")"
  else
    printf '%-9s down\n' redis; all=1
  fi
  if kafka_ours_running; then
    pid="$(read_pid "$KAFKA_PID")"
    if port_open "$KAFKA_PORT"; then
      printf '%-9s up    127.0.0.1:%s  (pid %s)\n' kafka "$KAFKA_PORT" "$pid"
    else
      printf '%-9s starting/not ready (pid %s)\n' kafka "$pid"; all=1
    fi
  else
    printf '%-9s down\n' kafka; all=1
  fi
  return "$all"
}

cmd_reset() {
  local all=0
  [[ "${1:-}" == "--all" ]] && all=1
  cmd_down
  pg_resolve_dirs
  say "removing $DATA_DIR$([[ $all -eq 0 ]] && echo " (keeping cache/ with the Kafka jars; --all removes it too)")"
  if [[ -L "$PG_LINK" ]]; then
    rm -rf "$(dirname "$PGDATA")"
  fi
  if [[ "$all" -eq 1 ]]; then
    rm -rf "$DATA_DIR"
  else
    find "$DATA_DIR" -mindepth 1 -maxdepth 1 ! -name cache ! -name .infra.lock -exec rm -rf {} +
  fi
}

cmd_env() {
  cat <<EOF
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
export REDIS_URL=redis://127.0.0.1:$REDIS_PORT
EOF
}

usage() {
  sed -n '2,/^set -euo pipefail/{/^set -euo/d;p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    up)         cmd_up ;;
    down)       cmd_down ;;
    status)     cmd_status ;;
    reset)      cmd_reset "$@" ;;
    env)        cmd_env ;;
    kafka-tool)
      [[ $# -ge 1 ]] || die "usage: scripts/infra.sh kafka-tool CLASS [ARGS...]"
      [[ -f "$KAFKA_LIBS/.complete" ]] || ensure_kafka_libs >&2
      kafka_tool "$@" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
