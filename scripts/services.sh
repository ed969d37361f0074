#!/usr/bin/env bash
# The shared backend's servers for tests and trials on this machine:
#   scripts/services.sh start   install (if missing) and start PostgreSQL and moto's S3 server
#   scripts/services.sh stop    stop both, and drop the role and database start created
#   scripts/services.sh env     print the environment that points tests and stores at them
# Start writes .services.env (0600; sourced by .ci/run); tests read PROFILES_TEST_POSTGRES_URL
# and PROFILES_TEST_S3_ENDPOINT from it and otherwise start private servers of their own.
# PostgreSQL gets a role of its own per start (profiles_<random>: LOGIN, CREATEDB, member of
# pg_signal_backend; no SUPERUSER, CREATEROLE or REPLICATION), with a random password and a
# database of the same name; stop drops both (and any database the role still owns).
# Environment: PROFILES_SERVICES_DIR (where .services/ and .services.env go; default the
# checkout), PROFILES_SERVICES_POSTGRES=[HOST]:PORT (a PostgreSQL that runs already, reached
# as its superuser 'postgres': only the role and database are made, the cluster is not
# touched), PROFILES_SERVICES_S3=off (no moto), PROFILES_S3_PORT (default 5599).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077  # .services.env holds a password

S3_PORT=${PROFILES_S3_PORT:-5599}
OUT=${PROFILES_SERVICES_DIR:-.}
STATE=$OUT/.services
ENV_FILE=$OUT/.services.env
EXTERNAL_PG=${PROFILES_SERVICES_POSTGRES:-}

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

random_hex() {  # $1 random bytes as hex
  od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

pg_admin() {  # psql as the superuser of the server at $1 (host, empty: the socket) port $2
  local host=$1 port=$2
  shift 2
  as_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 ${host:+-h "$host"} -p "$port" -d postgres "$@"
}

provision_postgres() {  # a least-privilege role and its database on host $1 port $2
  local host=$1 port=$2 role password
  [ ! -f "$STATE/postgres-role" ] || deprovision_postgres  # a start without a stop
  role="profiles_$(random_hex 6)"
  password=$(random_hex 24)
  echo "$role ${host:--} $port" >"$STATE/postgres-role"  # first: stop cleans up a half start
  # SQL on stdin, never on a command line (ps would show the password).
  pg_admin "$host" "$port" >/dev/null <<SQL
CREATE ROLE "$role" LOGIN CREATEDB NOSUPERUSER NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD '$password';
GRANT pg_signal_backend TO "$role";
CREATE DATABASE "$role" OWNER "$role";
REVOKE ALL ON DATABASE "$role" FROM PUBLIC;
SQL
  echo "export PROFILES_TEST_POSTGRES_URL=postgresql://$role:$password@${host:-127.0.0.1}:$port/$role" >>"$ENV_FILE"
  if [ "$(pg_admin "$host" "$port" -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'profiles' AND rolsuper")" = 1 ]; then
    echo "services: a SUPERUSER role 'profiles' (made by an earlier services.sh) is still there;" \
      "remove it: DROP DATABASE profiles WITH (FORCE); DROP ROLE profiles;" >&2
  fi
}

deprovision_postgres() {  # drop what provision_postgres recorded; keep the record on failure
  local role host port databases
  read -r role host port <"$STATE/postgres-role"
  [ "$host" != - ] || host=
  if ! databases=$(pg_admin "$host" "$port" -tAc \
    "SELECT datname FROM pg_database WHERE datdba = (SELECT oid FROM pg_roles WHERE rolname = '$role')"); then
    echo "services: could not reach PostgreSQL on port $port to drop role $role; run stop again" >&2
    return 1
  fi
  {
    while IFS= read -r db; do
      [ -z "$db" ] || echo "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE);"
    done <<<"$databases"
    echo "DROP ROLE IF EXISTS \"$role\";"
  } | pg_admin "$host" "$port" >/dev/null
  rm -f "$STATE/postgres-role"
  echo "services: dropped role $role and its databases"
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
  if [ -n "$EXTERNAL_PG" ]; then
    provision_postgres "${EXTERNAL_PG%:*}" "${EXTERNAL_PG##*:}"
    echo "services: PostgreSQL on ${EXTERNAL_PG} (running already: stop leaves it running)"
    return
  fi
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
  provision_postgres "" "$port"
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
  local failed=0
  if [ -f "$STATE/postgres-role" ]; then
    deprovision_postgres || failed=1
  fi
  if [ -f "$STATE/moto.pid" ]; then
    kill "$(cat "$STATE/moto.pid")" 2>/dev/null || true
    rm -f "$STATE/moto.pid"
  fi
  if [ -f "$STATE/postgres" ]; then
    read -r version name <"$STATE/postgres"
    # Another run's role still there (a CI run, a second checkout) means the cluster is
    # still in use, even though this run started it: leave it running for that run.
    local others port
    port=$(pg_lsclusters --no-header 2>/dev/null | awk -v v="$version" -v n="$name" '$1 == v && $2 == n {print $3}')
    others=$(pg_admin "" "${port:-5432}" -tAc \
      "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'profiles\\_%'" 2>/dev/null || echo 0)
    if [ "${others:-0}" -gt 0 ]; then
      echo "services: PostgreSQL $version/$name left running: another run's role is still there"
    else
      as_root pg_ctlcluster "$version" "$name" stop 2>/dev/null || true
    fi
    rm -f "$STATE/postgres"
  fi
  rm -f "$ENV_FILE"
  echo "services: stopped"
  return "$failed"
}

case "${1-}" in
  start)
    mkdir -p "$STATE"
    rm -f "$ENV_FILE"
    start_postgres
    [ "${PROFILES_SERVICES_S3:-on}" = off ] || start_s3
    ;;
  stop) stop ;;
  env) cat "$ENV_FILE" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
