#!/usr/bin/env bash
# GET /api/v1/tasks/{id} throughput, one instance vs several behind nginx (the issue-9 figures):
#
#   bash scripts/scale-get.sh            # needs wrk, nginx (nginx-light), psql, a release build
#
# Runs, each with wrk ($THREADS threads, $CONNS connections, $DURATION s, JWT verified on every
# request), in this order:
#   1. one instance on a fresh SQLite file, direct
#   2. one instance on a fresh PostgreSQL database, direct
#   3. one instance on PostgreSQL behind nginx        (scripts/cluster.sh start 1)
#   4. $NODES instances on PostgreSQL behind nginx    (scripts/cluster.sh start $NODES)
# Each case registers a user, creates an org, a project and one task through the API first.
# Everything (wrk, nginx, the instances, PostgreSQL) shares this machine's cores, so on a small
# machine more instances mostly measure the proxy hop and the sharing; see BENCHMARKS.md.
# Loopback only; databases are dropped and processes stopped at exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
NODES=${NODES:-2}
PG=${PM_SCALE_PG:-postgres://postgres@127.0.0.1:5432}
BIN=${PM_BIN:-target/release/pm-server}
export PM_BIN=$BIN NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 2; }
[[ -x $BIN ]] || cargo build --release -p pm-server --quiet

export PM_LOG=warn PM_RATE_LIMIT_PER_MINUTE=0 PM_RATE_LIMIT_IP_PER_MINUTE=0 \
    PM_JWT_SECRET="scale-test-secret-scale-test-secret-0123"
tmp=$(mktemp -d)
dbs=()
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    PM_CLUSTER_DIR=$tmp/cluster bash scripts/cluster.sh stop >/dev/null 2>&1 || true
    for db in "${dbs[@]}"; do
        psql "$PG/postgres" -qAt -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
wait_up() { for _ in $(seq 1 150); do curl -sf "$1/readyz" >/dev/null && return 0; sleep 0.1; done; return 1; }

# Seeds through $1 and runs wrk against GET /tasks/{id} there; prints wrk's summary lines.
measure() {
    local base=$1 label=$2 email token auth org project task lua
    email="scale-$RANDOM-$RANDOM@example.com"
    curl -sf -X POST "$base/api/v1/auth/register" -H 'content-type: application/json' \
        -d "{\"email\":\"$email\",\"display_name\":\"Scale\",\"password\":\"scale-test-password\"}" >/dev/null
    token=$(curl -sf -X POST "$base/api/v1/auth/login" -H 'content-type: application/json' \
        -d "{\"email\":\"$email\",\"password\":\"scale-test-password\"}" | json "['access_token']")
    auth="Authorization: Bearer $token"
    org=$(curl -sf -X POST "$base/api/v1/orgs" -H "$auth" -H 'content-type: application/json' \
        -d "{\"slug\":\"scale-$RANDOM\",\"name\":\"Scale\"}" | json "['id']")
    project=$(curl -sf -X POST "$base/api/v1/orgs/$org/projects" -H "$auth" -H 'content-type: application/json' \
        -d '{"key":"SC","name":"Scale"}' | json "['id']")
    task=$(curl -sf -X POST "$base/api/v1/projects/$project/tasks" -H "$auth" -H 'content-type: application/json' \
        -d '{"title":"scale probe"}' | json "['id']")
    # Every instance answers before the clock starts (grants made through one reach the others).
    for _ in $(seq 1 20); do curl -sf "$base/api/v1/tasks/$task" -H "$auth" >/dev/null || sleep 0.2; done
    lua=$tmp/auth.lua
    echo "wrk.headers[\"Authorization\"] = \"Bearer $token\"" >"$lua"
    echo "== $label: $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$lua" "$base/api/v1/tasks/$task" |
        grep -E "Requests/sec|Non-2xx|Socket errors| 50%| 99%"
}

new_db() {
    local name="pm_scale_${RANDOM}_$$"
    psql "$PG/postgres" -q -c "CREATE DATABASE $name" >/dev/null
    dbs+=("$name")
    echo "$PG/$name"
}

echo "== machine: $(nproc) cores, $(uname -sr); $CONNS connections, $THREADS wrk threads, ${DURATION}s per case"

PM_DATABASE_URL="sqlite://$tmp/pm.db" PM_BIND=127.0.0.1:18180 "$BIN" serve &
pid=$!
wait_up http://127.0.0.1:18180
measure http://127.0.0.1:18180 "1. one instance, SQLite, direct"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""

PM_DATABASE_URL=$(new_db) PM_BIND=127.0.0.1:18181 "$BIN" serve &
pid=$!
wait_up http://127.0.0.1:18181
measure http://127.0.0.1:18181 "2. one instance, PostgreSQL, direct"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""

for n in 1 "$NODES"; do
    PM_CLUSTER_DIR=$tmp/cluster PM_CLUSTER_DB=$(new_db) PM_CLUSTER_PORT=18190 \
        bash scripts/cluster.sh start "$n" >/dev/null
    label="3. one instance, PostgreSQL, behind nginx"
    [[ $n == 1 ]] || label="4. $n instances, PostgreSQL, behind nginx"
    measure http://127.0.0.1:18190 "$label"
    PM_CLUSTER_DIR=$tmp/cluster bash scripts/cluster.sh stop >/dev/null
done
