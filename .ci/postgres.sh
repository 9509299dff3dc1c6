#!/usr/bin/env bash
# A real PostgreSQL server for the tests on 127.0.0.1:5432: installed from Debian's packages when
# missing, its cluster started, a role and database `autoqra_test` created. Idempotent; needs root
# (CI and these machines run as root). Prints the URL the tests use (AUTOQRA_TEST_PG_URL).
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
version=$(pg_lsclusters --no-header | awk 'NR==1 {print $1}')
cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $2}')
if [ -z "$version" ]; then
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    cluster=main
    pg_createcluster "$version" "$cluster" >/dev/null
fi
pg_ctlcluster "$version" "$cluster" start >/dev/null 2>&1 || true   # already running is fine
for _ in $(seq 30); do
    runuser -u postgres -- pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
done
psql_as_postgres() { runuser -u postgres -- psql -q -p 5432 -d postgres -tAc "$1"; }  # peer auth on the local socket
[ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname='autoqra_test'")" = 1 ] ||
    psql_as_postgres "CREATE ROLE autoqra_test LOGIN CREATEDB PASSWORD 'autoqra_test'"
psql_as_postgres "ALTER ROLE autoqra_test CREATEDB"  # the tests make a fresh database per session
[ "$(psql_as_postgres "SELECT 1 FROM pg_database WHERE datname='autoqra_test'")" = 1 ] ||
    psql_as_postgres "CREATE DATABASE autoqra_test OWNER autoqra_test"
echo "postgresql://autoqra_test:autoqra_test@127.0.0.1:5432/autoqra_test"
