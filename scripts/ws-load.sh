#!/usr/bin/env bash
# Realtime WebSocket load runs (the issue-5 figures in BENCHMARKS.md), with the ws_load harness
# (pm-server/benches/ws_load.rs; its header documents the phases and every WS_LOAD_* setting).
#
#   bash scripts/ws-load.sh one [CONNS]          # 1 node on a temp SQLite file, in-process broker
#   bash scripts/ws-load.sh redis [CONNS]        # 2 nodes on a fresh PostgreSQL database, Redis broker
#   bash scripts/ws-load.sh postgres [CONNS]     # 2 nodes, PostgreSQL LISTEN/NOTIFY broker
#
# Builds the harness and the release `pm-server` (cargo bench --no-run), raises the open-files
# limit as far as the hard limit allows (each connection is one descriptor in the harness and
# one in the server), and runs the harness, which starts the server node(s) as child processes,
# registers a user and creates an org and two projects over REST, and stops the nodes at exit.
# For two nodes this script creates a fresh database (PM_WS_LOAD_PG, default
# postgres://postgres@127.0.0.1:5432, admin database `postgres`) and drops it at exit; Redis is
# expected at PM_REDIS_URL (default redis://127.0.0.1:6379). Loopback only. Any WS_LOAD_* set in
# the environment (rate, durations, latency subscribers) passes through.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=${1:-one}
conns=${2:-1000}
pg=${PM_WS_LOAD_PG:-postgres://postgres@127.0.0.1:5432}
export PM_REDIS_URL=${PM_REDIS_URL:-redis://127.0.0.1:6379}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
limit=$(ulimit -n)
if ((conns + 256 > limit)); then
    echo "ws-load: $conns connections need ~$((conns + 256)) descriptors per process; the limit is $limit (hard: $(ulimit -Hn))" >&2
    exit 2
fi

cargo bench -p pm-server --bench ws_load --no-run --quiet

export WS_LOAD_CONNS=$conns
db=""
cleanup() {
    if [[ -n $db ]]; then
        psql "$pg/postgres" -qAt -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
case $mode in
    one)
        export WS_LOAD_NODES=1 WS_LOAD_BROKER=memory
        unset WS_LOAD_DATABASE_URL
        ;;
    redis | postgres)
        command -v psql >/dev/null || { echo "ws-load: psql is required for two nodes" >&2; exit 2; }
        if [[ $mode == redis ]]; then
            redis-cli -u "$PM_REDIS_URL" ping >/dev/null || { echo "ws-load: no Redis at $PM_REDIS_URL" >&2; exit 2; }
        fi
        db="pm_ws_load_$$"
        psql "$pg/postgres" -qAt -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db" >/dev/null
        export WS_LOAD_NODES=2 WS_LOAD_BROKER=$mode WS_LOAD_DATABASE_URL="$pg/$db"
        ;;
    *)
        echo "usage: $0 one|redis|postgres [CONNS]" >&2
        exit 2
        ;;
esac
echo "== $(date -u +%FT%TZ) $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg), open files $limit"
cargo bench -p pm-server --bench ws_load --quiet
