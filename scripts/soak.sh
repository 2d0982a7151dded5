#!/usr/bin/env bash
# Bounded soak run (issue 9; not part of CI): steady mixed REST traffic for MINUTES while memory,
# descriptors, threads and error counters of every pm-server process are sampled, then a verdict.
#
#   bash scripts/soak.sh sqlite  [MINUTES]   # one instance on a temp SQLite file (default)
#   bash scripts/soak.sh cluster [MINUTES]   # 2 instances on PostgreSQL + Redis behind nginx
#                                            # (scripts/cluster.sh; a fresh database, dropped after)
#
# Traffic (wrk, $SOAK_CONNS connections, each pausing $SOAK_DELAY_MS between requests, so the rate
# is bounded rather than "as fast as possible"): 15 % task creations, 10 % comments on a created
# task, 55 % reads of a created task, 20 % filtered list pages. Every $SOAK_SAMPLE seconds it prints
# one line: elapsed time, requests answered and 5xx so far (from each instance's /metrics), and per
# instance its resident memory (VmRSS), open descriptors and threads.
#
# Verdict (exit 1 when not met): zero 5xx and zero wrk socket errors; resident memory at the end
# within $SOAK_RSS_GROWTH % of the sample taken after the first quarter of the run (warm caches,
# pools and allocator arenas are reached by then; steady growth after it is a leak); descriptors
# likewise flat (± 32). Needs wrk, curl, python3; cluster mode also nginx, psql and Redis.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=${1:-sqlite}
minutes=${2:-10}
CONNS=${SOAK_CONNS:-16}
DELAY=${SOAK_DELAY_MS:-40}
SAMPLE=${SOAK_SAMPLE:-30}
GROWTH=${SOAK_RSS_GROWTH:-10}
[[ $minutes =~ ^[1-9][0-9]*$ ]] || { echo "soak: MINUTES must be a positive number" >&2; exit 2; }
command -v wrk >/dev/null || { echo "soak: wrk is required (apt-get install wrk)" >&2; exit 2; }

bin=${PM_BIN:-target/release/pm-server}
[[ -x $bin ]] || cargo build --release -p pm-server --quiet
work=$(mktemp -d)
pids=()
ports=()
cleanup() {
    if [[ $mode == cluster ]]; then
        PM_CLUSTER_DIR=$work/cluster bash scripts/cluster.sh stop >/dev/null 2>&1 || true
        psql "postgres://postgres@127.0.0.1:5432/postgres" -qAt \
            -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    else
        for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Rate limits off; access tokens outlive the run (the soak is about the server, not refreshing).
export PM_LOG=warn PM_RATE_LIMIT_PER_MINUTE=0 PM_RATE_LIMIT_IP_PER_MINUTE=0
export PM_ACCESS_TTL_SECS=$((minutes * 60 + 600))
case $mode in
sqlite)
    port=18300
    PM_DATABASE_URL="sqlite://$work/pm.db" PM_BIND="127.0.0.1:$port" \
        PM_JWT_SECRET="soak-secret-soak-secret-soak-secret-0123" "$bin" serve 2>"$work/server.log" &
    pids=($!)
    ports=($port)
    base="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do curl -sf "$base/readyz" >/dev/null && break; sleep 0.1; done
    ;;
cluster)
    db="pm_soak_$$"
    export PM_CLUSTER_DIR=$work/cluster PM_CLUSTER_PORT=18310 PM_BIN=$bin
    export PM_CLUSTER_DB="postgres://postgres@127.0.0.1:5432/$db"
    export PM_REDIS_URL=${PM_REDIS_URL:-redis://127.0.0.1:6379}
    bash scripts/cluster.sh start 2
    pids=("$(cat "$work/cluster/instance-1.pid")" "$(cat "$work/cluster/instance-2.pid")")
    ports=(18311 18312)
    base="http://127.0.0.1:18310"
    ;;
*)
    echo "soak: mode must be sqlite or cluster, got '$mode'" >&2
    exit 2
    ;;
esac

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
curl -sf -X POST "$base/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"soak@example.com","display_name":"Soak","password":"soak-test-password"}' >/dev/null
token=$(curl -sf -X POST "$base/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"soak@example.com","password":"soak-test-password"}' | json "['access_token']")
auth="Authorization: Bearer $token"
org=$(curl -sf -X POST "$base/api/v1/orgs" -H "$auth" -H 'content-type: application/json' \
    -d '{"slug":"soak","name":"Soak"}' | json "['id']")
project=$(curl -sf -X POST "$base/api/v1/orgs/$org/projects" -H "$auth" -H 'content-type: application/json' \
    -d '{"key":"SK","name":"Soak"}' | json "['id']")
first=$(curl -sf -X POST "$base/api/v1/projects/$project/tasks" -H "$auth" -H 'content-type: application/json' \
    -d '{"title":"first"}' | json "['id']")

lua=$work/soak.lua
cat >"$lua" <<LUA
local token = "$token"
local project = "$project"
local ids = { "$first" }
-- Global, not local: done() reads it from each thread with thread:get.
counts = { ["2xx"] = 0, ["4xx"] = 0, ["5xx"] = 0 }
local threads = {}
local n = 0
function setup(thread) table.insert(threads, thread) end
function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
end
function delay() return $DELAY end
function request()
  n = n + 1
  local r = math.random(100)
  local id = ids[math.random(#ids)]
  if r <= 15 then
    return wrk.format("POST", "/api/v1/projects/" .. project .. "/tasks", nil,
      string.format('{"title":"soak task %d","priority":"%s"}', n, ({"low","medium","high"})[n % 3 + 1]))
  elseif r <= 25 then
    return wrk.format("POST", "/api/v1/tasks/" .. id .. "/comments", nil,
      string.format('{"body":"soak comment %d"}', n))
  elseif r <= 80 then
    return wrk.format("GET", "/api/v1/tasks/" .. id)
  else
    return wrk.format("GET", "/api/v1/projects/" .. project .. "/tasks?priority=high,medium&sort=-created&limit=25")
  end
end
function response(status, headers, body)
  local class = math.floor(status / 100) .. "xx"
  counts[class] = (counts[class] or 0) + 1
  if status == 201 and body:find('"number":', 1, true) then
    local id = body:match('"id":"([%x%-]+)"')
    if id and #ids < 5000 then table.insert(ids, id) end
  end
end
function done(summary, latency, requests)
  local total = { ["2xx"] = 0, ["4xx"] = 0, ["5xx"] = 0 }
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
  end
  io.write(string.format("wrk: %d requests, 2xx %d, 4xx %d, 5xx %d, socket errors %d, p50 %.1f ms, p99 %.1f ms\n",
    summary.requests, total["2xx"], total["4xx"], total["5xx"],
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
LUA

# One sample: requests and 5xx summed over every instance's /metrics, then per process
# VmRSS (KiB), descriptors, threads.
sample() {
    local req=0 err=0 line=""
    for port in "${ports[@]}"; do
        read -r r e < <(curl -sf "http://127.0.0.1:$port/metrics" | awk '
            /^pm_http_requests_total\{/ { t += $NF; if ($0 ~ /status="5/) e += $NF }
            END { printf "%d %d\n", t, e }')
        req=$((req + r))
        err=$((err + e))
    done
    for p in "${pids[@]}"; do
        local rss fds thr
        rss=$(awk '/^VmRSS/ { print $2 }' "/proc/$p/status")
        thr=$(awk '/^Threads/ { print $2 }' "/proc/$p/status")
        fds=$(ls "/proc/$p/fd" | wc -l)
        line+=" $rss $fds $thr"
    done
    echo "$req $err$line"
}

secs=$((minutes * 60))
echo "== soak: $mode, $minutes min, $CONNS connections, ${DELAY} ms pause, $(nproc) cores, $(date -u +%FT%TZ)"
printf '%6s %10s %6s' "t(s)" "requests" "5xx"
for i in "${!pids[@]}"; do printf ' %10s %5s %4s' "rss$((i + 1))(MiB)" "fds" "thr"; done
echo
wrk -t2 -c"$CONNS" -d"${secs}s" --timeout 10s -s "$lua" "$base" >"$work/wrk.out" 2>&1 &
wrk_pid=$!
start=$(date +%s)
quarter=""
last=""
while kill -0 "$wrk_pid" 2>/dev/null; do
    sleep "$SAMPLE"
    kill -0 "$wrk_pid" 2>/dev/null || break
    s=$(sample)
    t=$(($(date +%s) - start))
    read -r -a f <<<"$s"
    printf '%6d %10d %6d' "$t" "${f[0]}" "${f[1]}"
    for ((i = 2; i < ${#f[@]}; i += 3)); do
        printf ' %10.1f %5d %4d' "$(echo "${f[i]} / 1024" | bc -l)" "${f[i + 1]}" "${f[i + 2]}"
    done
    echo
    [[ -z $quarter && $t -ge $((secs / 4)) ]] && quarter=$s
    last=$s
done
wait "$wrk_pid" || true
grep '^wrk:' "$work/wrk.out" || { cat "$work/wrk.out"; exit 1; }

read -r -a q <<<"$quarter"
read -r -a l <<<"$last"
verdict=0
[[ ${l[1]} -eq 0 ]] || { echo "FAIL: ${l[1]} responses were 5xx"; verdict=1; }
grep -q 'socket errors 0,' "$work/wrk.out" || { echo "FAIL: wrk saw socket errors"; verdict=1; }
grep -q '5xx 0,' "$work/wrk.out" || { echo "FAIL: wrk saw 5xx"; verdict=1; }
for ((i = 2; i < ${#l[@]}; i += 3)); do
    n=$(((i - 2) / 3 + 1))
    growth=$(echo "(${l[i]} - ${q[i]}) * 100 / ${q[i]}" | bc -l)
    printf 'instance %d: rss %.1f → %.1f MiB (%+.1f %% after the first quarter), fds %d → %d\n' \
        "$n" "$(echo "${q[i]} / 1024" | bc -l)" "$(echo "${l[i]} / 1024" | bc -l)" "$growth" \
        "${q[i + 1]}" "${l[i + 1]}"
    if (($(echo "$growth > $GROWTH" | bc -l))); then
        echo "FAIL: instance $n grew more than $GROWTH %"
        verdict=1
    fi
    if ((l[i + 1] - q[i + 1] > 32)); then
        echo "FAIL: instance $n's descriptors grew by $((l[i + 1] - q[i + 1]))"
        verdict=1
    fi
done
((verdict == 0)) && echo "soak: PASS (no 5xx, no socket errors, memory and descriptors flat)"
exit "$verdict"
