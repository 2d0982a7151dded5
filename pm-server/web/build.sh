#!/usr/bin/env bash
# Rebuilds pm-server/web/dist (committed; pm-server embeds it, so `cargo run` needs no Node).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[[ -d node_modules/esbuild ]] || npm ci --no-audit --no-fund
node build.mjs
