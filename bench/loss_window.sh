#!/bin/sh
# The loss window of a crash failover, with and without partial_interval (issue 13): runs the
# ignored e2e test issue13_loss_window over WALSHIP_LOSS_KILLS kills per mode (default 10,
# interleaved), each on a fresh primary/receiver/standby, and prints per-kill lines and a
# min / median / max table of the ms of acknowledged commits lost.
#
#   bench/loss_window.sh [KILLS]          (from the repository root, as root: the harness
#                                          runs PostgreSQL as the postgres user)
#   WALSHIP_FAULT_SEED=N bench/loss_window.sh   repeats the same random kill points
#
# Needs PostgreSQL 15 in /usr/lib/postgresql/15/bin (or WALSHIP_PG_BINDIR). Output also goes
# to "${TMPDIR:-/tmp}/walship-loss-window.out".
set -eu
cd "$(dirname "$0")/.."
KILLS=${1:-${WALSHIP_LOSS_KILLS:-10}}
export WALSHIP_LOSS_KILLS="$KILLS"
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo build --workspace --bins
cargo test -p walship-tests --test e2e issue13_loss_window -- --ignored --nocapture \
    --test-threads 1 2>&1 | tee "${TMPDIR:-/tmp}/walship-loss-window.out" | grep -E '^(loss_window|issue13_loss|\|)|seed|panicked|test result'
