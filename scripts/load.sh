#!/usr/bin/env bash
# HTTP load benchmark of pm-server on embedded SQLite (the issue-3 targets), with wrk.
#
#   bash scripts/load.sh            # needs `wrk` (apt-get install wrk) and curl
#   PM_BIN=/path/to/pm-server bash scripts/load.sh   # a given build (A/B runs), no cargo
#
# Builds the release binary, starts it on a fresh SQLite database in a temp dir with rate limits
# off, registers a user, creates an org and a project through the API, then runs, each for
# $DURATION seconds with $CONNS connections:
#   1. POST /api/v1/projects/{id}/tasks        (task creation; also seeds the database)
#   2. GET  /api/v1/tasks/{id}                 (JWT verified, membership checked)
#   3. GET  /api/v1/projects/{id}/tasks?...    (a filtered list page of 25)
# and prints wrk's latency distribution for each. Loopback only; the server is stopped at exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CONNS=${CONNS:-64}
DURATION=${DURATION:-15}
THREADS=${THREADS:-2}
PORT=${PORT:-18080}
base="http://127.0.0.1:$PORT"

command -v wrk >/dev/null || { echo "wrk is required: apt-get install wrk" >&2; exit 2; }
bin=${PM_BIN:-}
if [[ -z $bin ]]; then
    cargo build --release -p pm-server --quiet
    bin=target/release/pm-server
fi
dir=$(mktemp -d)
export PM_DATABASE_URL="sqlite://$dir/pm.db" PM_BIND="127.0.0.1:$PORT" PM_LOG=warn \
    PM_RATE_LIMIT_PER_MINUTE=0 PM_RATE_LIMIT_IP_PER_MINUTE=0 PM_JWT_SECRET="load-test-secret-load-test-secret-0123"
"$bin" serve &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
curl -sf -X POST "$base/api/v1/auth/register" -H 'content-type: application/json' \
    -d '{"email":"load@example.com","display_name":"Load","password":"load-test-password"}' >/dev/null
token=$(curl -sf -X POST "$base/api/v1/auth/login" -H 'content-type: application/json' \
    -d '{"email":"load@example.com","password":"load-test-password"}' | json "['access_token']")
auth="Authorization: Bearer $token"
org=$(curl -sf -X POST "$base/api/v1/orgs" -H "$auth" -H 'content-type: application/json' \
    -d '{"slug":"load","name":"Load"}' | json "['id']")
project=$(curl -sf -X POST "$base/api/v1/orgs/$org/projects" -H "$auth" -H 'content-type: application/json' \
    -d '{"key":"LD","name":"Load"}' | json "['id']")

lua=$(mktemp)
cat >"$lua" <<LUA
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/json"
local n = 0
local prios = {"none", "low", "medium", "high", "urgent"}
request = function()
  if wrk.method == "POST" then
    n = n + 1
    local body = string.format('{"title":"load task %d","priority":"%s","description":"created by wrk"}', n, prios[n % 5 + 1])
    return wrk.format("POST", nil, nil, body)
  end
  return wrk.format()
end
LUA

echo "== machine: $(nproc) cores, $(uname -sr), $(date -u +%FT%TZ)"
echo "== 1. POST /api/v1/projects/{id}/tasks  ($CONNS connections, ${DURATION}s)"
sed -i 's/^wrk.headers\["Content-Type"\].*/&\nwrk.method = "POST"/' "$lua"
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$lua" "$base/api/v1/projects/$project/tasks"
sed -i '/^wrk.method = "POST"/d' "$lua"

task=$(curl -sf "$base/api/v1/projects/$project/tasks?limit=1" -H "$auth" | json "['items'][0]['id']")
echo "== 2. GET /api/v1/tasks/{id}  ($CONNS connections, ${DURATION}s)"
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$lua" "$base/api/v1/tasks/$task"

echo "== 3. GET filtered list page of 25  ($CONNS connections, ${DURATION}s)"
wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -s "$lua" \
    "$base/api/v1/projects/$project/tasks?priority=high,urgent&state_category=unstarted&sort=-created&limit=25"
total=$(curl -sf "$base/api/v1/projects/$project/activity?limit=1" -H "$auth" | json "['items'][0]['seq']")
echo "== events in the log after the run: $total"
rm -f "$lua"
