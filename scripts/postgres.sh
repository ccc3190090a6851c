#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 with trust auth for `postgres` and
# a database `test`, as the tests expect: installs Debian's package when it is missing, starts
# the cluster when it is stopped, creates the database when it is not there. Leaves a server
# that already answers as it is. Needs root and apt-get only when something is missing.
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }
answers() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    say "installing postgresql"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }
fi
if ! answers; then
    cluster=$(pg_lsclusters --no-header | awk 'NR == 1 { print $1 " " $2 }')
    if [ -z "$cluster" ]; then
        say "creating a cluster"
        version=$(ls /usr/lib/postgresql | sort -n | tail -1)
        pg_createcluster "$version" main --port 5432 -- --auth=trust >/dev/null
        cluster="$version main"
    fi
    say "starting cluster $cluster"
    # shellcheck disable=SC2086
    pg_ctlcluster $cluster start
    for _ in $(seq 1 50); do answers && break; sleep 0.2; done
    answers || { say "PostgreSQL does not answer on 127.0.0.1:5432"; exit 1; }
fi
if ! psql -h 127.0.0.1 -U postgres -d test -tAc 'SELECT 1' >/dev/null 2>&1; then
    say "creating database test"
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test' >/dev/null \
        || su postgres -c "createdb test"
fi
