#!/usr/bin/env bash
# Soak test: a primary under pgbench archiving through a faulty link to a receiver that is
# SIGKILLed every 20-40 s, then failover; see tests/e2e/soak.rs for what it checks.
#
#   bash tests/soak.sh [MINUTES]      # default 10
#
# WALSHIP_SOAK_SEED=N repeats a run's fault draw (the seed is printed at the start and in the
# summary). Needs what the end-to-end tests need (PostgreSQL 15, run as root or as postgres).
set -euo pipefail

minutes="${1:-10}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || (( minutes < 1 )); then
    echo "usage: bash tests/soak.sh [MINUTES]   (a whole number >= 1, default 10)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
cargo build --workspace --bins
WALSHIP_SOAK_SECS=$((minutes * 60)) \
    exec cargo test -p walship-tests --test e2e -- --ignored --nocapture soak
