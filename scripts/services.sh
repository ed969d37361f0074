#!/usr/bin/env bash
# The shared backend's servers for tests and trials on this machine:
#   scripts/services.sh start   install (if missing) and start PostgreSQL and moto's S3 server
#   scripts/services.sh stop    stop both
#   scripts/services.sh env     print the environment that points tests and stores at them
# Start writes .services.env (sourced by .ci/run); tests read PROFILES_TEST_POSTGRES_URL and
# PROFILES_TEST_S3_ENDPOINT from it and otherwise start private servers of their own.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_USER=profiles
PG_PASSWORD=profiles
PG_DB=profiles
S3_PORT=${PROFILES_S3_PORT:-5599}
STATE=.services
ENV_FILE=.services.env

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pg_cluster() {  # "<version> <name> <port> <status>" of the first cluster, if any
  pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1, $2, $3, $4}'
}

http_ok() {  # whether a GET of $1 answers 2xx
  .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1" 2>/dev/null
}

start_postgres() {
  if ! command -v pg_lsclusters >/dev/null 2>&1 || [ -z "$(ls /usr/lib/postgresql 2>/dev/null)" ]; then
    echo "services: installing postgresql with apt-get"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
  fi
  if [ -z "$(pg_cluster)" ]; then
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    as_root pg_createcluster "$version" main >/dev/null
  fi
  read -r version name port status <<<"$(pg_cluster)"
  if [ "$status" != online ]; then
    as_root pg_ctlcluster "$version" "$name" start
    echo "$version $name" >"$STATE/postgres"  # we started it: stop stops it
  fi
  for _ in $(seq 1 50); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.2
  done
  pg_isready -q -h 127.0.0.1 -p "$port" || { echo "services: PostgreSQL did not start" >&2; exit 1; }
  as_root runuser -u postgres -- psql -q -p "$port" -v ON_ERROR_STOP=1 <<SQL >/dev/null
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN SUPERUSER PASSWORD '$PG_PASSWORD';
  END IF;
END \$\$;
SQL
  if ! as_root runuser -u postgres -- psql -p "$port" -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
    as_root runuser -u postgres -- createdb -p "$port" -O "$PG_USER" "$PG_DB"
  fi
  echo "export PROFILES_TEST_POSTGRES_URL=postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$port/$PG_DB" >>"$ENV_FILE"
  echo "services: PostgreSQL $version ($name) on 127.0.0.1:$port"
}

start_s3() {
  [ -x .venv/bin/moto_server ] || { echo "services: run scripts/setup.sh first (moto)" >&2; exit 1; }
  if http_ok "http://127.0.0.1:$S3_PORT/moto-api/"; then
    # Another checkout's (or an earlier start's): use it, and leave stopping it to its owner,
    # as with an already running PostgreSQL. A second server could not bind the port, and a
    # pid file naming that dead one would make 'stop' leave this one running.
    echo "services: moto S3 already runs on 127.0.0.1:$S3_PORT (started elsewhere: stop leaves it)"
  else
    .venv/bin/moto_server -H 127.0.0.1 -p "$S3_PORT" >"$STATE/moto.log" 2>&1 &
    echo $! >"$STATE/moto.pid"
  fi
  for _ in $(seq 1 100); do
    http_ok "http://127.0.0.1:$S3_PORT/moto-api/" && break
    sleep 0.1
  done
  http_ok "http://127.0.0.1:$S3_PORT/moto-api/" || { echo "services: moto did not start" >&2; cat "$STATE/moto.log" >&2; exit 1; }
  # a bucket for trials (the tests make their own)
  AWS_ACCESS_KEY_ID=profiles-test-key AWS_SECRET_ACCESS_KEY=profiles-test-secret AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" .venv/bin/python -c \
    'import boto3; boto3.client("s3").create_bucket(Bucket="profiles")'
  {
    echo "export PROFILES_TEST_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
    echo "export AWS_ACCESS_KEY_ID=profiles-test-key AWS_SECRET_ACCESS_KEY=profiles-test-secret AWS_REGION=us-east-1"
  } >>"$ENV_FILE"
  [ ! -f "$STATE/moto.pid" ] || echo "services: moto S3 on 127.0.0.1:$S3_PORT"
}

stop() {
  if [ -f "$STATE/moto.pid" ]; then
    kill "$(cat "$STATE/moto.pid")" 2>/dev/null || true
    rm -f "$STATE/moto.pid"
  fi
  if [ -f "$STATE/postgres" ]; then
    read -r version name <"$STATE/postgres"
    as_root pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
    rm -f "$STATE/postgres"
  fi
  rm -f "$ENV_FILE"
  echo "services: stopped"
}

case "${1-}" in
  start)
    mkdir -p "$STATE"
    rm -f "$ENV_FILE"
    start_postgres
    start_s3
    ;;
  stop) stop ;;
  env) cat "$ENV_FILE" ;;
  -h | --help) usage ;;
  *) usage >&2; exit 2 ;;
esac
