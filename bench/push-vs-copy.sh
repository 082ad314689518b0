#!/usr/bin/env bash
# Benchmark: one `walship-sender push` of a real 16 MiB WAL segment on loopback (a fresh process
# and a new QUIC connection per segment, as PostgreSQL's archiver runs it) against the reference,
# a durable local copy (cp to a temp name, fsync, rename, fsync the directory).
# Interleaved rounds, medians and min-max: the disk is shared and noisy.
#
#   bash bench/push-vs-copy.sh [SEGMENTS] [ROUNDS]     (as root, PostgreSQL 15 server installed)
set -euo pipefail
SEGMENTS=${1:-12}
ROUNDS=${2:-3}
PGBIN=${WALSHIP_PG_BINDIR:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export PATH=$HOME/.cargo/bin:$PATH

[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL server binaries not found in $PGBIN: apt-get install postgresql-15" >&2; exit 1; }
echo "== building release binaries" >&2
(cd "$ROOT" && CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo build --release --bins -q)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

W=$(mktemp -d /tmp/walship-bench.XXXXXX)
chown postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
RECV_PID=
cleanup() {
  [ -n "$RECV_PID" ] && kill "$RECV_PID" 2>/dev/null || true
  as_pg "$PGBIN/pg_ctl" -D "$W/pg" stop -m immediate >/dev/null 2>&1 || true
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/bin" "$W/segs" "$W/copy"
cp "$BIN/walship-sender" "$BIN/walship-receiver" "$W/bin/"
chown -R postgres "$W"

echo "== making $SEGMENTS real segments with pgbench" >&2
as_pg "$PGBIN/initdb" -D "$W/pg" -A trust >/dev/null
cat >> "$W/pg/postgresql.conf" <<EOT
listen_addresses = ''
unix_socket_directories = '$W'
port = 5499
max_wal_size = 4GB
EOT
as_pg "$PGBIN/pg_ctl" -D "$W/pg" -l "$W/pg.log" start >/dev/null
as_pg "$PGBIN/pgbench" -h "$W" -p 5499 -i -s 10 postgres >/dev/null 2>&1
while [ "$(ls "$W/pg/pg_wal" | grep -cE '^[0-9A-F]{24}$')" -lt $((SEGMENTS + 2)) ]; do
  as_pg "$PGBIN/pgbench" -h "$W" -p 5499 -t 2000 postgres >/dev/null 2>&1
done
as_pg "$PGBIN/psql" -h "$W" -p 5499 -Atc "select pg_switch_wal()" postgres >/dev/null
ls "$W/pg/pg_wal" | grep -E '^[0-9A-F]{24}$' | head -n "$SEGMENTS" | while read -r s; do cp "$W/pg/pg_wal/$s" "$W/segs/$s"; done
as_pg "$PGBIN/pg_ctl" -D "$W/pg" stop -m fast >/dev/null
chown -R postgres "$W"

as_pg "$W/bin/walship-receiver" certs --dir "$W/certs" --server-name localhost >/dev/null 2>&1
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/receiver.toml" <<EOT
listen = "127.0.0.1:$PORT"
archive_dir = "archive"
cert = "certs/server.pem"
key = "certs/server.key"
client_ca = "certs/ca.pem"
EOT
cat > "$W/sender.toml" <<EOT
receiver = "127.0.0.1:$PORT"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/client.pem"
key = "certs/client.key"
EOT
sed 's/^key = .*/&\ncompression = "none"/' "$W/sender.toml" > "$W/sender-plain.toml"
chown -R postgres "$W"
runuser -u postgres -- "$W/bin/walship-receiver" --config "$W/receiver.toml" serve 2>"$W/receiver.log" &
RECV_PID=$!
for _ in $(seq 50); do grep -q listening "$W/receiver.log" && break; sleep 0.1; done

now() { date +%s%N; }
durable_copy() { # the reference: what a careful archive_command does locally
  cp "$1" "$W/copy/.tmp.$2" && sync "$W/copy/.tmp.$2" && mv "$W/copy/.tmp.$2" "$W/copy/$2" && sync "$W/copy"
}
: > "$W/copy.ms"; : > "$W/push.ms"; : > "$W/plain.ms"
cd "$W"
for r in $(seq "$ROUNDS"); do
  for f in segs/*; do
    s=$(basename "$f")
    t0=$(now); durable_copy "$f" "$s"; t1=$(now)
    echo $(( (t1 - t0) / 1000 )) >> "$W/copy.ms"
    t0=$(now); as_pg "$W/bin/walship-sender" --config "$W/sender.toml" push "$f" "$s"; t1=$(now)
    echo $(( (t1 - t0) / 1000 )) >> "$W/push.ms"
    cmp -s "$f" "$W/archive/$s" || { echo "MISMATCH $s" >&2; exit 1; }
    rm -f "$W/archive/$s"
    t0=$(now); as_pg "$W/bin/walship-sender" --config "$W/sender-plain.toml" push "$f" "$s"; t1=$(now)
    echo $(( (t1 - t0) / 1000 )) >> "$W/plain.ms"
    cmp -s "$f" "$W/archive/$s" || { echo "MISMATCH $s" >&2; exit 1; }
    rm -f "$W/copy/$s" "$W/archive/$s"
  done
done
# Bytes on the wire with the default compression (the sender logs them at debug level).
: > "$W/wire.txt"
for f in segs/*; do
  s=$(basename "$f")
  RUST_LOG=walship_sender=debug as_pg "$W/bin/walship-sender" --config "$W/sender.toml" push "$f" "$s" 2>&1 |
    sed -n 's/.*wire=\([0-9]*\) plain=\([0-9]*\).*/\1 \2/p' >> "$W/wire.txt"
  rm -f "$W/archive/$s"
done
# runuser itself costs a fork+exec+PAM session: measure it to report push without it.
: > "$W/runuser.ms"
for _ in $(seq 20); do t0=$(now); as_pg true; t1=$(now); echo $(( (t1 - t0) / 1000 )) >> "$W/runuser.ms"; done

python3 - "$W" <<'PY'
import statistics, sys
w = sys.argv[1]
def load(n): return [int(x) / 1000 for x in open(f"{w}/{n}.ms")]
copy, push, plain, ru = load("copy"), load("push"), load("plain"), load("runuser")
mc, mp, mpl, mr = statistics.median(copy), statistics.median(push), statistics.median(plain), statistics.median(ru)
wire = [tuple(map(int, l.split())) for l in open(f"{w}/wire.txt") if l.strip()]
mb = 16.777216
print(f"{'':34} {'median ms':>10} {'min':>8} {'max':>8} {'MB/s':>8} {'x copy':>7}")
print(f"{'durable local copy (reference)':34} {mc:10.1f} {min(copy):8.1f} {max(copy):8.1f} {mb/mc*1000:8.0f} {1:7.2f}")
print(f"{'walship push, zstd-1 (default)':34} {mp:10.1f} {min(push):8.1f} {max(push):8.1f} {mb/mp*1000:8.0f} {mp/mc:7.2f}")
print(f"{'walship push, compression=none':34} {mpl:10.1f} {min(plain):8.1f} {max(plain):8.1f} {mb/mpl*1000:8.0f} {mpl/mc:7.2f}")
print(f"{'  of which runuser overhead':34} {mr:10.1f}")
if wire:
    sw, sp = sum(a for a, _ in wire), sum(b for _, b in wire)
    print(f"bytes on the wire (zstd-1): {sw} of {sp} ({sw / sp:.3f}, {sp / sw:.1f}x smaller)")
print(f"samples: {len(copy)} each, 16 MiB real pgbench segments, loopback, fresh process per push")
PY
