#!/usr/bin/env bash
# Dependency-direction check (DESIGN.md §1): the crate graph is the architecture, so we enforce it
# with `cargo tree` instead of hoping. Needs no compilation; run it alone with `bash .ci/deps.sh`.
#
# Rules:
#   (a) pm-core, the feature crates and the facade build without sqlx under --no-default-features;
#   (b) pm-core depends on no other workspace crate;
#   (c) a feature crate depends on pm-core only: no other feature crate, nor pm-server / pm;
#   (d) no workspace crate except pm-server depends on axum;
#   (e) rhai's `unchecked` feature never enters the build: it compiles out every sandbox limit
#       of pm-workflows' scripts (operations, call depth, sizes, the wall-clock budget), and a
#       dependency can switch it on silently (casbin does).
#
# Trees use `-e normal,build` (dev-dependencies may legitimately pull in anything: tests and
# examples are allowed to know HTTP frameworks) and `--target all`, so a dependency hidden behind
# a platform cfg still counts.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly FEATURE_CRATES=(pm-permissions pm-integrations pm-workflows pm-realtime)
readonly SERVER_CRATE=pm-server

failures=0

# Print the crate names (one per line, deduplicated) in the normal+build dependency tree of a
# package. Extra arguments are passed to `cargo tree` (feature flags).
tree() {
    local pkg=$1
    shift
    local out
    if ! out=$(cargo tree --quiet -p "$pkg" -e normal,build --target all --prefix none "$@"); then
        echo "deps.sh: \`cargo tree -p $pkg $*\` failed (is a manifest mid-edit?)" >&2
        exit 2
    fi
    awk 'NF { print $1 }' <<<"$out" | sort -u
}

# fail RULE PKG FLAGS OFFENDERS...
fail() {
    local rule=$1 pkg=$2 flags=$3
    shift 3
    echo "FAIL rule ($rule): $pkg [$flags] depends on: $*" >&2
    failures=$((failures + 1))
}

# Workspace members, from the manifest rather than a hard-coded list so new crates are covered.
if ! members=$(cargo tree --quiet --workspace --depth 0 --prefix none -e normal); then
    echo "deps.sh: \`cargo tree --workspace\` failed (is a manifest mid-edit?)" >&2
    exit 2
fi
mapfile -t MEMBERS < <(awk 'NF { print $1 }' <<<"$members" | sort -u)
if [[ ${#MEMBERS[@]} -eq 0 ]]; then
    echo "deps.sh: could not list workspace members" >&2
    exit 2
fi
is_member() {
    local m
    for m in "${MEMBERS[@]}"; do [[ $m == "$1" ]] && return 0; done
    return 1
}
echo "workspace members: ${MEMBERS[*]}"

# (a) no sqlx without the storage features.
for pkg in pm pm-core "${FEATURE_CRATES[@]}"; do
    is_member "$pkg" || continue
    offenders=$(tree "$pkg" --no-default-features | grep -E '^sqlx(-[a-z0-9-]+)?$' || true)
    [[ -z $offenders ]] || fail a "$pkg" --no-default-features $offenders
done

# (b) pm-core is the root of the graph.
offenders=$(tree pm-core --all-features | while read -r c; do
    [[ $c != pm-core ]] && is_member "$c" && echo "$c"
done || true)
[[ -z $offenders ]] || fail b pm-core --all-features $offenders

# (c) feature crates depend on pm-core only.
for pkg in "${FEATURE_CRATES[@]}"; do
    is_member "$pkg" || { fail c "$pkg" - "(not a workspace member?)"; continue; }
    offenders=$(tree "$pkg" --all-features | while read -r c; do
        [[ $c != "$pkg" && $c != pm-core ]] && is_member "$c" && echo "$c"
    done || true)
    [[ -z $offenders ]] || fail c "$pkg" --all-features $offenders
done

# (d) only pm-server knows axum.
for pkg in "${MEMBERS[@]}"; do
    [[ $pkg == "$SERVER_CRATE" ]] && continue
    offenders=$(tree "$pkg" --all-features | grep -E '^axum(-[a-z0-9-]+)?$' || true)
    [[ -z $offenders ]] || fail d "$pkg" --all-features $offenders
done

# (e) rhai's sandbox limits stay compiled in. Features are unified across the whole build, so
# look at the workspace with every feature on, every target, dev-dependencies included.
if rhai_features=$(cargo tree --quiet --workspace --all-features --target all -e features -i rhai \
    --prefix none 2>/dev/null); then
    if grep -qE '^rhai feature "unchecked"' <<<"$rhai_features"; then
        echo "FAIL rule (e): rhai's \`unchecked\` feature is enabled; it removes the script sandbox's limits. Pulled in by:" >&2
        cargo tree --quiet --workspace --all-features --target all -e features -i rhai \
            2>/dev/null | grep -A8 'rhai feature "unchecked"' >&2 || true
        failures=$((failures + 1))
    fi
else
    # `-i rhai` fails when rhai is not in the graph at all, which is fine.
    :
fi

if ((failures > 0)); then
    echo "dependency-direction check: $failures violation(s) of DESIGN.md §1" >&2
    exit 1
fi
echo "dependency-direction check: ok (rules a-e, ${#MEMBERS[@]} crates)"
