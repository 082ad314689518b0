#!/usr/bin/env bash
# walship against the usual ways of archiving WAL (issue #4), on real pgbench WAL, on this machine.
#
#   bash bench/compare.sh [SEGMENTS] [ROUNDS]      as root; defaults 48 segments of 16 MiB, 3 rounds
#   QUICK=1 bash bench/compare.sh                  smoke run: 16 segments, 1 round, 20 s load test
#
#   env: SKIP_LOAD=1  SKIP_TBF=1  LOAD_SECS=60  TBF_SEGMENTS=16  RESTORE_RUNS=25  KEEP=1
#        OUT=FILE (default $W/results.md; kept even without KEEP)  WALSHIP_PG_BINDIR
#        CARGO_TARGET_DIR (default /tmp/walship-bench-target)
#
# Run by hand, never in CI: it installs packages (pgbackrest rsync openssh-server openssh-client
# iproute2 time) if missing, starts its own sshd, pgBackRest TLS servers, PostgreSQL instances,
# walship receivers and daemons on free loopback ports, and a network namespace for the 100 Mbit/s
# link; everything is stopped on exit and the work directory /tmp/walship-compare.XXXXXX removed
# (KEEP=1 keeps it with every log). The full run takes about 10-15 minutes on 2 cores.
#
# Part A, one segment at a time. A throwaway primary (archive_mode = on, archive_command = '', so
# its completed segments stay in pg_wal with real archive_status/*.ready files) makes SEGMENTS
# segments with pgbench. Every method is then run as its archive_command string, the way the
# archiver runs it: `sh -c CMD` with %p = pg_wal/NAME and %f = NAME, from the data directory, a
# fresh process per segment. All methods go through the same wrapper, `runuser -u postgres --
# /usr/bin/time -f %M sh -c CMD`, so its cost (a few ms: runuser's PAM session, time's fork) is in
# every row alike; it is measured and printed. Rounds are interleaved (round r ships every segment
# with every method before round r+1) and the method order rotates from segment to segment, so
# disk noise hits every method alike. A `sync` before every timed command (outside the timing)
# flushes what the previous one left dirty (the non-fsyncing methods leave 16 MiB each), so no
# method pays for another's writeback; the backlog rows, the parallel pushes, the 100 Mbit/s
# rounds and the load runs likewise start from a flushed disk.
#
# Fairness: every round ships into destinations that do not hold the segments yet, because a
# duplicate is a shortcut for pgBackRest ("already exists ... same checksum") and walship ("already
# stored"): a fresh directory per round for the copy and rsync methods; a new pgBackRest stanza per
# round and per variant (stanza-create against the running primary, same repository, same TLS
# server); for walship a new receiver with a new archive_dir per round and per method (and a new
# daemon). The segments come from the primary the stanzas are created on (pgBackRest checks the
# system identifier). Every shipped file is checked afterwards (cmp, or present in the repository),
# outside the timed region.
#
# Methods of the look-ahead kind only make sense against real .ready files: pgBackRest async
# (archive-async=y, process-max=2) reads ahead through archive_status, and so does the walship
# daemon with `pgdata`. They are measured in two ways: "backlog" rows push all SEGMENTS in order
# back to back with a fresh stanza / receiver+daemon (all .ready files present from the start, as
# after an outage or a burst), time divided by SEGMENTS; and the load test, a real archiver under
# pgbench. Row 7 (interleaved) times `push` of a segment the look-ahead daemon already shipped:
# the cost the archiver sees when the daemon is ahead, i.e. the hand-off over the Unix socket (the
# daemon answers at once only for exactly the file it shipped: same inode, size, mtime, ctime).
#
# Bytes on the wire: the difference of lo's byte counter (/proc/net/dev) around each command, so
# both directions and all headers (TCP/UDP, IP, TLS, QUIC, SSH); the machine is otherwise idle on
# lo. For row 7 the bytes of the look-ahead shipping before the pushes, per segment.
# Peak RSS: `/usr/bin/time -f %M` (the largest process of the command's tree) for the short-lived
# commands; VmHWM of walship-receiver and of the daemon, read before they stop; %M of the whole
# process tree for sshd (with its per-connection sshd and rsync) and the pgBackRest server.
set -euo pipefail

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then d_seg=16 d_rounds=1 d_load=20 d_tbf=4 d_restore=10
else d_seg=48 d_rounds=3 d_load=60 d_tbf=16 d_restore=25; fi
SEGMENTS=${1:-$d_seg}
ROUNDS=${2:-$d_rounds}
LOAD_SECS=${LOAD_SECS:-$d_load}
TBF_SEGMENTS=${TBF_SEGMENTS:-$d_tbf}
RESTORE_RUNS=${RESTORE_RUNS:-$d_restore}
SKIP_LOAD=${SKIP_LOAD:-0}
SKIP_TBF=${SKIP_TBF:-0}
PGBIN=${WALSHIP_PG_BINDIR:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-/tmp/walship-bench-target}
export PATH=$HOME/.cargo/bin:$PATH
export LC_ALL=C

say() { echo "== $*" >&2; }
die() { echo "compare.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it installs packages, runs sshd and makes a network namespace)"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries not found in $PGBIN: apt-get install postgresql-15"
[ "$SEGMENTS" -ge 4 ] && [ "$ROUNDS" -ge 1 ] || die "need SEGMENTS >= 4 and ROUNDS >= 1"
[ "$TBF_SEGMENTS" -le "$SEGMENTS" ] || TBF_SEGMENTS=$SEGMENTS

# ---------------------------------------------------------------- prerequisites, idempotent
need=()
command -v pgbackrest >/dev/null || need+=(pgbackrest)
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v ip >/dev/null && command -v tc >/dev/null || need+=(iproute2)
[ -x /usr/bin/time ] || need+=(time)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

say "building release binaries (CARGO_TARGET_DIR=$TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --bins -q)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- work dir, process bookkeeping
W=$(mktemp -d /tmp/walship-compare.XXXXXX)
chmod 755 "$W"
OUT=${OUT:-$W/results.md}
mkdir -p "$W/bin" "$W/log" "$W/rss" "$W/sock" "$W/data"
cp "$TARGET/release/walship-sender" "$TARGET/release/walship-receiver" "$W/bin/"
chown -R postgres "$W"

PIDS=()       # every background process started here (the program's own pid, or /usr/bin/time's)
PGDATAS=()    # every PostgreSQL data directory started here
NS= VH=       # network namespace and host-side veth of the link test
as_pg() { runuser -u postgres -- "$@"; }
forget_pid() { local p keep=(); for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; PIDS=("${keep[@]}"); }
# Stop one process we started: children first (a /usr/bin/time wrapper then writes %M and exits by
# itself), SIGTERM, up to 10 s, then SIGKILL.
stop_pid() {
  local pid=$1 c kids
  kids=$(pgrep -P "$pid" || true)
  if [ -n "$kids" ]; then for c in $kids; do kill -TERM "$c" 2>/dev/null || true; done
  else kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true; sleep 1
    for c in $kids; do kill -KILL "$c" 2>/dev/null || true; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}
cleanup() {
  local rc=$? p d
  set +e
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  for d in "${PGDATAS[@]}"; do
    [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" stop -m immediate >/dev/null 2>&1
  done
  [ -n "$VH" ] && ip link del "$VH" 2>/dev/null
  [ -n "$NS" ] && ip netns del "$NS" 2>/dev/null
  # pgBackRest's async workers detach from archive-push; they end when their queue is empty, or
  # here: only processes whose command line names this work directory, by pid.
  for _ in $(seq 50); do pgrep -f -- "$W/" >/dev/null || break; sleep 0.2; done
  for p in $(pgrep -f -- "$W/"); do [ "$p" != $$ ] && kill -KILL "$p" 2>/dev/null; done
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

NSEXEC=    # when set, start_bg runs the program inside this network namespace
# Start a program as postgres in the background; setpriv and env exec, so $BG_PID is its own pid.
start_bg() {
  local log=$1; shift
  if [ -n "$NSEXEC" ]; then
    ip netns exec "$NSEXEC" setpriv --reuid=postgres --regid=postgres --init-groups \
      env HOME=/var/lib/postgresql "$@" >"$log" 2>&1 &
  else
    setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql "$@" >"$log" 2>&1 &
  fi
  BG_PID=$!
  PIDS+=("$BG_PID")
}
wait_line() { # LOG PATTERN PID WHAT
  for _ in $(seq 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { cat "$1" >&2; die "$4 exited before it was ready (log: $1)"; }
    sleep 0.1
  done
  cat "$1" >&2; die "$4 not ready after 30 s (log: $1)"
}
free_port() { # tcp|udp
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
}
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
LO=0
lo_tx() { # bytes sent on lo so far (on lo every byte is counted once as sent, once as received)
  local l
  while read -r l; do
    case $l in lo:*) set -- ${l#lo:}; LO=$9; return ;; esac
  done </proc/net/dev
}
us_now() { local t=$EPOCHREALTIME; echo "${t//[.,]/}"; }

# ---------------------------------------------------------------- the primary and its segments
pg_start() { # DIR PORT [extra conf lines...]: initdb and start a throwaway primary
  local d=$1 port=$2; shift 2
  as_pg "$PGBIN/initdb" -D "$d" -A trust -N >/dev/null
  {
    echo "listen_addresses = ''"
    echo "unix_socket_directories = '$W/sock'"
    echo "port = $port"
    printf '%s\n' "$@"
  } >>"$d/postgresql.conf"
  PGDATAS+=("$d")
  as_pg "$PGBIN/pg_ctl" -D "$d" -l "$d.log" -w start >/dev/null
}
pg_stop() { as_pg "$PGBIN/pg_ctl" -D "$1" -w stop -m fast >/dev/null; }
psql_q() { as_pg "$PGBIN/psql" -h "$W/sock" -p "$1" -XAtqc "$2" postgres; }
n_ready() { local n=0 f; for f in "$1"/pg_wal/archive_status/*.ready; do [ -e "$f" ] && n=$((n + 1)); done; echo $n; }

A=$W/data/a
PA=$(free_port tcp)
say "primary: making $SEGMENTS real segments with pgbench (archive_mode = on, nothing archives them)"
# Frequent checkpoints (so full-page images, as on a busy primary) make WAL quickly; segments
# that are not archived are never removed, whatever max_wal_size says.
pg_start "$A" "$PA" "archive_mode = on" "archive_command = ''" "max_wal_size = 128MB" \
  "checkpoint_timeout = 30s" "log_min_messages = error"
as_pg "$PGBIN/pgbench" -h "$W/sock" -p "$PA" -i -s 10 -q postgres >/dev/null 2>&1
while [ "$(n_ready "$A")" -lt $((SEGMENTS + 1)) ]; do
  as_pg "$PGBIN/pgbench" -h "$W/sock" -p "$PA" -c 8 -j 2 -T 5 -n postgres >/dev/null 2>&1
done
psql_q "$PA" "select pg_switch_wal()" >/dev/null
mapfile -t SEGS < <(cd "$A/pg_wal/archive_status" && ls | sed -n 's/^\([0-9A-F]\{24\}\)\.ready$/\1/p' | sort | head -n "$SEGMENTS")
# Only our SEGMENTS keep a .ready: the look-ahead methods then see exactly the same backlog.
declare -A KEEP_READY
for s in "${SEGS[@]}"; do KEEP_READY[$s]=1; done
# Again before every look-ahead run: the running primary finishes a segment now and then (each
# pgBackRest stanza-create switches WAL), and those must not join one method's backlog only.
only_our_ready() {
  local f s
  for f in "$A"/pg_wal/archive_status/*.ready; do
    [ -e "$f" ] || continue
    s=$(basename "$f" .ready)
    [ -n "${KEEP_READY[$s]:-}" ] || mv "$f" "${f%.ready}.done"
  done
}
only_our_ready
# pgBackRest's async worker outlives archive-push: once the foreground pushes of a backlog row
# have returned it may still be shipping other .ready files. Let it finish before the next row
# so that it does not take the CPU from whatever runs next.
wait_pgbr_async() {
  for _ in $(seq 1200); do pgrep -f -- "archive-push:async" >/dev/null || return 0; sleep 0.1; done
  die "pgBackRest's async worker still runs 120 s after its backlog row"
}
for s in "${SEGS[@]}"; do [ "$(stat -c %s "$A/pg_wal/$s")" = 16777216 ] || die "segment $s is not 16 MiB"; done
N=${#SEGS[@]}
SYSID=$(as_pg "$PGBIN/pg_controldata" "$A" | sed -n 's/^Database system identifier: *//p')
say "$N segments ${SEGS[0]} .. ${SEGS[N-1]} (system identifier $SYSID)"

# ---------------------------------------------------------------- sshd for rsync
say "sshd on loopback for rsync"
mkdir -p "$W/ssh" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/id"
cp "$W/ssh/id.pub" "$W/ssh/authorized_keys"
chown postgres "$W/ssh/id" "$W/ssh/id.pub" "$W/ssh/authorized_keys"
SSH_PORT=$(free_port tcp)
cat >"$W/ssh/sshd_config" <<EOT
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $W/ssh/host_key
PidFile none
AuthorizedKeysFile $W/ssh/authorized_keys
AllowUsers postgres
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# PAM, because Debian's postgres account has a locked password ("!"), which sshd without PAM
# takes for a locked account even for key logins.
UsePAM yes
PrintMotd no
LogLevel ERROR
EOT
/usr/bin/time -f %M -o "$W/rss/sshd" /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config" >"$W/log/sshd.log" 2>&1 &
SSHD_PID=$!
PIDS+=("$SSHD_PID")
SSH_CMD="ssh -p $SSH_PORT -i $W/ssh/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
for i in $(seq 50); do
  as_pg $SSH_CMD postgres@127.0.0.1 true 2>/dev/null && break
  [ "$i" = 50 ] && { cat "$W/log/sshd.log" >&2; as_pg $SSH_CMD postgres@127.0.0.1 true; die "ssh to the bench sshd failed"; }
  sleep 0.2
done
: >"$W/ssh.tsv"   # a bare `ssh true`: connection, key exchange, auth, PAM session
RSYNC_FSYNC=0
rsync --help >"$W/log/rsync-help.txt" 2>&1 || true
grep -q -- '--fsync' "$W/log/rsync-help.txt" && RSYNC_FSYNC=1

# ---------------------------------------------------------------- pgBackRest TLS repository
say "pgBackRest server (TLS) on loopback"
P=$W/pgbr
mkdir -p "$P/certs" "$P/repo" "$P/repo-tbf" "$P/log" "$P/lock" "$P/spool"
(
  cd "$P/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3 -subj /CN=walship-bench-ca
  openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost
  # pgBackRest 2.45 matches the host name against DNS names only: the IPs go in as DNS names too.
  printf 'subjectAltName=DNS:localhost,DNS:127.0.0.1,DNS:10.99.0.2,IP:127.0.0.1,IP:10.99.0.2\n' >san.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 3 -extfile san.ext
  openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=pgbr-client
  openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 3
  chmod 600 ./*.key
) >/dev/null 2>&1
pgbr_server_conf() { # FILE ADDRESS PORT REPO
  cat >"$1" <<EOT
[global]
repo1-path=$4
tls-server-address=$2
tls-server-port=$3
tls-server-cert-file=$P/certs/server.pem
tls-server-key-file=$P/certs/server.key
tls-server-ca-file=$P/certs/ca.pem
tls-server-auth=pgbr-client=*
log-path=$P/log
lock-path=$P/lock
EOT
}
pgbr_client_conf() { # FILE HOST PORT REPO: the primary's side; everything else pgBackRest's defaults
  cat >"$1" <<EOT
[global]
repo1-host=$2
repo1-host-type=tls
repo1-host-port=$3
repo1-host-cert-file=$P/certs/client.pem
repo1-host-key-file=$P/certs/client.key
repo1-host-ca-file=$P/certs/ca.pem
repo1-path=$4
log-path=$P/log
lock-path=$P/lock
spool-path=$P/spool
EOT
}
PGBR_PORT=$(free_port tcp)
pgbr_server_conf "$P/server.conf" 127.0.0.1 "$PGBR_PORT" "$P/repo"
pgbr_client_conf "$P/client.conf" 127.0.0.1 "$PGBR_PORT" "$P/repo"
printf '[global]\nrepo1-path=%s\nlog-path=%s\nlock-path=%s\n' "$P/repo" "$P/log" "$P/lock" >"$P/local.conf"
# Row 4l: archive-push straight into a repository on this machine (no server, no network at
# all), zst level 1: pgBackRest's fastest durable archiving, the reference of issue 13.
mkdir -p "$P/repo-local"
printf '[global]\nrepo1-path=%s\nlog-path=%s\nlock-path=%s\nspool-path=%s\n' "$P/repo-local" "$P/log" "$P/lock" "$P/spool" >"$P/localzst.conf"
chown -R postgres "$P" "$W/ssh/id"
start_bg "$W/log/pgbr-server.log" /usr/bin/time -f %M -o "$W/rss/pgbr-server" \
  pgbackrest --config="$P/server.conf" server
PGBR_PID=$BG_PID
# A stanza: created locally on the same repository (the server serves that directory), against
# the running primary DATA/PORT; the primary's side gets a section with pg1-path and the options.
stanza() { # NAME DATA PORT CLIENTCONF REPO [option=value...]
  local name=$1 data=$2 port=$3 conf=$4 repo=$5; shift 5
  { echo "[$name]"; echo "pg1-path=$data"; printf '%s\n' "$@"; } >>"$conf"
  as_pg pgbackrest --config="$P/local.conf" --repo1-path="$repo" --stanza="$name" --pg1-path="$data" \
    --pg1-socket-path="$W/sock" --pg1-port="$port" --log-level-console=error stanza-create \
    >>"$W/log/stanza-create.log" 2>&1 || { cat "$W/log/stanza-create.log" >&2; die "stanza-create $name failed"; }
}
for _ in $(seq 50); do as_pg python3 -c "import socket; socket.create_connection(('127.0.0.1', $PGBR_PORT))" 2>/dev/null && break; sleep 0.1; done

# ---------------------------------------------------------------- walship
say "walship certificates"
mkdir -p "$W/ws"
chown postgres "$W/ws"
as_pg "$W/bin/walship-receiver" certs --dir "$W/ws/certs" --server-name localhost >/dev/null
HAVE_DAEMON=0
"$W/bin/walship-sender" daemon --help >/dev/null 2>&1 && HAVE_DAEMON=1
[ "$HAVE_DAEMON" = 1 ] || say "this walship-sender has no daemon: rows 6, 7 and the daemon's load test are left out"
declare -A RECV_PID
# A receiver NAME with a fresh archive_dir, listening on ADDR (loopback unless given); writes
# ws/recv-NAME.toml and ws/send-NAME.toml (the sender's config for it; extra lines appended).
ws_receiver() { # NAME [ADDR PORT]
  local name=$1 addr=${2:-127.0.0.1} port=${3:-$(free_port udp)}
  mkdir -p "$W/ws/archive-$name"
  chown postgres "$W/ws/archive-$name"
  cat >"$W/ws/recv-$name.toml" <<EOT
listen = "$addr:$port"
archive_dir = "archive-$name"
cert = "certs/server.pem"
key = "certs/server.key"
client_ca = "certs/ca.pem"
EOT
  cat >"$W/ws/send-$name.toml" <<EOT
receiver = "$addr:$port"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/client.pem"
key = "certs/client.key"
EOT
  chown postgres "$W/ws/recv-$name.toml" "$W/ws/send-$name.toml"
  start_bg "$W/log/recv-$name.log" "$W/bin/walship-receiver" --config "$W/ws/recv-$name.toml" serve
  RECV_PID[$name]=$BG_PID
  wait_line "$W/log/recv-$name.log" listening "$BG_PID" "walship-receiver $name"
}
# Stop PID, first recording its VmHWM (kB) as "NAME kB" in FILE.
stop_recording_rss() { # PID NAME FILE
  echo "$2 $(hwm_kb "$1")" >>"$3"
  stop_pid "$1"
}
ws_receiver_stop() { stop_recording_rss "${RECV_PID[$1]}" "$1" "$W/rss/receivers"; }
declare -A DAEMON_PID
# The sender daemon for receiver NAME: socket, and with PGDATA look-ahead over its .ready files.
ws_daemon() { # NAME [PGDATA]
  local name=$1
  { echo "socket = \"$W/sock/$name.sock\""
    if [ -n "${2:-}" ]; then echo "pgdata = \"$2\""; echo "lookahead = 4"; fi
  } >>"$W/ws/send-$name.toml"
  start_bg "$W/log/daemon-$name.log" "$W/bin/walship-sender" --config "$W/ws/send-$name.toml" daemon
  DAEMON_PID[$name]=$BG_PID
  wait_line "$W/log/daemon-$name.log" listening "$BG_PID" "walship-sender daemon $name"
}
ws_daemon_stop() { stop_recording_rss "${DAEMON_PID[$1]}" "$1" "$W/rss/daemons"; }
# The daemon NAME, then its receiver.
ws_both_stop() { ws_daemon_stop "$1"; ws_receiver_stop "$1"; }

# ---------------------------------------------------------------- the methods
# archive_command of METHOD for ROUND, with %p and %f as PostgreSQL substitutes them.
method_cmd() {
  local m=$1 r=$2 d=$W/r$2/$1
  case $m in
    copy)   echo "cp %p $d/.tmp.%f && sync $d/.tmp.%f && mv $d/.tmp.%f $d/%f && sync $d" ;;
    seed)   echo "test ! -f $d/%f && cp %p $d/%f" ;;
    rsync)  echo "rsync -a -e \"$SSH_CMD\" %p postgres@127.0.0.1:$d/%f" ;;
    rsyncf) echo "rsync -a --fsync -e \"$SSH_CMD\" %p postgres@127.0.0.1:$d/%f" ;;
    pgbr|pgbrzst|pgbrasync) echo "pgbackrest --config=$P/client.conf --stanza=r$r$m archive-push %p" ;;
    pgbrlocal) echo "pgbackrest --config=$P/localzst.conf --stanza=r$r$m archive-push %p" ;;
    push|push1|pushl|daemon|daemonz|daemonl|la|la2) echo "$W/bin/walship-sender --config $W/ws/send-r$r$m.toml push %p %f" ;;
  esac
}
verify() { # METHOD ROUND SEGMENT: did it arrive whole? (outside the timing)
  local ok=0
  case $1 in
    copy|seed|rsync|rsyncf) cmp -s "$A/pg_wal/$3" "$W/r$2/$1/$3" && ok=1 ;;
    pgbrlocal) compgen -G "$P/repo-local/archive/r$2$1/15-1/${3:0:16}/$3-*" >/dev/null && ok=1 ;;
    pgbr*) compgen -G "$P/repo/archive/r$2$1/15-1/${3:0:16}/$3-*" >/dev/null && ok=1 ;;
    *) cmp -s "$A/pg_wal/$3" "$W/ws/archive-r$2$1/$3" && ok=1 ;;
  esac
  [ $ok = 1 ] || die "verification failed: $1 round $2 segment $3 (logs in $W/log; run with KEEP=1)"
}
RUN_US=0 RUN_BYTES=0 RUN_RSS=0
# Run one archive_command as the archiver would (sh -c, in the data directory DIR, as postgres),
# through the wrapper every method shares; sets RUN_US, RUN_BYTES (lo), RUN_RSS (kB).
run_cmd() { # DIR CMD
  local t0 t1 b0
  cd "$1"
  lo_tx; b0=$LO
  t0=$(us_now)
  if ! runuser -u postgres -- /usr/bin/time -f %M -o "$W/rss/last" sh -c "$2" >>"$W/log/methods.log" 2>&1; then
    tail -n 5 "$W/log/methods.log" >&2
    die "failed: $2"
  fi
  t1=$(us_now)
  lo_tx
  cd "$W"
  RUN_US=$((t1 - t0)) RUN_BYTES=$((LO - b0)) RUN_RSS=$(tail -n 1 "$W/rss/last")
}
sub() { local c=${1//%p/pg_wal/$2}; echo "${c//%f/$2}"; }

METHODS=(copy seed rsync)
[ "$RSYNC_FSYNC" = 1 ] && METHODS+=(rsyncf)
METHODS+=(pgbr pgbrzst pgbrlocal push push1 pushl)
[ "$HAVE_DAEMON" = 1 ] && METHODS+=(daemon daemonz daemonl la)
: >"$W/samples.tsv"; : >"$W/backlog.tsv"; : >"$W/rss/receivers"; : >"$W/rss/daemons"

# ---------------------------------------------------------------- Part A: rounds
# runuser + time + sh alone, the wrapper's share of every row
: >"$W/wrapper.tsv"
for _ in $(seq 20); do run_cmd "$A" "true"; echo "$RUN_US" >>"$W/wrapper.tsv"; done
for _ in $(seq 10); do run_cmd "$A" "$SSH_CMD postgres@127.0.0.1 true"; echo "$RUN_US" >>"$W/ssh.tsv"; done

for r in $(seq "$ROUNDS"); do
  say "round $r/$ROUNDS: fresh destinations"
  mkdir -p "$W/r$r"/{copy,seed,rsync,rsyncf}
  chown -R postgres "$W/r$r"
  stanza "r${r}pgbr" "$A" "$PA" "$P/client.conf" "$P/repo"
  stanza "r${r}pgbrzst" "$A" "$PA" "$P/client.conf" "$P/repo" compress-type=zst compress-level=1
  stanza "r${r}pgbrasync" "$A" "$PA" "$P/client.conf" "$P/repo" archive-async=y process-max=2
  stanza "r${r}pgbrlocal" "$A" "$PA" "$P/localzst.conf" "$P/repo-local" compress-type=zst compress-level=1
  ws_receiver "r${r}push"
  # Rows 5o and 6o: the previous release's behaviour (one compression thread, zstd-1 always).
  ws_receiver "r${r}push1"
  printf 'compression = "zstd"\ncompression_threads = 1\n' >>"$W/ws/send-r${r}push1.toml"
  # Rows 5l and 6l: the fast codec pinned (compression = "lz4").
  ws_receiver "r${r}pushl"
  printf 'compression = "lz4"\n' >>"$W/ws/send-r${r}pushl.toml"
  if [ "$HAVE_DAEMON" = 1 ]; then
    ws_receiver "r${r}daemon"; ws_daemon "r${r}daemon"
    ws_receiver "r${r}daemonz"
    printf 'compression = "zstd"\ncompression_threads = 1\n' >>"$W/ws/send-r${r}daemonz.toml"
    ws_daemon "r${r}daemonz"
    ws_receiver "r${r}daemonl"
    printf 'compression = "lz4"\n' >>"$W/ws/send-r${r}daemonl.toml"
    ws_daemon "r${r}daemonl"
    # Row 7: the look-ahead daemon ships every .ready segment first; then push finds it shipped.
    ws_receiver "r${r}la"
    only_our_ready; sync; lo_tx; b0=$LO; t0=$(us_now)
    ws_daemon "r${r}la" "$A"
    for i in $(seq 6000); do
      missing=0
      for s in "${SEGS[@]}"; do [ -f "$W/ws/archive-r${r}la/$s" ] || { missing=1; break; }; done
      [ $missing = 0 ] && break
      [ "$i" = 6000 ] && die "the look-ahead daemon did not ship all $N segments in 600 s (log: $W/log/daemon-r${r}la.log)"
      sleep 0.1
    done
    t1=$(us_now); lo_tx
    echo "la-preship $r $((t1 - t0)) $N $((LO - b0)) 0" >>"$W/backlog.tsv"
  fi
  say "round $r/$ROUNDS: $N segments x ${#METHODS[@]} methods, interleaved"
  for i in "${!SEGS[@]}"; do
    s=${SEGS[$i]}
    k=${#METHODS[@]}
    for j in $(seq 0 $((k - 1))); do
      m=${METHODS[$(((i + j) % k))]}
      sync   # untimed: nobody pays for the writeback another method left behind
      run_cmd "$A" "$(sub "$(method_cmd "$m" "$r")" "$s")"
      echo "$m $r $s $RUN_US $RUN_BYTES $RUN_RSS" >>"$W/samples.tsv"
      verify "$m" "$r" "$s"
    done
  done
  if [ "$HAVE_DAEMON" = 1 ]; then
    # Row 7n: the pushes of row 7 again, without the shared wrapper: timed inside one postgres
    # shell that forks `sh -c CMD` per segment, as the archiver does. What PostgreSQL waits for.
    for s in "${SEGS[@]}"; do sub "$(method_cmd la "$r")" "$s"; done >"$W/la-cmds-$r"
    (cd "$A" && as_pg bash -c 'while IFS= read -r c; do
        t0=$(date +%s%N); sh -c "$c" </dev/null >/dev/null 2>&1 || exit 1; t1=$(date +%s%N)
        echo "lanw '"$r"' x $(( (t1 - t0) / 1000 )) 0 0"
      done' <"$W/la-cmds-$r") >>"$W/samples.tsv" || die "row 7n: a push failed"
  fi
  ws_receiver_stop "r${r}push"
  ws_receiver_stop "r${r}push1"
  ws_receiver_stop "r${r}pushl"
  if [ "$HAVE_DAEMON" = 1 ]; then
    grep -h "compression:" "$W/log/daemon-r${r}daemon.log" >>"$W/adapt.log" || true
    ws_both_stop "r${r}daemon"
    ws_both_stop "r${r}daemonz"
    ws_both_stop "r${r}daemonl"
    ws_both_stop "r${r}la"
  fi

  # Backlog rows: all N .ready present, push them in order back to back; order alternates.
  backlog=(pgbrasync)
  [ "$HAVE_DAEMON" = 1 ] && { if [ $((r % 2)) = 1 ]; then backlog=(pgbrasync la2); else backlog=(la2 pgbrasync); fi; }
  for m in "${backlog[@]}"; do
    say "round $r/$ROUNDS: backlog of $N .ready segments, $m"
    only_our_ready
    if [ "$m" = la2 ]; then ws_receiver "r${r}la2"; ws_daemon "r${r}la2" "$A"; fi
    sync; lo_tx; b0=$LO; t0=$(us_now); rss=0
    for s in "${SEGS[@]}"; do
      run_cmd "$A" "$(sub "$(method_cmd "$m" "$r")" "$s")"
      [ "$RUN_RSS" -gt "$rss" ] && rss=$RUN_RSS
    done
    t1=$(us_now); lo_tx
    echo "$m $r $((t1 - t0)) $N $((LO - b0)) $rss" >>"$W/backlog.tsv"
    for s in "${SEGS[@]}"; do verify "$m" "$r" "$s"; done
    if [ "$m" = la2 ]; then ws_both_stop "r${r}la2"; else wait_pgbr_async; fi
  done
  # Disk space: this round's copies go, except walship's last archive (restore reads it).
  rm -rf "$W/r$r"/{copy,seed,rsync,rsyncf}
  for d in "$W/ws/archive-r$r"*; do [ "$d" = "$W/ws/archive-r${ROUNDS}push" ] || rm -rf "$d"; done
done

# ---------------------------------------------------------------- 16 transfers at once
NPAR=$((N < 16 ? N : 16))
par_run() { # NAME: NPAR pushes of different segments at once, with receiver/daemon NAME
  local name=$1 i pids=() t0 t1 rss=0 v
  sync; t0=$(us_now)
  cd "$A"
  for i in $(seq 0 $((NPAR - 1))); do
    runuser -u postgres -- /usr/bin/time -f %M -o "$W/rss/par-$name-$i" \
      "$W/bin/walship-sender" --config "$W/ws/send-$name.toml" push "pg_wal/${SEGS[$i]}" "${SEGS[$i]}" \
      >>"$W/log/methods.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || die "parallel push $i ($name) failed"; done
  t1=$(us_now)
  cd "$W"
  for i in $(seq 0 $((NPAR - 1))); do
    v=$(tail -n 1 "$W/rss/par-$name-$i"); [ "$v" -gt "$rss" ] && rss=$v
    cmp -s "$A/pg_wal/${SEGS[$i]}" "$W/ws/archive-$name/${SEGS[$i]}" || die "parallel push $i ($name): not stored"
  done
  echo "$name $NPAR $((t1 - t0)) $rss $(hwm_kb "${RECV_PID[$name]}")" >>"$W/par.tsv"
}
say "$NPAR pushes at once: receiver peak RSS"
: >"$W/par.tsv"
ws_receiver par
par_run par
ws_receiver_stop par
if [ "$HAVE_DAEMON" = 1 ]; then
  ws_receiver pard; ws_daemon pard
  par_run pard
  echo "pard-daemon $(hwm_kb "${DAEMON_PID[pard]}")" >>"$W/par.tsv"
  ws_both_stop pard
fi
rm -rf "$W/ws/archive-par" "$W/ws/archive-pard"

# ---------------------------------------------------------------- restore against cp
say "restore against cp: $RESTORE_RUNS runs each, interleaved"
RA=$W/ws/archive-r${ROUNDS}push
mkdir -p "$W/rst"; chown postgres "$W/rst"
: >"$W/restore.tsv"
for i in $(seq "$RESTORE_RUNS"); do
  s=${SEGS[$((i % N))]}
  if [ $((i % 2)) = 0 ]; then order=(restore cp); else order=(cp restore); fi
  for m in "${order[@]}"; do
    rm -f "$W/rst/RECOVERYXLOG"; sync
    case $m in
      restore) c="$W/bin/walship-receiver --config $W/ws/recv-r${ROUNDS}push.toml restore $s $W/rst/RECOVERYXLOG" ;;
      cp) c="cp $RA/$s $W/rst/RECOVERYXLOG" ;;
    esac
    run_cmd "$A" "$c"
    cmp -s "$A/pg_wal/$s" "$W/rst/RECOVERYXLOG" || die "$m of $s: wrong content"
    echo "$m $RUN_US $RUN_RSS" >>"$W/restore.tsv"
  done
done

# Part A's servers: their peak RSS (process tree) is written when they stop.
stop_pid "$SSHD_PID"
stop_pid "$PGBR_PID"

# ---------------------------------------------------------------- 100 Mbit/s link
: >"$W/tbf.tsv"; TBF_NOTE=
tbf_part() {
  local ns=wsb$$ vh=wsbh$$ vn=wsbn$$ c r m s b0 t0 t1 order
  if ip route show | grep -q '^10\.99\.0\.'; then TBF_NOTE="10.99.0.0/24 is already routed on this machine"; return; fi
  ip netns add "$ns" 2>"$W/log/tbf.err" || { TBF_NOTE="ip netns add failed: $(head -n1 "$W/log/tbf.err")"; return; }
  NS=$ns
  if ! { ip link add "$vh" type veth peer name "$vn" && VH=$vh && ip link set "$vn" netns "$ns" &&
         ip addr add 10.99.0.1/24 dev "$vh" && ip link set "$vh" up &&
         ip netns exec "$ns" ip addr add 10.99.0.2/24 dev "$vn" && ip netns exec "$ns" ip link set "$vn" up &&
         ip netns exec "$ns" ip link set lo up; } 2>"$W/log/tbf.err"; then
    TBF_NOTE="veth pair failed: $(head -n1 "$W/log/tbf.err")"; return
  fi
  if ! { tc qdisc add dev "$vh" root tbf rate 100mbit burst 32kbit latency 50ms &&
         ip netns exec "$ns" tc qdisc add dev "$vn" root tbf rate 100mbit burst 32kbit latency 50ms; } 2>"$W/log/tbf.err"; then
    TBF_NOTE="tc tbf failed: $(head -n1 "$W/log/tbf.err")"; return
  fi
  # What the link really carries: 32 MiB over one TCP connection.
  ip netns exec "$ns" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.99.0.2", 9099)); s.listen(1)
c, _ = s.accept()
while c.recv(1 << 20): pass
c.sendall(b"ok"); c.close()' &
  local sink=$!
  PIDS+=("$sink")
  sleep 0.5
  python3 -c '
import socket, time
c = socket.create_connection(("10.99.0.2", 9099)); b = bytes(1 << 20); t = time.time()
for _ in range(32): c.sendall(b)
c.shutdown(socket.SHUT_WR); c.recv(2); print(f"raw TCP: 32 MiB in {time.time() - t:.2f} s = {32 * 8 * 1.048576 / (time.time() - t):.1f} Mbit/s")' >"$W/tbf-link.txt"
  wait "$sink" || true; forget_pid "$sink"
  # Servers inside the namespace, at 10.99.0.2.
  NSEXEC=$ns
  pgbr_server_conf "$P/server-tbf.conf" 10.99.0.2 8432 "$P/repo-tbf"
  pgbr_client_conf "$P/client-tbf.conf" 10.99.0.2 8432 "$P/repo-tbf"
  chown postgres "$P"/*.conf
  start_bg "$W/log/pgbr-server-tbf.log" pgbackrest --config="$P/server-tbf.conf" server
  local pgbr_tbf=$BG_PID
  NSEXEC=
  sleep 0.5
  local TS=("${SEGS[@]:0:$TBF_SEGMENTS}")
  for r in $(seq "$ROUNDS"); do
    NSEXEC=$ns; ws_receiver "tbf$r" 10.99.0.2 7443; NSEXEC=
    stanza "tbf$r" "$A" "$PA" "$P/client-tbf.conf" "$P/repo-tbf"
    if [ $((r % 2)) = 1 ]; then order=(push pgbr); else order=(pgbr push); fi
    if [ "$HAVE_DAEMON" = 1 ]; then
      # The daemon (compression = auto) on the same link: it must keep compressing there.
      NSEXEC=$ns; ws_receiver "tbfd$r" 10.99.0.2 7444; NSEXEC=
      ws_daemon "tbfd$r"
      order+=(daemon)
    fi
    for m in "${order[@]}"; do
      say "100 Mbit/s link, round $r: $m of $TBF_SEGMENTS segments one by one"
      sync; b0=$(( $(cat /sys/class/net/$vh/statistics/tx_bytes) + $(cat /sys/class/net/$vh/statistics/rx_bytes) ))
      t0=$(us_now)
      for s in "${TS[@]}"; do
        case $m in
          push) c="$W/bin/walship-sender --config $W/ws/send-tbf$r.toml push pg_wal/$s $s" ;;
          pgbr) c="pgbackrest --config=$P/client-tbf.conf --stanza=tbf$r archive-push pg_wal/$s" ;;
          daemon) c="$W/bin/walship-sender --config $W/ws/send-tbfd$r.toml push pg_wal/$s $s" ;;
        esac
        run_cmd "$A" "$c"
      done
      t1=$(us_now)
      echo "$m $r $((t1 - t0)) $TBF_SEGMENTS $(( $(cat /sys/class/net/$vh/statistics/tx_bytes) + $(cat /sys/class/net/$vh/statistics/rx_bytes) - b0 ))" >>"$W/tbf.tsv"
    done
    for s in "${TS[@]}"; do
      cmp -s "$A/pg_wal/$s" "$W/ws/archive-tbf$r/$s" || die "tbf: walship did not store $s"
      compgen -G "$P/repo-tbf/archive/tbf$r/15-1/${s:0:16}/$s-*" >/dev/null || die "tbf: pgBackRest did not store $s"
    done
    ws_receiver_stop "tbf$r"
    rm -rf "$W/ws/archive-tbf$r"
    if [ "$HAVE_DAEMON" = 1 ]; then
      for s in "${TS[@]}"; do cmp -s "$A/pg_wal/$s" "$W/ws/archive-tbfd$r/$s" || die "tbf: the daemon did not store $s"; done
      grep -h "compression:" "$W/log/daemon-tbfd$r.log" | sed 's/^/100mbit: /' >>"$W/adapt.log" || true
      ws_both_stop "tbfd$r"
      rm -rf "$W/ws/archive-tbfd$r"
    fi
  done
  stop_pid "$pgbr_tbf"
  ip link del "$vh"; VH=
  ip netns del "$ns"; NS=
}
if [ "$SKIP_TBF" = 1 ]; then TBF_NOTE="skipped (SKIP_TBF=1)"; else tbf_part; fi
[ -n "$TBF_NOTE" ] && say "100 Mbit/s link: $TBF_NOTE"

pg_stop "$A"

# ---------------------------------------------------------------- under load
: >"$W/load.tsv"
load_run() { # METHOD: pgbench for LOAD_SECS on a fresh primary archiving with METHOD
  local m=$1 d=$W/data/load-$1 port cmd st a0 f0 t pid ready arch fail peak=0 drain=-1 tps i
  port=$(free_port tcp)
  say "under load: $m, pgbench for $LOAD_SECS s"
  # A write-heavy primary: checkpoints every few seconds, so many full-page images (~30 MB/s of
  # WAL on 2 cores with pgbench alone); the same for every method.
  pg_start "$d" "$port" "archive_mode = on" "archive_command = ''" "log_min_messages = error" \
    "max_wal_size = 128MB" "checkpoint_timeout = 30s"
  case $m in
    copy)
      mkdir -p "$W/load-copy"; chown postgres "$W/load-copy"
      cmd="cp %p $W/load-copy/.tmp.%f && sync $W/load-copy/.tmp.%f && mv $W/load-copy/.tmp.%f $W/load-copy/%f && sync $W/load-copy" ;;
    pgbrasync)
      start_bg "$W/log/pgbr-server-load.log" pgbackrest --config="$P/server.conf" server
      PGBR_PID=$BG_PID
      sleep 0.5
      stanza load "$d" "$port" "$P/client.conf" "$P/repo" archive-async=y process-max=2
      cmd="pgbackrest --config=$P/client.conf --stanza=load archive-push %p" ;;
    pgbrlocal)
      stanza loadlocal "$d" "$port" "$P/localzst.conf" "$P/repo-local" compress-type=zst compress-level=1
      cmd="pgbackrest --config=$P/localzst.conf --stanza=loadlocal archive-push %p" ;;
    la)
      ws_receiver load; ws_daemon load "$d"
      cmd="$W/bin/walship-sender --config $W/ws/send-load.toml push %p %f" ;;
    seal)
      # The production shape with the open segment shipped: look-ahead and partial_interval;
      # a finished segment the receiver holds whole as its .partial is sealed, not uploaded.
      ws_receiver load
      printf 'conninfo = "host=%s port=%s user=postgres dbname=postgres"\npartial_interval = "200ms"\n' \
        "$W/sock" "$port" >>"$W/ws/send-load.toml"
      ws_daemon load "$d"
      cmd="$W/bin/walship-sender --config $W/ws/send-load.toml push %p %f" ;;
  esac
  # Each archive_command timed from inside the archiver's shell (%% is PostgreSQL's %).
  : >"$W/load-$m.times"; chown postgres "$W/load-$m.times"
  cmd="t0=\$(date +%%s%%N); $cmd; rc=\$?; echo \$(( (\$(date +%%s%%N) - t0) / 1000 )) >>$W/load-$m.times; exit \$rc"
  echo "archive_command = '$cmd'" >>"$d/postgresql.conf"
  as_pg "$PGBIN/pg_ctl" -D "$d" reload >/dev/null
  as_pg "$PGBIN/pgbench" -h "$W/sock" -p "$port" -i -s 30 -q postgres >/dev/null 2>&1
  psql_q "$port" "checkpoint" >/dev/null
  for _ in $(seq 600); do [ "$(n_ready "$d")" = 0 ] && break; sleep 0.5; done
  st=$(psql_q "$port" "select archived_count, failed_count from pg_stat_archiver")
  a0=${st%|*} f0=${st#*|}
  sync
  as_pg "$PGBIN/pgbench" -h "$W/sock" -p "$port" -c 8 -j 2 -T "$LOAD_SECS" -n postgres >"$W/log/pgbench-$m.log" 2>&1 &
  pid=$!
  : >"$W/load-$m.samples"
  t=0
  while :; do
    sleep 1; t=$((t + 1))
    ready=$(n_ready "$d")
    st=$(psql_q "$port" "select archived_count, failed_count from pg_stat_archiver")
    arch=$((${st%|*} - a0)) fail=$((${st#*|} - f0))
    echo "$t $ready $arch $fail" >>"$W/load-$m.samples"
    [ "$ready" -gt "$peak" ] && peak=$ready
    if ! kill -0 "$pid" 2>/dev/null; then
      [ -z "${a_end:-}" ] && { a_end=$arch f_end=$fail t_end=$t; }
      if [ "$ready" = 0 ]; then drain=$((t - t_end)); break; fi
      [ $((t - t_end)) -ge 300 ] && break
    fi
  done
  wait "$pid" || die "pgbench failed under $m (log: $W/log/pgbench-$m.log)"
  tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$W/log/pgbench-$m.log" | head -n 1)
  echo "$m $peak $a_end $f_end $tps $drain $arch" >>"$W/load.tsv"
  unset a_end f_end t_end
  pg_stop "$d"
  case $m in
    pgbrasync) stop_pid "$PGBR_PID" ;;
    la|seal)
      [ "$m" = seal ] && { grep -c "sealed: the partial held whole" "$W/log/recv-load.log" >"$W/load-seal.sealed" || true; }
      ws_both_stop load ;;
  esac
  rm -rf "$d" "$W/load-copy" "$W/ws/archive-load"
}
if [ "$SKIP_LOAD" = 1 ]; then
  say "load test skipped (SKIP_LOAD=1)"
else
  load_run copy
  load_run pgbrasync
  load_run pgbrlocal
  [ "$HAVE_DAEMON" = 1 ] && { load_run la; load_run seal; }
fi

# ---------------------------------------------------------------- report
CPU=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$W" "$OUT" <<PY
import os, statistics as st, sys
w, out = sys.argv[1], sys.argv[2]
MB = 16.777216
N, ROUNDS, RSYNC_FSYNC, HAVE_DAEMON = $N, $ROUNDS, $RSYNC_FSYNC, $HAVE_DAEMON
def rows(name):
    p = f"{w}/{name}"
    return [l.split() for l in open(p) if l.strip()] if os.path.exists(p) else []
def kb_file(name):
    try: return int(open(f"{w}/rss/{name}").read().split()[-1])
    except Exception: return None
def mib(kb): return "" if kb is None else f"{kb / 1024:.1f}"
recv = {}
for name, kb in rows("rss/receivers"): recv[name] = max(recv.get(name, 0), int(kb))
daem = {}
for name, kb in rows("rss/daemons"): daem[name] = max(daem.get(name, 0), int(kb))
def recv_max(suffix):
    v = [kb for n, kb in recv.items() if n.startswith("r") and n.endswith(suffix) and n[1:-len(suffix)].isdigit()]
    return max(v) if v else None
def daem_max(suffix):
    v = [kb for n, kb in daem.items() if n.startswith("r") and n.endswith(suffix) and n[1:-len(suffix)].isdigit()]
    return max(v) if v else None
samples = {}
for m, r, s, us, b, rss in rows("samples.tsv"):
    samples.setdefault(m, []).append((int(us) / 1000, int(b), int(rss)))
backlog = {}
for m, r, us, n, b, rss in rows("backlog.tsv"):
    backlog.setdefault(m, []).append((int(us) / 1000 / int(n), int(b) / int(n), int(rss)))
wrapper = st.median([int(x[0]) / 1000 for x in rows("wrapper.tsv")])
sshd, pgbr_srv = kb_file("sshd"), kb_file("pgbr-server")
labels = {
 "copy": "1. durable local copy: cp to temp, fsync, rename, fsync dir (reference)",
 "seed": "2. seed: \`test ! -f dst/%f && cp %p dst/%f\` (no fsync)",
 "rsync": "3. rsync -a over ssh to 127.0.0.1 (no fsync: rsync's default)",
 "rsyncf": "3f. rsync -a --fsync over ssh (file fsynced, directory not)",
 "pgbr": "4. pgBackRest archive-push, sync, TLS repo (default gz level 6)",
 "pgbrzst": "4z. pgBackRest archive-push, sync, compress-type=zst level 1",
 "pgbrasync": "4a. pgBackRest async (archive-async=y process-max=2), backlog of N .ready: total / N",
 "pgbrlocal": "4l. pgBackRest archive-push to a LOCAL repository (no network), compress-type=zst level 1",
 "push": "5. walship push, direct (zstd-1, compression_threads default)",
 "push1": "5o. walship push, direct, compression = zstd, compression_threads = 1 (previous behaviour)",
 "pushl": "5l. walship push, direct, compression = lz4",
 "daemon": "6. walship push through the daemon (no look-ahead; compression = auto, the default)",
 "daemonz": "6o. the same, daemon with compression = zstd, compression_threads = 1 (previous behaviour)",
 "daemonl": "6l. the same, daemon with compression = lz4 (pinned)",
 "la": "7. walship look-ahead: push of a segment the daemon already shipped",
 "lanw": "7n. the same pushes as 7, without the wrapper (sh -c forked as the archiver does)",
 "la2": "7b. walship look-ahead (lookahead=4), backlog of N .ready: total / N",
}
ref = st.median([x[0] for x in samples["copy"]])
L = []
L.append(f"walship compare: {os.popen('date -u +%Y-%m-%dT%H:%MZ').read().strip()}, kernel {os.uname().release}, CPU $CPU, {os.cpu_count()} cores; "
         f"{N} real pgbench segments of 16 MiB, {ROUNDS} interleaved rounds, loopback")
L.append("Machine load (/proc/loadavg 1/5/15 min): at the start $LOAD_START, at the end $LOAD_END.")
L.append("")
L.append("| method | median ms/segment | min | max | MB/s | ratio to (1) | wire bytes/segment (lo, both directions) | peak RSS sender MiB | peak RSS receiver MiB |")
L.append("|---|---|---|---|---|---|---|---|---|")
order = ["copy", "seed", "rsync", "rsyncf", "pgbr", "pgbrzst", "pgbrlocal", "pgbrasync", "push", "push1", "pushl", "daemon", "daemonz", "daemonl", "la", "lanw", "la2"]
for m in order:
    if m in samples:
        v = samples[m]; t = [x[0] for x in v]
        med, lo, hi = st.median(t), min(t), max(t)
        wire = st.mean([x[1] for x in v]); rss = max(x[2] for x in v)
        note = ""
    elif m in backlog:
        v = backlog[m]; t = [x[0] for x in v]
        med, lo, hi = st.median(t), min(t), max(t)
        wire = st.mean([x[1] for x in v]); rss = max(x[2] for x in v)
    else:
        continue
    if m == "la" and "la-preship" in backlog:
        wire = st.mean([x[1] for x in backlog["la-preship"]])
    snd = mib(rss)
    rcv = ""
    if m in ("rsync", "rsyncf"): rcv = f"{mib(sshd)} (sshd tree)"
    elif m.startswith("pgbr"): rcv = f"{mib(pgbr_srv)} (server tree)"
    elif m in ("push", "push1", "pushl", "daemon", "daemonz", "daemonl", "la", "la2"): rcv = mib(recv_max(m))
    if m in ("daemon", "daemonz", "daemonl", "la", "la2") and daem_max(m) is not None: snd = f"push {snd} + daemon {mib(daem_max(m))}"
    if m == "pgbrasync": snd = f"{snd} (foreground; async worker not measured)"
    wire_s = "0 (local)" if m in ("copy", "seed", "pgbrlocal") else f"{wire:,.0f}"
    if m == "lanw": wire_s, snd, rcv = "as 7", "as 7", "as 7"
    L.append(f"| {labels[m]} | {med:.1f} | {lo:.1f} | {hi:.1f} | {MB / med * 1000:.0f} | {med / ref:.2f} | {wire_s} | {snd} | {rcv} |")
L.append("")
L.append(f"Every row but 7n includes the shared wrapper (runuser -u postgres -- /usr/bin/time sh -c CMD), {wrapper:.1f} ms median on its own. "
         "Interleaved rows: median/min/max over all segments and rounds. Backlog rows (4a, 7b): per-segment time = one round's total / N, "
         "median/min/max over rounds; MB/s and ratio from that. Wire bytes: lo's byte counter around each command (both directions, "
         "all headers and handshakes), mean per segment (the corpus mixes pgbench -i segments, which compress well, and TPC-B ones); "
         "row 7's are those of the look-ahead shipping before the pushes.")
if "la-preship" in backlog:
    p = [x[0] for x in backlog["la-preship"]]
    L.append(f"Row 7: the look-ahead daemon shipped all {N} segments in {st.median(p) * N / 1000:.1f} s (median over rounds, {st.median(p):.1f} ms/segment) before the pushes were timed; the row is the hand-off cost the archiver sees when the daemon is ahead.")
med = {m: st.median([x[0] for x in samples[m]]) for m in samples}
if "copy" in med:
    L.append("")
    L.append("Issue 13 targets (medians of the rows above; lower is better for the first two, higher for the last):")
    L.append("")
    L.append("| ratio | measured | target |")
    L.append("|---|---|---|")
    def ratio(a, b, label, target):
        if a in med and b in med:
            L.append(f"| {label} | {med[a] / med[b]:.2f} | {target} |")
    ratio("push", "copy", "direct push (5) / durable local copy (1)", "<= 1.5")
    ratio("push1", "copy", "direct push, one thread (5o) / durable local copy (1)", "")
    ratio("pushl", "copy", "direct push, lz4 (5l) / durable local copy (1)", "")
    ratio("daemon", "copy", "daemon push (6) / durable local copy (1)", "<= 1.2")
    ratio("daemonz", "copy", "daemon push, zstd-1 one thread (6o) / durable local copy (1)", "")
    ratio("daemonl", "copy", "daemon push, lz4 pinned (6l) / durable local copy (1)", "")
    ratio("la", "copy", "look-ahead push (7) / durable local copy (1)", "")
    ratio("pgbrlocal", "daemon", "pgBackRest local zst-1 (4l) / daemon push (6): daemon's speed-up", ">= 2")
    ratio("pgbrlocal", "push", "pgBackRest local zst-1 (4l) / direct push (5)", "")
    ratio("pgbrlocal", "la", "pgBackRest local zst-1 (4l) / look-ahead push (7)", "")
    ratio("pgbrlocal", "copy", "pgBackRest local zst-1 (4l) / durable local copy (1)", "")
if os.path.exists(f"{w}/adapt.log"):
    ch = [l.strip() for l in open(f"{w}/adapt.log") if l.strip()]
    L.append("")
    L.append(f"Row 6's daemon (compression = auto) changed its codec {len(ch)} time(s)" + (": " + " | ".join(c[c.find("compression:"):] for c in ch[:4]) if ch else "") + ".")
sshr = rows("ssh.tsv")
if sshr:
    L.append(f"Rows 3: a new ssh connection per segment; a bare \`ssh true\` to the same sshd takes {st.median([int(x[0]) / 1000 for x in sshr]):.1f} ms (median of 10, same wrapper).")
if not RSYNC_FSYNC:
    L.append("This rsync has no --fsync: row 3 is not durable and there is no durable rsync row.")
par = {r[0]: r[1:] for r in rows("par.tsv")}
if "par" in par:
    n, us, rss, hwm = par["par"]
    L.append("")
    L.append(f"{n} pushes of different segments at once, direct: {int(us) / 1e6:.2f} s in all; receiver peak RSS {mib(int(hwm))} MiB (target <= 64), "
             f"largest push {mib(int(rss))} MiB (target <= 32).")
if "pard" in par:
    n, us, rss, hwm = par["pard"]
    d = par.get("pard-daemon", ["0"])[0]
    L.append(f"{n} pushes at once through the daemon: {int(us) / 1e6:.2f} s; receiver peak RSS {mib(int(hwm))} MiB, daemon {mib(int(d))} MiB (target <= 64), largest push {mib(int(rss))} MiB.")
rs = rows("restore.tsv")
if rs:
    r_ = [int(u) / 1000 for m, u, _ in rs if m == "restore"]; c_ = [int(u) / 1000 for m, u, _ in rs if m == "cp"]
    L.append("")
    L.append(f"restore against cp (16 MiB segment to a fresh path, {len(r_)} runs each, interleaved, same wrapper): "
             f"walship-receiver restore median {st.median(r_):.1f} ms (min {min(r_):.1f}, max {max(r_):.1f}), "
             f"cp {st.median(c_):.1f} ms (min {min(c_):.1f}, max {max(c_):.1f}), ratio {st.median(r_) / st.median(c_):.2f}.")
tb = rows("tbf.tsv")
L.append("")
note = """$TBF_NOTE"""
if tb:
    link = open(f"{w}/tbf-link.txt").read().strip() if os.path.exists(f"{w}/tbf-link.txt") else ""
    def agg(m):
        v = [(int(us) / 1e6, int(n), int(b)) for mm, r, us, n, b in tb if mm == m]
        return st.median([x[0] for x in v]), min(x[0] for x in v), max(x[0] for x in v), v[0][1], st.median([x[2] for x in v])
    w_, p_ = agg("push"), agg("pgbr")
    d_ = agg("daemon") if any(x[0] == "daemon" for x in tb) else None
    L.append(f"100 Mbit/s link (veth pair into a network namespace, tbf rate 100mbit burst 32kbit latency 50ms on both ends; {link}): "
             f"{w_[3]} segments one by one, median of {ROUNDS} rounds: walship push (zstd-1) {w_[0]:.2f} s ({w_[0] / w_[3] * 1000:.0f} ms/segment, "
             f"{w_[4] / w_[3]:,.0f} bytes/segment on the link), pgBackRest archive-push sync (default gz-6) {p_[0]:.2f} s "
             f"({p_[0] / p_[3] * 1000:.0f} ms/segment, {p_[4] / p_[3]:,.0f} bytes/segment); pgBackRest / walship = {p_[0] / w_[0]:.2f}.")
    if d_:
        L.append(f"The same link through the daemon (compression = auto): {d_[0]:.2f} s ({d_[0] / d_[3] * 1000:.0f} ms/segment, "
                 f"{d_[4] / d_[3]:,.0f} bytes/segment); pgBackRest / walship daemon = {p_[0] / d_[0]:.2f}.")
else:
    L.append(f"100 Mbit/s link: not measured: {note}")
ld = rows("load.tsv")
if ld:
    L.append("")
    L.append(f"Under load: pgbench -c 8 -j 2 -T $LOAD_SECS on a fresh write-heavy primary (scale 30, max_wal_size = 128MB, "
             "checkpoint_timeout = 30s: checkpoints every few seconds, many full-page images) archiving with each method; "
             "pg_stat_archiver and archive_status/*.ready sampled every second; one run per method, in this order.")
    L.append("")
    L.append("| method | peak .ready backlog | archived_count | failed_count | pgbench tps | drain after pgbench (s) | WAL made (segments) | archive_command ms: median (p90) | peak RSS MiB |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    ln = {"copy": "1. durable local copy", "pgbrasync": "4a. pgBackRest async, process-max=2",
          "pgbrlocal": "4l. pgBackRest to a LOCAL repository, zst-1 (no network)",
          "la": "7. walship push + daemon with look-ahead",
          "seal": "7s. walship push + daemon with look-ahead and partial_interval = 200ms (sealed segments)"}
    cmd_ms = {}
    for m, *_ in ld:
        t = sorted(int(x[0]) / 1000 for x in rows(f"load-{m}.times"))
        if t:
            cmd_ms[m] = (st.median(t), t[min(len(t) - 1, int(len(t) * 0.9))])
    for m, peak, a, f, tps, drain, a_all in ld:
        rss = f"daemon {mib(daem.get('load'))}, receiver {mib(recv.get('load'))}" if m in ("la", "seal") else ""
        c = f"{cmd_ms[m][0]:.1f} ({cmd_ms[m][1]:.1f})" if m in cmd_ms else ""
        L.append(f"| {ln[m]} | {peak} | {a} | {f} | {float(tps):.0f} | {drain if drain != '-1' else '> 300'} | {a_all} | {c} | {rss} |")
    if os.path.exists(f"{w}/load-seal.sealed"):
        L.append("")
        L.append(f"Row 7s: the receiver's log says it sealed {open(f'{w}/load-seal.sealed').read().strip()} finished segment(s) (not uploaded again).")
    if "pgbrlocal" in cmd_ms and "seal" in cmd_ms:
        L.append(f"Under load, pgBackRest local zst-1's archive_command (4l) / walship's with sealed segments (7s), medians: {cmd_ms['pgbrlocal'][0] / cmd_ms['seal'][0]:.2f}; / look-ahead alone (7): {cmd_ms['pgbrlocal'][0] / cmd_ms['la'][0]:.2f}." if "la" in cmd_ms else "")
    L.append("")
    L.append(f"archived_count and failed_count: during the $LOAD_SECS s of pgbench; drain: seconds from pgbench's end until no .ready was left; "
             "archive_command ms: each run of the command timed inside the archiver's shell (date before and after), over the whole run.")
if not HAVE_DAEMON:
    L.append("")
    L.append("walship-sender has no daemon in this build: rows 6, 7, 7b and the look-ahead load test are left out.")
text = "\n".join(L) + "\n"
open(out, "w").write(text)
print(text)
PY
echo "results written to $OUT" >&2
