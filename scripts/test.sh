#!/usr/bin/env bash
# The full test suite (unit, kernel, CLI and HAProxy end-to-end), as root.
# Every test that destroys sockets does so in a network namespace it created.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# Everything compiles (the benchmark too), then every test runs; the benchmark is
# a timing run and never part of the tests (cargo bench --bench kill).
cargo build --release --all-targets
cargo test --release "$@"
