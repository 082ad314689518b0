#!/usr/bin/env bash
# A direct push with the sender and the receiver on cores of their own (issue 13, item 5).
#
#   bash bench/pinned.sh [SEGMENTS]       as root; default 24 segments of 16 MiB
#
#   env: WALSHIP_BIN_DIR (default target/release, built if missing)  WALSHIP_PG_BINDIR  KEEP=1
#
# On one 2-core machine a push's stages (read, compress, encrypt | decrypt, decode, BLAKE3,
# write, fsync) add up on the same two cores the reference copy has to itself. Here the sender
# and its copy reference run on CPU 0 (`taskset -c 0`) and the receiver on CPU 1, the shape of two
# one-core hosts, beside the same commands unpinned. A throwaway primary (archive_command = '')
# makes the segments with pgbench; each method ships every segment once (its own receiver and
# archive_dir, or a fresh directory for the copies), methods interleaved per segment in a
# rotating order, a `sync` before each (outside the timing), timed around the command alone (no
# wrapper). Medians, and each row against the copy of the same placement.
set -euo pipefail

SEGMENTS=${1:-24}
cd "$(dirname "$0")/.."
ROOT=$PWD
[ "$(id -u)" = 0 ] || { echo "run as root (PostgreSQL runs as postgres)" >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs" >&2; exit 2; }
PGBIN=${WALSHIP_PG_BINDIR:-/usr/lib/postgresql/15/bin}
BIN=${WALSHIP_BIN_DIR:-$ROOT/target/release}
if [ ! -x "$BIN/walship-sender" ] || [ ! -x "$BIN/walship-receiver" ]; then
    cargo build --release --bins >&2
fi

W=$(mktemp -d /tmp/walship-pinned.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    runuser -u postgres -- "$W/pgbin/pg_ctl" -D "$W/pg" -m immediate stop >/dev/null 2>&1 || true
    wait 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] && echo "kept $W" >&2 || rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_us() { echo $(( $(date +%s%N) / 1000 )); }

mkdir -p "$W/bin" "$W/pgbin"
cp "$BIN/walship-sender" "$BIN/walship-receiver" "$W/bin/"
cp -r "$PGBIN"/. "$W/pgbin/"
chown -R postgres "$W/pgbin"

# The segments: pgbench -i on a primary that archives nothing (they stay in pg_wal).
PGPORT=$(free_port)
mkdir "$W/pg"
chown postgres "$W/pg"
chmod 700 "$W/pg"
runuser -u postgres -- "$W/pgbin/initdb" -D "$W/pg" -U postgres -A trust >/dev/null
# PostgreSQL's socket and log in a directory of its own, not a world-writable work directory.
mkdir "$W/pgrun"
chown postgres "$W/pgrun"
cat >>"$W/pg/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$W/pgrun'
port = $PGPORT
wal_level = replica
archive_mode = on
archive_command = ''
max_wal_size = 8GB
EOF
runuser -u postgres -- "$W/pgbin/pg_ctl" -D "$W/pg" -l "$W/pgrun/pg.log" -w start >/dev/null
# About half of them from pgbench -i (compress ~10x), half from TPC-B transactions (~3-6x), as
# in compare.sh's corpus.
ready() { ls "$W/pg/pg_wal/archive_status" | grep -cE '^[0-9A-F]{24}\.ready$' || true; }
runuser -u postgres -- "$W/pgbin/pgbench" -h "$W/pgrun" -p "$PGPORT" -U postgres -i -q -s "$(( SEGMENTS / 2 + 1 ))" postgres >/dev/null 2>&1
while [ "$(ready)" -lt $(( SEGMENTS + 3 )) ]; do
    runuser -u postgres -- "$W/pgbin/pgbench" -h "$W/pgrun" -p "$PGPORT" -U postgres -c 4 -j 2 -T 5 postgres >/dev/null 2>&1
done
# The first segments (initdb's) are left out.
mapfile -t SEGS < <(ls "$W/pg/pg_wal/archive_status" | sed -n 's/\.ready$//p' | grep -E '^[0-9A-F]{24}$' | sort | sed 1,2d | head -n "$SEGMENTS")
[ "${#SEGS[@]}" -ge 4 ] || { echo "only ${#SEGS[@]} segments made" >&2; exit 1; }

"$W/bin/walship-receiver" certs --dir "$W/ca" --server-name localhost >/dev/null 2>&1

# method -> command template (%p, %f); receivers for the push methods.
declare -A RPID
METHODS=(copy copy0 lz4 lz4p zstd zstdp none nonep)
receiver() { # name compression threads cpu-or-empty
    local m=$1 d="$W/r-$1" port
    port=$(free_port)
    mkdir -p "$d/archive"
    chmod 700 "$d/archive"
    cat >"$d/receiver.toml" <<EOF
listen = "127.0.0.1:$port"
archive_dir = "archive"
cert = "$W/ca/server.pem"
key = "$W/ca/server.key"
client_ca = "$W/ca/ca.pem"
EOF
    cat >"$d/sender.toml" <<EOF
receiver = "127.0.0.1:$port"
server_name = "localhost"
ca = "$W/ca/ca.pem"
cert = "$W/ca/client.pem"
key = "$W/ca/client.key"
compression = "$2"
compression_threads = $3
EOF
    if [ -n "$4" ]; then
        taskset -c "$4" "$W/bin/walship-receiver" --config "$d/receiver.toml" serve >"$d/log" 2>&1 &
    else
        "$W/bin/walship-receiver" --config "$d/receiver.toml" serve >"$d/log" 2>&1 &
    fi
    PIDS+=($!)
    RPID[$m]=$!
    for _ in $(seq 100); do grep -q listening "$d/log" && return; sleep 0.1; done
    echo "receiver $m did not start:" >&2; cat "$d/log" >&2; exit 1
}
receiver lz4 lz4 1 ""
receiver lz4p lz4 1 1
receiver zstd zstd 2 ""
receiver zstdp zstd 1 1
receiver none none 1 ""
receiver nonep none 1 1
mkdir -p "$W/c-copy" "$W/c-copy0"
# CPU time (ns) the receiver of method $1 has used so far, all threads (0 for the copies).
rcpu() {
    local p=${RPID[$1]:-}
    [ -n "$p" ] || { echo 0; return; }
    cat /proc/"$p"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {print s + 0}'
}
copy_cmd() { echo "cp $1 $2/.tmp.$3 && sync $2/.tmp.$3 && mv $2/.tmp.$3 $2/$3 && sync $2"; }

: >"$W/times.tsv"
i=0
for seg in "${SEGS[@]}"; do
    p="$W/pg/pg_wal/$seg"
    n=${#METHODS[@]}
    for k in $(seq 0 $((n - 1))); do
        m=${METHODS[$(( (i + k) % n ))]}
        case $m in
            copy)  run=(sh -c "$(copy_cmd "$p" "$W/c-copy" "$seg")") ;;
            copy0) run=(taskset -c 0 sh -c "$(copy_cmd "$p" "$W/c-copy0" "$seg")") ;;
            lz4|zstd|none) run=("$W/bin/walship-sender" --config "$W/r-$m/sender.toml" push "$p" "$seg") ;;
            lz4p|zstdp|nonep) run=(taskset -c 0 "$W/bin/walship-sender" --config "$W/r-$m/sender.toml" push "$p" "$seg") ;;
        esac
        sync
        c0=$(rcpu "$m")
        t0=$(now_us)
        "${run[@]}" >/dev/null 2>"$W/last.err" || { echo "$m $seg failed:" >&2; cat "$W/last.err" >&2; exit 1; }
        t1=$(now_us)
        c1=$(rcpu "$m")
        printf '%s\t%s\t%s\t%s\n' "$m" "$seg" $((t1 - t0)) $((c1 - c0)) >>"$W/times.tsv"
    done
    i=$((i + 1))
done
# Every shipped file is the segment, byte for byte.
for seg in "${SEGS[@]}"; do
    for d in c-copy c-copy0 r-lz4/archive r-lz4p/archive r-zstd/archive r-zstdp/archive r-none/archive r-nonep/archive; do
        cmp -s "$W/pg/pg_wal/$seg" "$W/$d/$seg" || { echo "$d/$seg differs from pg_wal" >&2; exit 1; }
    done
done

python3 - "$W/times.tsv" "${#SEGS[@]}" <<'EOF'
import statistics as st, sys, os
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
t, cpu = {}, {}
for m, _, us, ns in rows:
    t.setdefault(m, []).append(int(us) / 1000)
    cpu.setdefault(m, []).append(int(ns) / 1e6)
med = {m: st.median(v) for m, v in t.items()}
names = {
    "copy": ("1. durable local copy (cp, fsync, rename, fsync dir)", "any", "copy"),
    "copy0": ("1p. the same copy on CPU 0 only", "0", "copy0"),
    "lz4": ("5l. walship push direct, lz4", "any / any", "copy"),
    "lz4p": ("5lp. the same, push on CPU 0, receiver on CPU 1", "0 / 1", "copy0"),
    "zstd": ("5. walship push direct, zstd-1, 2 threads", "any / any", "copy"),
    "zstdp": ("5p. push zstd-1 one thread on CPU 0, receiver on CPU 1", "0 / 1", "copy0"),
    "none": ("5n. walship push direct, compression = none", "any / any", "copy"),
    "nonep": ("5np. the same, push on CPU 0, receiver on CPU 1", "0 / 1", "copy0"),
}
print(f"walship pinned: {os.uname().nodename}, {os.cpu_count()} CPUs, load at the end {open('/proc/loadavg').read().split()[0]}; {sys.argv[2]} segments of 16 MiB, each method once per segment, interleaved; ms per segment\n")
print("| method | CPUs (sender / receiver) | median | min | max | ratio to the copy on the same CPUs | receiver CPU ms (median) |")
print("|---|---|---|---|---|---|---|")
for m in ["copy", "copy0", "lz4", "lz4p", "zstd", "zstdp", "none", "nonep"]:
    n, cpus, ref = names[m]
    v = t[m]
    rc = f"{st.median(cpu[m]):.1f}" if m.startswith(("lz4", "zstd", "none")) else ""
    print(f"| {n} | {cpus} | {med[m]:.1f} | {min(v):.1f} | {max(v):.1f} | {med[m] / med[ref]:.2f} | {rc} |")
EOF
