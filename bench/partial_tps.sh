#!/usr/bin/env bash
# What shipping the open segment costs the primary (issue 13 item 5): pgbench on a primary that
# archives through the walship daemon, with `partial_interval = "200ms"` against the same daemon
# without it.
#
#   bash bench/partial_tps.sh [ROUNDS] [SECS]     as root; defaults 5 rounds of 30 s per run
#   QUICK=1 bash bench/partial_tps.sh             3 rounds of 15 s
#
#   env: RATE_MBS=5 (WAL rate of the throttled runs)  CLIENTS=4  SCALE=10  KEEP=1  OUT=FILE
#        CARGO_TARGET_DIR (default /tmp/walship-bench-target)  WALSHIP_PG_BINDIR
#        STANDBY_TMPFS=1: the receiver's archive_dir on tmpfs (/dev/shm), standing in for the
#        standby host's own disk: in production the receiver's fsyncs are not on the primary's
#        disk, here they would otherwise queue behind (and ahead of) every commit's WAL flush.
#
# One primary (PostgreSQL 15, synchronous_commit on, archive_mode on, archive_command = a
# walship push that hands off to the daemon), one receiver on loopback. Each round runs, in an
# order that alternates from round to round, both daemon configurations (the daemon is
# restarted with the other config between runs; same primary, same receiver):
#   - off: socket, pgdata, conninfo (finished segments only);
#   - on:  the same plus partial_interval = "200ms".
# and two pgbench runs with each:
#   - "tps": unthrottled pgbench -c CLIENTS -j 2 -T SECS: the tps impact (target: within 3%);
#   - "rate": pgbench -R RATE with RATE chosen from a calibration run so that the primary makes
#     about RATE_MBS MB/s of WAL: the daemon's CPU then (utime + stime from /proc/PID/stat over
#     the run, as core-%), on minus off = the open segment's cost (target: at most 1 core-%).
# Medians over rounds; the ratio table is printed and written to OUT.
set -euo pipefail

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then d_rounds=3 d_secs=15; else d_rounds=5 d_secs=30; fi
ROUNDS=${1:-$d_rounds}
SECS=${2:-$d_secs}
RATE_MBS=${RATE_MBS:-5}
CLIENTS=${CLIENTS:-4}
SCALE=${SCALE:-10}
PGBIN=${WALSHIP_PG_BINDIR:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-/tmp/walship-bench-target}
export PATH=$HOME/.cargo/bin:$PATH
export LC_ALL=C

say() { echo "== $*" >&2; }
die() { echo "partial_tps.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it runs PostgreSQL and walship as postgres)"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries not found in $PGBIN"

say "building release binaries (CARGO_TARGET_DIR=$TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --bins -q)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

W=$(mktemp -d /tmp/walship-partial-tps.XXXXXX)
chmod 755 "$W"
OUT=${OUT:-$W/results.md}
mkdir -p "$W/bin" "$W/log" "$W/sock" "$W/ws"
cp "$TARGET/release/walship-sender" "$TARGET/release/walship-receiver" "$W/bin/"
chown -R postgres "$W"

PIDS=()
PGDATA=
SHM=
as_pg() { runuser -u postgres -- "$@"; }
stop_pid() {
  local pid=$1 keep=() p
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
cleanup() {
  local rc=$? p
  set +e
  trap - EXIT INT TERM
  [ -n "${SHM:-}" ] && rm -rf "$SHM"
  [ -n "$PGDATA" ] && [ -f "$PGDATA/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" stop -m immediate >/dev/null 2>&1
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  if [ "${KEEP:-0}" = 1 ]; then
    echo "work directory kept: $W" >&2
  elif [ -f "$OUT" ] && [ "$(dirname "$OUT")" = "$W" ]; then
    find "$W" -mindepth 1 -maxdepth 1 ! -name "$(basename "$OUT")" -exec rm -rf {} +
  else
    rm -rf "$W"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_bg() { # LOG CMD...: as postgres in the background; $BG_PID is the program's own pid
  local log=$1; shift
  setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql "$@" >"$log" 2>&1 &
  BG_PID=$!
  PIDS+=("$BG_PID")
}
wait_line() { # LOG PATTERN PID WHAT
  for _ in $(seq 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { cat "$1" >&2; die "$4 exited before it was ready"; }
    sleep 0.1
  done
  die "$4 not ready after 30 s (log: $1)"
}
free_port() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
}
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- receiver and primary
say "receiver, certificates"
as_pg "$W/bin/walship-receiver" certs --dir "$W/ws/certs" --server-name localhost >/dev/null
RPORT=$(free_port udp)
if [ "${STANDBY_TMPFS:-0}" = 1 ]; then
  SHM=$(mktemp -d /dev/shm/walship-partial-tps.XXXXXX)
  chmod 755 "$SHM"
  ARCH=$SHM
  say "archive_dir on tmpfs ($SHM): the standby's disk is not the primary's"
else
  ARCH=$W/ws/archive
  mkdir -p "$ARCH"
fi
chown postgres "$ARCH"
cat >"$W/ws/receiver.toml" <<EOT
listen = "127.0.0.1:$RPORT"
archive_dir = "$ARCH"
cert = "certs/server.pem"
key = "certs/server.key"
client_ca = "certs/ca.pem"
EOT
chown postgres "$W/ws/receiver.toml"
start_bg "$W/log/receiver.log" "$W/bin/walship-receiver" --config "$W/ws/receiver.toml" serve
RECV_PID=$BG_PID
wait_line "$W/log/receiver.log" listening "$RECV_PID" walship-receiver

PGDATA=$W/data
PORT=$(free_port tcp)
say "primary (scale $SCALE)"
as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust -N >/dev/null
cat >>"$PGDATA/postgresql.conf" <<EOT
listen_addresses = ''
unix_socket_directories = '$W/sock'
port = $PORT
archive_mode = on
archive_command = '$W/bin/walship-sender --config $W/ws/sender.toml push %p %f'
max_wal_size = 1GB
checkpoint_timeout = 5min
log_min_messages = error
EOT
for mode in off on; do
  cat >"$W/ws/sender-$mode.toml" <<EOT
receiver = "127.0.0.1:$RPORT"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/client.pem"
key = "certs/client.key"
socket = "$W/sock/daemon.sock"
pgdata = "$PGDATA"
conninfo = "host=$W/sock port=$PORT user=postgres dbname=postgres"
EOT
done
echo 'partial_interval = "200ms"' >>"$W/ws/sender-on.toml"
chown postgres "$W"/ws/*.toml
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$W/log/pg.log" -w start >/dev/null
as_pg "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
psql_q() { as_pg "$PGBIN/psql" -h "$W/sock" -p "$PORT" -XAtqc "$1" postgres; }
lsn_bytes() { psql_q "select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"; }

DAEMON_PID=
daemon_start() { # MODE; the archive_command's config is a symlink to the mode's
  ln -sfn "sender-$1.toml" "$W/ws/sender.toml"
  start_bg "$W/log/daemon-$1.log" "$W/bin/walship-sender" --config "$W/ws/sender-$1.toml" daemon
  DAEMON_PID=$BG_PID
  wait_line "$W/log/daemon-$1.log" listening "$DAEMON_PID" "walship-sender daemon ($1)"
}
daemon_stop() { stop_pid "$DAEMON_PID"; DAEMON_PID=; }

# ---------------------------------------------------------------- calibration
say "calibration: WAL bytes per pgbench transaction"
daemon_start off
psql_q "checkpoint" >/dev/null
b0=$(lsn_bytes)
as_pg "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -c "$CLIENTS" -j 2 -T 10 -n postgres >"$W/log/calib.log" 2>&1
b1=$(lsn_bytes)
tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$W/log/calib.log")
[ -n "$tx" ] && [ "$tx" -gt 0 ] || die "calibration pgbench failed (log: $W/log/calib.log)"
PER_TX=$(( (b1 - b0) / tx ))
RATE=$(( RATE_MBS * 1000000 / PER_TX ))
[ "$RATE" -ge 1 ] || RATE=1
say "about $PER_TX bytes of WAL per transaction: -R $RATE for $RATE_MBS MB/s"
daemon_stop

# ---------------------------------------------------------------- rounds
: >"$W/runs.tsv"   # mode kind round tps wal_bytes secs daemon_ticks receiver_ticks lat_ms
run() { # MODE KIND ROUND
  local mode=$1 kind=$2 r=$3 args=() b0 b1 d0 d1 r0 r1 t0 t1 tps lat
  [ "$kind" = rate ] && args=(-R "$RATE")
  psql_q "checkpoint" >/dev/null
  sync
  b0=$(lsn_bytes); d0=$(cpu_ticks "$DAEMON_PID"); r0=$(cpu_ticks "$RECV_PID"); t0=$EPOCHREALTIME
  as_pg "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -c "$CLIENTS" -j 2 -T "$SECS" -n "${args[@]}" postgres \
    >"$W/log/pgbench-$mode-$kind-$r.log" 2>&1 || die "pgbench failed ($mode $kind round $r)"
  t1=$EPOCHREALTIME; d1=$(cpu_ticks "$DAEMON_PID"); r1=$(cpu_ticks "$RECV_PID"); b1=$(lsn_bytes)
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$W/log/pgbench-$mode-$kind-$r.log" | head -n 1)
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' "$W/log/pgbench-$mode-$kind-$r.log" | head -n 1)
  echo "$mode $kind $r $tps $((b1 - b0)) $(python3 -c "print($t1 - $t0)") $((d1 - d0)) $((r1 - r0)) ${lat:-0}" >>"$W/runs.tsv"
}
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order=(off on); else order=(on off); fi
  for mode in "${order[@]}"; do
    say "round $r/$ROUNDS: partial_interval $mode"
    daemon_start "$mode"
    run "$mode" tps "$r"
    run "$mode" rate "$r"
    daemon_stop
  done
done
partials=$(ls "$ARCH" | grep -c "\.partial$" || true)
finished=$(ls "$ARCH" | grep -c '^[0-9A-F]\{24\}$' || true)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- report
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
python3 - "$W" "$OUT" <<PY
import os, statistics as st, sys
w, out = sys.argv[1], sys.argv[2]
TICK = $TICK
runs = [l.split() for l in open(f"{w}/runs.tsv") if l.strip()]
def col(mode, kind, f):
    return [f(r) for r in runs if r[0] == mode and r[1] == kind]
tps = lambda r: float(r[3])
mbs = lambda r: int(r[4]) / float(r[5]) / 1e6
dcpu = lambda r: int(r[6]) / TICK / float(r[5]) * 100
rcpu = lambda r: int(r[7]) / TICK / float(r[5]) * 100
lat = lambda r: float(r[8])
L = []
L.append(f"walship partial_tps: {os.popen('date -u +%Y-%m-%dT%H:%MZ').read().strip()}, CPU $CPU, {os.cpu_count()} cores; "
         f"PostgreSQL 15, pgbench scale $SCALE, -c $CLIENTS -j 2, $SECS s per run, $ROUNDS interleaved rounds (order alternates), "
         f"synchronous_commit on; daemon with pgdata + conninfo, with and without partial_interval = \"200ms\"; receiver on loopback, "
         f"archive_dir {'on tmpfs (STANDBY_TMPFS=1: the standby disk is not the primary disk)' if '${STANDBY_TMPFS:-0}' == '1' else 'on the primary disk'}.")
L.append(f"Machine load (/proc/loadavg 1/5/15 min): at the start $LOAD_START, at the end $LOAD_END. "
         f"Throttled runs: pgbench -R $RATE (calibrated at $PER_TX WAL bytes per transaction for $RATE_MBS MB/s).")
L.append("")
L.append("| run | metric | off (median) | on (median) | on / off | per-round values off ; on |")
L.append("|---|---|---|---|---|---|")
def row(kind, name, f, fmt, diff=False):
    a, b = col("off", kind, f), col("on", kind, f)
    if not a or not b: return
    ma, mb = st.median(a), st.median(b)
    rel = f"{mb - ma:+.2f} (on - off)" if diff else f"{mb / ma:.3f}"
    vals = " ".join(fmt.format(x) for x in a) + " ; " + " ".join(fmt.format(x) for x in b)
    L.append(f"| {kind} | {name} | {fmt.format(ma)} | {fmt.format(mb)} | {rel} | {vals} |")
row("tps", "tps", tps, "{:.0f}")
row("tps", "WAL MB/s", mbs, "{:.1f}")
row("tps", "daemon core-%", dcpu, "{:.2f}", True)
row("tps", "receiver core-%", rcpu, "{:.2f}", True)
row("rate", "tps", tps, "{:.0f}")
row("rate", "latency ms", lat, "{:.2f}")
row("rate", "WAL MB/s", mbs, "{:.1f}")
row("rate", "daemon core-%", dcpu, "{:.2f}", True)
row("rate", "receiver core-%", rcpu, "{:.2f}", True)
L.append("")
a, b = col("off", "tps", tps), col("on", "tps", tps)
if a and b:
    L.append(f"tps impact (unthrottled): on/off = {st.median(b) / st.median(a):.3f} (target >= 0.97).")
a, b = col("off", "rate", dcpu), col("on", "rate", dcpu)
if a and b:
    L.append(f"Daemon's extra CPU at ~{st.median(col('on', 'rate', mbs)):.1f} MB/s of WAL: {st.median(b) - st.median(a):+.2f} core-% "
             f"(on {st.median(b):.2f}, off {st.median(a):.2f}; target <= 1).")
L.append(f"Archive afterwards: $finished finished segments, $partials .partial file(s).")
text = "\n".join(L) + "\n"
open(out, "w").write(text)
print(text)
PY
echo "results written to $OUT" >&2
