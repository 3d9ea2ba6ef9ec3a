#!/usr/bin/env bash
# Runs the HAProxy end-to-end tests (tests/haproxy_e2e.rs, TCP mode,
# tests/haproxy_http.rs, HTTP mode, tests/haproxy_moved.rs, servers whose
# connections are not at the printed address, and tests/haproxy_lingering.rs, the
# --lingering sweep) against every HAProxy branch users run:
# Debian's own package (2.6) and every upstream release in $HAPROXY_SOURCES
# (default ../shared/haproxy: 2.2, 2.4, 2.8, 3.0.0, 3.0.11, 3.1, 3.2, 3.3, 3.4), built into a
# cache outside the clone (scripts/haproxy-build.sh; rebuilt only when missing).
# Writes docs/haproxy-matrix.md from what each scenario did. Exits non-zero if
# any version fails; a missing source folder is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh

# ../shared/haproxy from the project root, or from the repository this clone was made from.
if [ -z "${HAPROXY_SOURCES:-}" ]; then
  HAPROXY_SOURCES=../shared/haproxy
  origin=$(git config --get remote.origin.url 2>/dev/null || true)
  if [ ! -d "$HAPROXY_SOURCES" ] && [ -n "$origin" ] && [ -d "$origin/../shared/haproxy" ]; then
    HAPROXY_SOURCES="$origin/../shared/haproxy"
  fi
fi
SOURCES=$HAPROXY_SOURCES
if [ ! -d "$SOURCES" ]; then
  echo "haproxy-matrix: no HAProxy sources at $SOURCES (set HAPROXY_SOURCES to the folder of haproxy-X.Y.Z.tar.gz)" >&2
  exit 1
fi
mapfile -t builds < <(HAPROXY_SOURCES="$SOURCES" bash scripts/haproxy-build.sh)
[ "${#builds[@]}" -gt 0 ] || { echo "haproxy-matrix: nothing built from $SOURCES" >&2; exit 1; }

logs=$(mktemp -d /tmp/sockkill-matrix.XXXXXX)
trap 'rm -rf "$logs"' EXIT
cargo build --release --tests --examples --quiet

failed=()
run() {
  local name=$1 bin=$2
  echo "== HAProxy $name ($("$bin" -v | head -n1 | awk '{print $3}'))" >&2
  if ! SOCKKILL_HAPROXY=$bin SOCKKILL_MATRIX_LOG="$logs/$name.jsonl" \
      cargo test --release --quiet --test haproxy_e2e --test haproxy_http --test haproxy_moved --test haproxy_lingering -- --test-threads=1 >"$logs/$name.out" 2>&1; then
    failed+=("$name")
    tail -n 60 "$logs/$name.out" >&2
  fi
  grep -E "^test result" "$logs/$name.out" >&2 || true
}

run debian-2.6 "$(command -v haproxy)"
for line in "${builds[@]}"; do
  run "${line%% *}" "${line#* }"
done

cargo run --release --quiet --example matrix_report -- "$logs"/*.jsonl >docs/haproxy-matrix.md
echo "haproxy-matrix: wrote docs/haproxy-matrix.md" >&2
if [ "${#failed[@]}" -gt 0 ]; then
  echo "haproxy-matrix: FAILED on ${failed[*]}" >&2
  exit 1
fi
echo "haproxy-matrix: every version passed" >&2
