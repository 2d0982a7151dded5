#!/usr/bin/env bash
# The 50,000-connection hold run of issue 5 (BENCHMARKS.md, "pm-realtime over WebSocket"), with
# the ws_hold harness (pm-server/benches/ws_hold.rs; its header documents every WS_HOLD_*
# setting).
#
#   bash scripts/ws-hold.sh [CONNS] [PROCESSES]       # default 50000 connections, 4 processes
#   WS_HOLD_DATABASE_URL=postgres://... bash scripts/ws-hold.sh 50000
#
# One process may hold no more descriptors than the hard RLIMIT_NOFILE, so the connections are
# spread over PROCESSES server processes sharing one port (PM_REUSE_PORT=true) and as many client
# processes, each client socket bound to a source address in 127.0.0.2-254. The script builds the
# release `pm-server` and the harness (cargo bench --no-run), raises the open-files limit to the
# hard limit, checks that each process's share fits under it, and runs the harness, which starts
# and stops every process itself. Loopback only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

conns=${1:-50000}
procs=${2:-4}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
limit=$(ulimit -n)
share=$(((conns + procs - 1) / procs))
# The kernel spreads connections over the servers by hash, not exactly evenly: keep 10 % slack.
if ((share * 11 / 10 + 512 > limit)); then
    echo "ws-hold: $share connections per process need ~$((share * 11 / 10 + 512)) descriptors; the limit is $limit (hard: $(ulimit -Hn)); use more processes" >&2
    exit 2
fi

# WS_HOLD_BENCH_BIN=<built ws_hold binary> skips cargo (e.g. while another cargo holds the lock).
[[ -n ${WS_HOLD_BENCH_BIN:-} ]] || cargo bench -p pm-server --bench ws_hold --no-run --quiet

# One user by default: with several, adding them to the org through the shared port got a 500
# from a server other than the org's creator (SQLite shared by several processes; see
# BENCHMARKS.md). WS_HOLD_USERS=N with WS_HOLD_DATABASE_URL=postgres://... to try more.
export WS_HOLD_CONNS=$conns WS_HOLD_SERVERS=$procs WS_HOLD_CLIENTS=$procs
export WS_HOLD_USERS=${WS_HOLD_USERS:-1} WS_HOLD_SECONDS=${WS_HOLD_SECONDS:-30}
echo "== $(date -u +%FT%TZ) $(nproc) cores, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg), open files $limit"
if [[ -n ${WS_HOLD_BENCH_BIN:-} ]]; then "$WS_HOLD_BENCH_BIN" --bench; else cargo bench -p pm-server --bench ws_hold --quiet; fi
