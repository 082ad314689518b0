#!/usr/bin/env bash
# walship-sender basebackup against pg_basebackup -Ft -X none of the same cluster, on this machine
# (issue 12). Run by hand as root, never in CI:
#
#   bash bench/basebackup.sh [SCALE] [ROUNDS]     defaults: pgbench scale 50 (~750 MiB), 3 rounds
#
#   env: WALSHIP_BIN_DIR (default target/release; built with `cargo build --release --bins` if
#        missing)  WALSHIP_PG_BINDIR (default /usr/lib/postgresql/15/bin)  KEEP=1 (keep the work
#        directory /tmp/walship-bb-bench.XXXXXX)
#
# One primary (pgbench -i -s SCALE, archive_mode = on, archive_command = walship-sender push to a
# local walship-receiver), idle during the runs. Each round runs both methods, the order
# alternating from round to round, each from a flushed disk (`sync` before, outside the timing):
#   walship:       walship-sender basebackup into the receiver's absent pgdata (removed between
#                  rounds): read, zstd-1, QUIC + mutual TLS on loopback, digest, fsync per file and
#                  directory on the receiver, pg_backup_stop and the end segment archived;
#   pg_basebackup: pg_basebackup -Ft -X none -c fast into a new directory (tar, no compression,
#                  fsync at the end as it does by default), through a local replication connection.
# Both use a fast checkpoint. MB/s = the bytes of the data directory each copied (walship's
# summary; pg_basebackup's base.tar) / wall time, 10^6 bytes per MB. Prints medians, min and max.
set -euo pipefail

SCALE=${1:-50}
ROUNDS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${WALSHIP_BIN_DIR:-$ROOT/target/release}
PGBIN=${WALSHIP_PG_BINDIR:-/usr/lib/postgresql/15/bin}
[ "$(id -u)" = 0 ] || { echo "run as root (it runs PostgreSQL and walship as postgres)" >&2; exit 1; }
if [ ! -x "$BIN/walship-sender" ] || [ ! -x "$BIN/walship-receiver" ]; then
    (cd "$ROOT" && cargo build --release --bins)
fi

W=$(mktemp -d /tmp/walship-bb-bench.XXXXXX)
chmod 755 "$W"
RX_PID=
cleanup() {
    [ -n "$RX_PID" ] && kill "$RX_PID" 2>/dev/null || true
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/primary" -m immediate -w stop >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
cp "$BIN/walship-sender" "$BIN/walship-receiver" "$W/"
chown -R postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PGPORT=$(free_port)
RXPORT=$(free_port)
as_pg "$PGBIN/initdb" -D "$W/primary" -U postgres -A trust --no-sync >/dev/null
cat >>"$W/primary/postgresql.conf" <<EOF
port = $PGPORT
listen_addresses = ''
unix_socket_directories = '$W'
wal_level = replica
archive_mode = on
archive_command = '$W/walship-sender --config $W/sender.toml push %p %f'
max_wal_senders = 4
EOF
as_pg "$W/walship-receiver" certs --dir "$W/certs" --server-name localhost >/dev/null 2>&1
cat >"$W/receiver.toml" <<EOF
listen = "127.0.0.1:$RXPORT"
archive_dir = "$W/archive"
cert = "$W/certs/server.pem"
key = "$W/certs/server.key"
client_ca = "$W/certs/ca.pem"
pgdata = "$W/standby"
EOF
cat >"$W/sender.toml" <<EOF
receiver = "127.0.0.1:$RXPORT"
server_name = "localhost"
ca = "$W/certs/ca.pem"
cert = "$W/certs/client.pem"
key = "$W/certs/client.key"
pgdata = "$W/primary"
conninfo = "host=$W port=$PGPORT user=postgres dbname=postgres"
EOF
chown postgres:postgres "$W"/*.toml
as_pg "$PGBIN/pg_ctl" -D "$W/primary" -l "$W/primary.log" -w start >/dev/null
as_pg "$PGBIN/pgbench" -h "$W" -p "$PGPORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
# setpriv execs (runuser would fork and keep the receiver out of reach of the trap's kill).
setpriv --reuid postgres --regid postgres --init-groups \
    "$W/walship-receiver" --config "$W/receiver.toml" serve >"$W/receiver.log" 2>&1 &
RX_PID=$!
for _ in $(seq 100); do grep -q listening "$W/receiver.log" && break; sleep 0.1; done

declare -a T_WS T_PG
B_WS=0 B_PG=0
now() { date +%s.%N; }
run_walship() {
    rm -rf "$W/standby"
    sync
    local t0 t1 out
    t0=$(now)
    out=$(as_pg "$W/walship-sender" --config "$W/sender.toml" basebackup 2>&1)
    t1=$(now)
    T_WS+=("$(echo "$t1 - $t0" | bc)")
    # "done: 752.3 MiB in 1203 files ...": the exact bytes are the data directory's, from du.
    echo "$out" | grep -q "done:" || { echo "$out" >&2; exit 1; }
    B_WS=$(du -sb --exclude=pg_wal "$W/standby" | cut -f1)
}
run_pg_basebackup() {
    rm -rf "$W/pgbb"
    sync
    local t0 t1
    t0=$(now)
    as_pg "$PGBIN/pg_basebackup" -h "$W" -p "$PGPORT" -U postgres -D "$W/pgbb" -Ft -X none -c fast 2>/dev/null
    t1=$(now)
    T_PG+=("$(echo "$t1 - $t0" | bc)")
    B_PG=$(stat -c %s "$W/pgbb/base.tar")
}
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then run_walship; run_pg_basebackup; else run_pg_basebackup; run_walship; fi
    echo "round $r: walship ${T_WS[-1]} s, pg_basebackup ${T_PG[-1]} s" >&2
done

stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f %.2f %.2f", m, a[1], a[NR]}'; }
read -r M_WS MIN_WS MAX_WS <<<"$(stats "${T_WS[@]}")"
read -r M_PG MIN_PG MAX_PG <<<"$(stats "${T_PG[@]}")"
CLUSTER=$(du -sb --exclude=pg_wal "$W/primary" | cut -f1)
echo
echo "cluster: pgbench scale $SCALE, $(numfmt --to=iec-i --suffix=B "$CLUSTER") without pg_wal; $ROUNDS rounds, $(nproc) cores"
echo
echo "| method | median s | min s | max s | bytes copied | MB/s (median) |"
echo "|---|---|---|---|---|---|"
printf '| walship-sender basebackup (zstd-1, QUIC+mTLS, fsync per file) | %s | %s | %s | %s | %.1f |\n' \
    "$M_WS" "$MIN_WS" "$MAX_WS" "$B_WS" "$(echo "$B_WS / 1000000 / $M_WS" | bc -l)"
printf '| pg_basebackup -Ft -X none -c fast | %s | %s | %s | %s | %.1f |\n' \
    "$M_PG" "$MIN_PG" "$MAX_PG" "$B_PG" "$(echo "$B_PG / 1000000 / $M_PG" | bc -l)"
