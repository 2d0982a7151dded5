#!/usr/bin/env bash
# A/B of the WebSocket write coalescing (PM_WS_WRITE_BATCH) with the ws_load harness: the same
# build, runs alternating between batch sizes so a shared machine's load falls on both alike.
#
#   bash scripts/ws-batch-ab.sh [ROUNDS] [CONNS] [BATCHES]   # default 3 rounds, 10000, "1 64"
#
# Each run is `ws_load` on one node (temp SQLite, in-process broker) with WS_LOAD_* from the
# environment (defaults here: WS_LOAD_RATE=10 WS_LOAD_SECONDS=15 WS_LOAD_LAT_SECONDS=10). Prints
# every run's delivered events/s and latency-phase p50/p99 (sent → last of WS_LOAD_LAT_SUBS),
# then the medians per batch size. Full harness output goes to $TMPDIR/ws-batch-ab.*.log.
# WS_LOAD_BENCH_BIN=<built ws_load binary> skips cargo (e.g. while another cargo holds the lock).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${1:-3}
conns=${2:-10000}
batches=${3:-"1 64"}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
run() {
    if [[ -n ${WS_LOAD_BENCH_BIN:-} ]]; then "$WS_LOAD_BENCH_BIN" --bench; else cargo bench -p pm-server --bench ws_load --quiet; fi
}
[[ -n ${WS_LOAD_BENCH_BIN:-} ]] || cargo bench -p pm-server --bench ws_load --no-run --quiet
export WS_LOAD_CONNS=$conns WS_LOAD_NODES=1 WS_LOAD_BROKER=memory
export WS_LOAD_RATE=${WS_LOAD_RATE:-10} WS_LOAD_SECONDS=${WS_LOAD_SECONDS:-15}
export WS_LOAD_LAT_SECONDS=${WS_LOAD_LAT_SECONDS:-10}
unset WS_LOAD_DATABASE_URL
logdir=$(mktemp -d "${TMPDIR:-/tmp}/ws-batch-ab.XXXXXX")
echo "== $(date -u +%FT%TZ) $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds of batch sizes [$batches], $conns connections, rate $WS_LOAD_RATE/s; logs in $logdir"
declare -A rates lat50 lat99
for r in $(seq 1 "$rounds"); do
    for b in $batches; do
        log="$logdir/r$r-b$b.log"
        PM_WS_WRITE_BATCH=$b run >"$log" 2>&1 || echo "run r$r batch $b failed (see $log)"
        rate=$(sed -n 's/.* \([0-9]*\) events\/s delivered.*/\1/p' "$log" | head -1)
        lat=$(sed -n 's/^| latency phase: sent → last of [0-9]* p50 \/ p99 (max) | \([0-9.]*\) \/ \([0-9.]*\) ms.*/\1 \2/p' "$log" | head -1)
        read -r l50 l99 <<<"${lat:-- -}"
        echo "round $r, PM_WS_WRITE_BATCH=$b: ${rate:-?} events/s delivered; latency phase p50 ${l50} ms, p99 ${l99} ms (load $(cut -d' ' -f1 /proc/loadavg))"
        rates[$b]+="${rate:-0} "
        lat50[$b]+="${l50} "
        lat99[$b]+="${l99} "
    done
done
median() { tr ' ' '\n' | grep -v '^$' | grep -v '^-$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "?"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
for b in $batches; do
    echo "median, PM_WS_WRITE_BATCH=$b: $(echo "${rates[$b]}" | median) events/s; latency phase p50 $(echo "${lat50[$b]}" | median) ms, p99 $(echo "${lat99[$b]}" | median) ms"
done
