#!/usr/bin/env bash
# walship demo: a PostgreSQL 15 primary archives its WAL through walship-sender,
# over QUIC with mutual TLS, to walship-receiver, which feeds a warm standby
# through restore_command. Then the primary is killed and the standby promoted,
# and the way back: the old primary is rebuilt as the new primary's standby
# (pg_rewind), fed through walship in the other direction, and a planned
# switchover makes it the primary again.
#
#   bash deploy/demo.sh [--clean]
#
#   --clean            remove the work directory on exit (default: keep it, with all logs)
#   WALSHIP_BIN_DIR    take walship-sender and walship-receiver from this directory
#                      instead of running `cargo build --release --bins`
#   PGBIN              PostgreSQL 15 server binaries (default /usr/lib/postgresql/15/bin)
#
# Runs as root (the main case: PostgreSQL then runs as the postgres user, via
# runuser) or as an ordinary user (everything runs as that user). Everything
# listens on 127.0.0.1 only, on ports found free; every process it starts is
# stopped on exit.
set -euo pipefail

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

CLEAN=0
for arg in "$@"; do
    case $arg in
        --clean) CLEAN=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "demo.sh: unknown argument '$arg'" >&2; usage >&2; exit 2 ;;
    esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
STEP=0

banner() { STEP=$((STEP + 1)); printf '\n==== [%d] %s\n' "$STEP" "$*"; }
info() { printf '     %s\n' "$*"; }
indent() { sed 's/^/       /'; }
die() { printf '\ndemo.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites

for b in initdb pg_ctl postgres pg_basebackup psql pgbench; do
    if [ ! -x "$PGBIN/$b" ]; then
        echo "demo.sh: PostgreSQL 15 server binaries not found ($PGBIN/$b is missing)." >&2
        echo "Install them with:  apt-get install postgresql-15   (or set PGBIN)" >&2
        exit 1
    fi
done

if [ "$(id -u)" -eq 0 ]; then
    # initdb, postgres and pg_ctl refuse to run as root: run PostgreSQL (and,
    # as in production, walship) as the postgres user.
    id postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (apt-get install postgresql-15 creates it)"
    command -v runuser >/dev/null || die "runuser not found (apt-get install util-linux)"
    RUN_AS=postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    RUN_AS=$(id -un)
    as_pg() { "$@"; }
fi

# ---------------------------------------------------------------- binaries

if [ -n "${WALSHIP_BIN_DIR:-}" ]; then
    BIN_SRC=$WALSHIP_BIN_DIR
    banner "Binaries: using WALSHIP_BIN_DIR=$BIN_SRC"
else
    command -v cargo >/dev/null ||
        die "cargo not found: install Rust, or set WALSHIP_BIN_DIR to a directory holding walship-sender and walship-receiver"
    banner "Build walship: cargo build --release --bins (the first build takes a few minutes)"
    (cd "$REPO" && cargo build --release --bins)
    BIN_SRC=${CARGO_TARGET_DIR:-$REPO/target}/release
fi
for b in walship-sender walship-receiver; do
    [ -x "$BIN_SRC/$b" ] || die "$BIN_SRC/$b not found or not executable"
done
T0=$SECONDS # the demo's own run time, without the build

# ---------------------------------------------------------------- work dir and cleanup

WORK=$(mktemp -d /tmp/walship-demo.XXXXXX)
BIN=$WORK/bin
LOG=$WORK/log
SOCK=$WORK/sock
RUN=$WORK/run
PRIMARY=$WORK/primary
STANDBY=$WORK/standby
RDIR=$WORK/receiver
SDIR=$WORK/sender
RCONF=$RDIR/receiver.toml
SCONF=$SDIR/sender.toml
ARCHIVE=$RDIR/archive
RECEIVER_JOB=""
RECEIVER_PID=""
DAEMON_JOB=""
DAEMON_PID=""
RECEIVER_A_JOB=""
RECEIVER_A_PID=""
# The way back: a receiver on the old primary's host, fed by the new primary.
RDIR_A=$WORK/receiver-a
RCONF_A=$RDIR_A/receiver.toml
ARCHIVE_A=$RDIR_A/archive
SDIR_B=$WORK/sender-b
SCONF_B=$SDIR_B/sender.toml

# stop_receiver PID JOB WHAT: SIGTERM, SIGKILL after 10s, report the exit status.
stop_receiver() {
    local pid=$1 job=$2 what=$3 status
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            info "$what (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
            kill -KILL "$pid"
        fi
    fi
    if [ -n "$job" ]; then
        wait "$job"; status=$?
        info "stopped $what with SIGTERM: exit status $status (0 = clean shutdown)"
    fi
}

cleanup() {
    local rc=$? status
    set +e
    trap - EXIT INT TERM
    trap '' PIPE # output may be gone (demo.sh | head): clean up regardless
    printf '\n==== Cleanup\n'
    for dir in "$STANDBY" "$PRIMARY"; do
        if [ -f "$dir/postmaster.pid" ]; then
            as_pg "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 15 stop >/dev/null 2>&1 ||
                as_pg "$PGBIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null 2>&1
            info "stopped PostgreSQL in $dir"
        fi
    done
    if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID"
        wait "$DAEMON_JOB"; status=$?
        info "stopped walship-sender daemon with SIGTERM: exit status $status (0 = clean shutdown)"
    fi
    stop_receiver "$RECEIVER_PID" "$RECEIVER_JOB" "walship-receiver serve"
    stop_receiver "$RECEIVER_A_PID" "$RECEIVER_A_JOB" "walship-receiver serve (old primary's host)"
    cd /
    if [ "$CLEAN" -eq 1 ]; then
        rm -rf "$WORK"
        info "removed $WORK"
    else
        info "work dir kept: $WORK   (logs: $LOG; remove it with: rm -rf $WORK)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 141' PIPE

# Logs to look at when something fails.
dump_logs() {
    local f
    for f in "$LOG"/*.log; do
        [ -s "$f" ] || continue
        printf '\n---- last lines of %s\n' "$f" >&2
        tail -n 20 "$f" >&2
    done
}
fail() { dump_logs; die "$*"; }

# wait_until SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds.
wait_until() {
    local timeout=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + timeout))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${timeout}s waiting for $what"
        sleep 0.5
    done
}

# ---------------------------------------------------------------- free loopback ports

USED_PORTS=" "
port_in_use() {
    local p=$1
    if command -v ss >/dev/null; then
        # any TCP or UDP socket bound to this port, in any state
        ss -Hantu 2>/dev/null | awk -v p=":$p" '
            substr($5, length($5) - length(p) + 1) == p { found = 1 } END { exit !found }'
    elif command -v python3 >/dev/null; then
        # in use unless both a TCP and a UDP socket can bind it
        if python3 - "$p" 2>/dev/null <<'EOF'; then return 1; else return 0; fi
import socket, sys
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.close()
EOF
    else
        return 1
    fi
}
# free_port VAR: a port free for both TCP and UDP on loopback, below the
# kernel's ephemeral range, not handed out before by this script.
free_port() {
    local p
    for _ in $(seq 1 500); do
        p=$((20000 + RANDOM % 12000))
        case $USED_PORTS in *" $p "*) continue ;; esac
        port_in_use "$p" && continue
        USED_PORTS="$USED_PORTS$p "
        printf -v "$1" '%s' "$p"
        return 0
    done
    die "no free port found between 20000 and 32000"
}
free_port PRIMARY_PORT
free_port STANDBY_PORT
free_port RECEIVER_PORT
free_port RECEIVER_A_PORT

# psql helpers: `sql PORT QUERY` prints unaligned values (a|b), `show PORT QUERY` a table.
sql() {
    local port=$1
    shift
    as_pg "$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -U postgres -d postgres -c "$*"
}
show() {
    local port=$1
    shift
    as_pg "$PGBIN/psql" -X -q -P pager=off -v ON_ERROR_STOP=1 -h "$SOCK" -p "$port" -U postgres -d postgres -c "$*" | sed "/^$/d" | indent
}

# ---------------------------------------------------------------- 1. layout

banner "Work directory $WORK (owned by $RUN_AS)"
mkdir -p "$BIN" "$LOG" "$SOCK" "$RUN" "$RDIR/certs" "$SDIR/certs" "$ARCHIVE"
install -m 0755 "$BIN_SRC/walship-sender" "$BIN_SRC/walship-receiver" "$BIN/"
chmod 0700 "$ARCHIVE" "$RDIR/certs" "$SDIR/certs"
if [ "$RUN_AS" = postgres ] && [ "$(id -u)" -eq 0 ]; then
    chown -R postgres:postgres "$WORK"
fi
# Run everything from inside the work dir: postgres cannot enter /root.
cd "$WORK"
info "binaries copied to $BIN (the $RUN_AS user may not be able to read the build tree)"
info "ports: primary $PRIMARY_PORT/tcp, standby $STANDBY_PORT/tcp, receiver $RECEIVER_PORT/udp (all 127.0.0.1)"

# ---------------------------------------------------------------- 2. certificates

banner "Certificates: walship-receiver certs --dir $WORK/ca --server-name localhost"
as_pg "$BIN/walship-receiver" certs --dir "$WORK/ca" --server-name localhost 2>&1 | indent ||
    fail "walship-receiver certs failed"
# In production the CA stays on an admin host; each side gets only what it needs.
as_pg cp -p "$WORK/ca/ca.pem" "$WORK/ca/server.pem" "$WORK/ca/server.key" "$RDIR/certs/"
as_pg cp -p "$WORK/ca/ca.pem" "$WORK/ca/client.pem" "$WORK/ca/client.key" "$SDIR/certs/"
info "receiver gets ca.pem server.pem server.key; sender gets ca.pem client.pem client.key:"
ls -l "$RDIR/certs" "$SDIR/certs" | sed '/^$/d; /^total /d' | indent

# ---------------------------------------------------------------- 3. primary

banner "Primary: initdb, wal_level=replica, archive_mode=on, port $PRIMARY_PORT"
as_pg "$PGBIN/initdb" -D "$PRIMARY" -U postgres -A trust -E UTF8 --locale=C >"$LOG/initdb.log" 2>&1 ||
    fail "initdb failed (see $LOG/initdb.log)"
cat >>"$PRIMARY/postgresql.conf" <<EOF

# ---- walship demo: primary
listen_addresses = '127.0.0.1'
port = $PRIMARY_PORT
unix_socket_directories = '$SOCK'
wal_level = replica
archive_mode = on
# archive_command is added once the receiver is up (step 6). Until then
# completed segments wait in pg_wal, marked .ready; none is lost.
max_wal_size = 1GB
# switch segments at least every 3s while there is traffic, so WAL is seen
# arriving during the load (in production: 60s or more, if at all)
archive_timeout = '3s'
# pg_rewind (the way back, step 13) needs hint-bit changes in the WAL, or data
# checksums (initdb -k), and the old primary's own WAL back to the last
# checkpoint before the fork: its crash recovery would otherwise recycle it
wal_log_hints = on
wal_keep_size = '512MB'
EOF
as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -l "$LOG/primary.log" -w start >/dev/null ||
    fail "the primary did not start"
info "primary running: $(sql "$PRIMARY_PORT" 'SELECT version()' | cut -d, -f1)"

# ---------------------------------------------------------------- 4. standby

banner "Standby: pg_basebackup, standby.signal, restore_command, port $STANDBY_PORT"
as_pg "$PGBIN/pg_basebackup" -h "$SOCK" -p "$PRIMARY_PORT" -U postgres -D "$STANDBY" -X stream -c fast \
    >"$LOG/basebackup.log" 2>&1 || fail "pg_basebackup failed (see $LOG/basebackup.log)"
RESTORE_COMMAND="$BIN/walship-receiver --config $RCONF restore %f %p"
cat >>"$STANDBY/postgresql.conf" <<EOF

# ---- walship demo: standby, fed only from the walship archive (no streaming)
port = $STANDBY_PORT
hot_standby = on
restore_command = '$RESTORE_COMMAND'
# look for the next segment every second (default 5s)
wal_retrieve_retry_interval = '1s'
# once promoted, it archives through walship to a receiver on the old
# primary's host (the way back). Until archive_command is set there (step 12),
# completed segments wait in pg_wal, marked .ready.
archive_mode = on
EOF
as_pg touch "$STANDBY/standby.signal"
info "standby.signal created; postgresql.conf:"
info "  restore_command = '$RESTORE_COMMAND'"

# ---------------------------------------------------------------- 5. receiver

banner "Receiver: walship-receiver serve on 127.0.0.1:$RECEIVER_PORT (cluster pinned by the standby's pg_control)"
cat >"$RCONF" <<EOF
# walship-receiver configuration for the demo; relative paths are
# resolved against this file's directory.
listen = "127.0.0.1:$RECEIVER_PORT"
archive_dir = "archive"
cert = "certs/server.pem"
key = "certs/server.key"
client_ca = "certs/ca.pem"
pgdata = "$STANDBY"
conninfo = "host=$SOCK port=$STANDBY_PORT user=postgres dbname=postgres"
EOF
cat >"$SCONF" <<EOF
# walship-sender configuration for the demo; relative paths are
# resolved against this file's directory.
receiver = "127.0.0.1:$RECEIVER_PORT"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/client.pem"
key = "certs/client.key"
connect_timeout = "10s"
# The daemon: push hands segments to it over this socket; with pgdata it ships
# .ready segments ahead of the archiver, up to lookahead at once.
socket = "$RUN/sender.sock"
pgdata = "$PRIMARY"
lookahead = 4
EOF
if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$RCONF" "$SCONF"; fi
sed 's/^/       /' "$RCONF"
# Start a long-running walship command as postgres with RUST_LOG=$2, logging to $LOG/$1.log, and
# wait until it logs "listening". Sets STARTED_JOB and STARTED_PID: the command's own pid,
# recorded by a small sh wrapper so that cleanup signals exactly that process.
start_service() {
    local name=$1 rust_log=$2
    shift 2
    # shellcheck disable=SC2016 # $$, $1 and $@ are for the inner sh
    as_pg env RUST_LOG="$rust_log" sh -c 'echo $$ >"$1"; shift; exec "$@"' sh "$RUN/$name.pid" \
        "$@" >>"$LOG/$name.log" 2>&1 &
    STARTED_JOB=$!
    wait_until 10 "the pid file of $name" test -s "$RUN/$name.pid"
    STARTED_PID=$(cat "$RUN/$name.pid")
    service_ready() {
        kill -0 "$STARTED_PID" 2>/dev/null || fail "$name exited during startup (see $LOG/$name.log)"
        grep -q 'listening' "$LOG/$name.log"
    }
    wait_until 20 "$name to log 'listening'" service_ready
    grep -m1 'listening' "$LOG/$name.log" | cut -c1-160 | indent
}
start_service receiver info "$BIN/walship-receiver" --config "$RCONF" serve
RECEIVER_JOB=$STARTED_JOB RECEIVER_PID=$STARTED_PID

banner "Sender daemon: walship-sender daemon (warm connection, look-ahead over archive_status/*.ready)"
start_service sender-daemon info,walship_sender::daemon=debug "$BIN/walship-sender" --config "$SCONF" daemon
DAEMON_JOB=$STARTED_JOB DAEMON_PID=$STARTED_PID

# ---------------------------------------------------------------- 6. archiving on

ARCHIVE_COMMAND="$BIN/walship-sender --config $SCONF push %p %f"
banner "Primary: archive_command = walship-sender push; pg_ctl reload"
cat >>"$PRIMARY/postgresql.conf" <<EOF
# added by the demo once walship-receiver was listening:
archive_command = '$ARCHIVE_COMMAND'
EOF
info "archive_command = '$ARCHIVE_COMMAND'"
as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" reload >/dev/null
archived_something() { [ "$(sql "$PRIMARY_PORT" 'SELECT archived_count FROM pg_stat_archiver')" -gt 0 ]; }
wait_until 60 "the first segment to be archived" archived_something
info "segments waiting since initdb and the base backup are now archived:"
show "$PRIMARY_PORT" 'SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver'

# ---------------------------------------------------------------- 7. standby up

banner "Standby: start (replays the base backup's WAL, then restores from the archive)"
as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -l "$LOG/standby.log" -w -t 120 start >/dev/null ||
    fail "the standby did not start"
show "$STANDBY_PORT" 'SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn() AS replay_lsn'

# ---------------------------------------------------------------- 8. load

banner "Load: pgbench -i -s 5, then pgbench -T 10 on the primary"
T_LOAD=$SECONDS
as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PRIMARY_PORT" -U postgres -i -s 5 -q postgres >"$LOG/pgbench-init.log" 2>&1 ||
    fail "pgbench -i failed (see $LOG/pgbench-init.log)"
tail -n 1 "$LOG/pgbench-init.log" | indent
info "pgbench -c 4 -T 10; meanwhile, every 2s: what the primary archived, what the standby replayed"
as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$PRIMARY_PORT" -U postgres -c 4 -j 2 -T 10 postgres >"$LOG/pgbench.log" 2>&1 &
PGBENCH_JOB=$!
printf '       %-6s %-10s %-26s %s\n' "time" "archived" "last archived" "standby replayed up to"
while kill -0 "$PGBENCH_JOB" 2>/dev/null; do
    IFS='|' read -r n last < <(sql "$PRIMARY_PORT" 'SELECT archived_count, last_archived_wal FROM pg_stat_archiver')
    printf '       %-6s %-10s %-26s %s\n' "$((SECONDS - T_LOAD))s" "$n" "$last" "$(sql "$STANDBY_PORT" 'SELECT pg_last_wal_replay_lsn()')"
    sleep 2
done
wait "$PGBENCH_JOB" || fail "pgbench failed (see $LOG/pgbench.log)"
grep -E '^(number of transactions actually processed|latency average|tps)' "$LOG/pgbench.log" | indent || true

# ---------------------------------------------------------------- 9. switch and ship

banner "Primary: pg_switch_wal(), wait until that segment is archived"
IFS='|' read -r SWITCH_LSN LAST_SEGMENT < <(sql "$PRIMARY_PORT" 'SELECT lsn, pg_walfile_name(lsn) FROM pg_switch_wal() AS lsn')
info "switched at $SWITCH_LSN; last segment to ship: $LAST_SEGMENT"
segment_archived() {
    [ "$(sql "$PRIMARY_PORT" "SELECT coalesce(last_archived_wal >= '$LAST_SEGMENT', false) FROM pg_stat_archiver")" = t ]
}
wait_until 90 "$LAST_SEGMENT to be archived" segment_archived
# The primary's data as of its last archived segment: the standby must show the same.
IFS='|' read -r P_COUNT P_SUM P_HISTORY < <(sql "$PRIMARY_PORT" \
    'SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history)')
info "primary: pgbench_accounts count=$P_COUNT sum(abalance)=$P_SUM; pgbench_history rows=$P_HISTORY"

banner "Segments arriving"
info "archive_dir $ARCHIVE: $(find "$ARCHIVE" -maxdepth 1 -type f -name '0*' | wc -l) files, newest:"
(cd "$ARCHIVE" && ls -l -- 0* | tail -n 3) | indent
info "pushes answered by the daemon: $(grep -c 'push answered' "$LOG/sender-daemon.log" || true)," \
    "of which from look-ahead: $(grep -c 'reply=ShippedAhead' "$LOG/sender-daemon.log" || true)"
info "primary, pg_stat_archiver:"
show "$PRIMARY_PORT" 'SELECT archived_count, last_archived_wal, last_archived_time, failed_count FROM pg_stat_archiver'
replayed_switch() {
    [ "$(sql "$STANDBY_PORT" "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '$SWITCH_LSN') >= 0")" = t ]
}
wait_until 90 "the standby to replay up to $SWITCH_LSN" replayed_switch
info "standby (read-only, hot standby):"
show "$STANDBY_PORT" 'SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn() AS replay_lsn,
    (SELECT count(*) FROM pgbench_accounts) AS accounts'
if "$BIN/walship-receiver" status --help >/dev/null 2>&1; then
    info "walship-receiver status:"
    as_pg "$BIN/walship-receiver" --config "$RCONF" status 2>&1 | indent ||
        info "(walship-receiver status exited ${PIPESTATUS[0]})"
fi

# ---------------------------------------------------------------- 10. failover

banner "FAILOVER: kill the primary (pg_ctl stop -m immediate)"
P_LAST_LSN=$(sql "$PRIMARY_PORT" 'SELECT pg_current_wal_insert_lsn()')
info "the primary's last WAL insert position: $P_LAST_LSN"
as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -m immediate -w stop >/dev/null
info "primary is gone: no shutdown checkpoint, nothing more archived"

if "$BIN/walship-receiver" promote --help >/dev/null 2>&1; then
    banner "Promote: walship-receiver promote (waits until everything archived is replayed)"
    as_pg "$BIN/walship-receiver" --config "$RCONF" promote --timeout 60 2>&1 | indent ||
        fail "walship-receiver promote exited ${PIPESTATUS[0]}"
else
    banner "Promote: pg_ctl promote"
    info "NOTE: this build has no 'walship-receiver promote'; falling back to pg_ctl promote."
    info "      pg_ctl promote also replays whatever the archive still holds before it"
    info "      ends recovery; the standby was seen above to have replayed $LAST_SEGMENT."
    as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -w promote >/dev/null || fail "pg_ctl promote failed"
fi
promoted() { [ "$(sql "$STANDBY_PORT" 'SELECT pg_is_in_recovery()')" = f ]; }
wait_until 60 "the standby to leave recovery" promoted

banner "Check: the promoted standby is writable, on timeline 2, with the primary's data"
# The timeline in pg_control changes with the first checkpoint after promotion.
sql "$STANDBY_PORT" 'CHECKPOINT' >/dev/null
TIMELINE=$(sql "$STANDBY_PORT" 'SELECT timeline_id FROM pg_control_checkpoint()')
show "$STANDBY_PORT" 'SELECT pg_is_in_recovery() AS in_recovery, timeline_id FROM pg_control_checkpoint()'
show "$STANDBY_PORT" "CREATE TABLE walship_demo (id int PRIMARY KEY, note text, at timestamptz DEFAULT now());
    INSERT INTO walship_demo VALUES (1, 'written after failover') RETURNING *"
IFS='|' read -r S_COUNT S_SUM S_HISTORY < <(sql "$STANDBY_PORT" \
    'SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history)')
printf '       %-28s %14s %14s\n' "" "old primary" "new primary" \
    "pgbench_accounts count" "$P_COUNT" "$S_COUNT" \
    "pgbench_accounts sum" "$P_SUM" "$S_SUM" \
    "pgbench_history rows" "$P_HISTORY" "$S_HISTORY"
[ "$TIMELINE" = 2 ] || fail "expected timeline 2 after promotion, found $TIMELINE"
[ "$P_COUNT|$P_SUM|$P_HISTORY" = "$S_COUNT|$S_SUM|$S_HISTORY" ] ||
    fail "data differs between the old primary and the promoted standby"
info "OK: writable, timeline $TIMELINE, data identical to the primary's at its last archived segment"
LOST=$(sql "$STANDBY_PORT" "SELECT greatest(0, pg_wal_lsn_diff('$P_LAST_LSN', pg_last_wal_replay_lsn()))")
info "WAL the old primary wrote but the standby never received: $LOST bytes (from its last insert position $P_LAST_LSN to the promotion point)"
if "$BIN/walship-receiver" status --help >/dev/null 2>&1; then
    info "walship-receiver status (the old timeline is now fenced: an old primary coming back cannot push to it):"
    as_pg "$BIN/walship-receiver" --config "$RCONF" status 2>&1 | indent ||
        info "(walship-receiver status exited ${PIPESTATUS[0]})"
fi

# ---------------------------------------------------------------- 11. the way back

T_BACK=$SECONDS
banner "Way back: a receiver on the old primary's host (127.0.0.1:$RECEIVER_A_PORT), pinned by its data directory"
info "In production: copy ca.pem and a server certificate for the old primary's host there, and a"
info "client certificate to the new primary (this demo runs both on one host and reuses the pair's)."
mkdir -p "$RDIR_A/certs" "$SDIR_B/certs" "$ARCHIVE_A"
cp -p "$WORK/ca/ca.pem" "$WORK/ca/server.pem" "$WORK/ca/server.key" "$RDIR_A/certs/"
cp -p "$WORK/ca/ca.pem" "$WORK/ca/client.pem" "$WORK/ca/client.key" "$SDIR_B/certs/"
chmod 0700 "$ARCHIVE_A" "$RDIR_A/certs" "$SDIR_B/certs"
cat >"$RCONF_A" <<EOF
# walship-receiver on the old primary's host: it feeds the old primary, now a
# standby of the promoted one.
listen = "127.0.0.1:$RECEIVER_A_PORT"
archive_dir = "archive"
cert = "certs/server.pem"
key = "certs/server.key"
client_ca = "certs/ca.pem"
pgdata = "$PRIMARY"
conninfo = "host=$SOCK port=$PRIMARY_PORT user=postgres dbname=postgres"
EOF
cat >"$SCONF_B" <<EOF
# walship-sender on the promoted standby's host: ships its WAL back.
receiver = "127.0.0.1:$RECEIVER_A_PORT"
server_name = "localhost"
ca = "certs/ca.pem"
cert = "certs/client.pem"
key = "certs/client.key"
connect_timeout = "10s"
EOF
if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$RDIR_A" "$SDIR_B"; fi
start_service receiver-a info "$BIN/walship-receiver" --config "$RCONF_A" serve
RECEIVER_A_JOB=$STARTED_JOB RECEIVER_A_PID=$STARTED_PID

banner "New primary: archive_command = walship-sender push to the old primary's host; pg_ctl reload"
ARCHIVE_COMMAND_B="$BIN/walship-sender --config $SCONF_B push %p %f"
cat >>"$STANDBY/postgresql.conf" <<EOF
# the way back: ship to the receiver on the old primary's host
archive_command = '$ARCHIVE_COMMAND_B'
EOF
as_pg "$PGBIN/pg_ctl" -D "$STANDBY" reload >/dev/null
info "archive_command = '$ARCHIVE_COMMAND_B'"
IFS='|' read -r B_SWITCH_LSN B_SEGMENT < <(sql "$STANDBY_PORT" 'SELECT lsn, pg_walfile_name(lsn) FROM pg_switch_wal() AS lsn')
b_archived() {
    [ "$(sql "$STANDBY_PORT" "SELECT coalesce(last_archived_wal >= '$B_SEGMENT', false) FROM pg_stat_archiver")" = t ]
}
wait_until 60 "$B_SEGMENT to be archived to the old primary's host" b_archived
info "the timeline-2 history file and segments (and the old timeline's .partial) are now on the old primary's host:"
(cd "$ARCHIVE_A" && ls -1 -- 0* | tail -n 4) | indent

banner "Old primary: pg_rewind from the new primary (copies only what changed since the fork)"
as_pg "$PGBIN/pg_rewind" --target-pgdata="$PRIMARY" \
    --source-server="host=$SOCK port=$STANDBY_PORT user=postgres dbname=postgres" \
    >"$LOG/pg_rewind.log" 2>&1 || fail "pg_rewind failed (see $LOG/pg_rewind.log)"
grep -E 'servers diverged|Done' "$LOG/pg_rewind.log" | indent || true
# pg_rewind copied the new primary's configuration files too: restore this host's settings
# (later lines win) and make it a standby fed by its own walship-receiver.
RESTORE_COMMAND_A="$BIN/walship-receiver --config $RCONF_A restore %f %p"
cat >>"$PRIMARY/postgresql.conf" <<EOF

# ---- the way back: the old primary is now a standby of the promoted one
port = $PRIMARY_PORT
hot_standby = on
restore_command = '$RESTORE_COMMAND_A'
wal_retrieve_retry_interval = '1s'
# used again once it is promoted back (step 15): ship to the original receiver
archive_command = '$ARCHIVE_COMMAND'
EOF
as_pg touch "$PRIMARY/standby.signal"
info "standby.signal; restore_command = '$RESTORE_COMMAND_A'"
# pg_rewind makes the old primary replay up to the new primary's position at the time of the
# rewind before it is consistent (and accepts connections): ship that segment first (the
# checkpoint puts a record past that position, so the switch has a segment to finish).
sql "$STANDBY_PORT" 'CHECKPOINT' >/dev/null
IFS='|' read -r B_SWITCH_LSN B_SEGMENT < <(sql "$STANDBY_PORT" 'SELECT lsn, pg_walfile_name(lsn) FROM pg_switch_wal() AS lsn')
wait_until 60 "$B_SEGMENT to be archived to the old primary's host" b_archived
as_pg "$PGBIN/pg_ctl" -D "$PRIMARY" -l "$LOG/primary.log" -w -t 120 start >/dev/null ||
    fail "the old primary did not start as a standby"

banner "Load on the new primary; the old primary follows through walship"
as_pg "$PGBIN/pgbench" -h "$SOCK" -p "$STANDBY_PORT" -U postgres -c 4 -j 2 -T 5 postgres >"$LOG/pgbench-b.log" 2>&1 ||
    fail "pgbench on the new primary failed (see $LOG/pgbench-b.log)"
grep -E '^tps' "$LOG/pgbench-b.log" | indent || true
sql "$STANDBY_PORT" "INSERT INTO walship_demo VALUES (2, 'written on the new primary before the switch back')" >/dev/null
# A planned switchover: stop writes, ship the last segment, wait until the old primary has
# replayed it, then stop the new primary cleanly.
IFS='|' read -r B_SWITCH_LSN B_SEGMENT < <(sql "$STANDBY_PORT" 'SELECT lsn, pg_walfile_name(lsn) FROM pg_switch_wal() AS lsn')
wait_until 90 "$B_SEGMENT to be archived to the old primary's host" b_archived
a_replayed() {
    [ "$(sql "$PRIMARY_PORT" "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '$B_SWITCH_LSN') >= 0")" = t ]
}
wait_until 90 "the old primary to replay up to $B_SWITCH_LSN" a_replayed
IFS='|' read -r B_COUNT B_SUM B_HISTORY B_DEMO < <(sql "$STANDBY_PORT" \
    'SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history), (SELECT count(*) FROM walship_demo)')
info "old primary, in recovery, has replayed the new primary's last segment:"
show "$PRIMARY_PORT" 'SELECT pg_is_in_recovery() AS in_recovery, pg_last_wal_replay_lsn() AS replay_lsn,
    (SELECT count(*) FROM walship_demo) AS demo_rows'

banner "SWITCHOVER back: stop the new primary (fast), walship-receiver promote on the old primary's host"
as_pg "$PGBIN/pg_ctl" -D "$STANDBY" -m fast -w stop >/dev/null || fail "the new primary did not stop"
info "new primary stopped cleanly"
as_pg "$BIN/walship-receiver" --config "$RCONF_A" promote --timeout 60 2>&1 | indent ||
    fail "walship-receiver promote on the old primary's host exited ${PIPESTATUS[0]}"
a_promoted() { [ "$(sql "$PRIMARY_PORT" 'SELECT pg_is_in_recovery()')" = f ]; }
wait_until 60 "the old primary to leave recovery" a_promoted
sql "$PRIMARY_PORT" 'CHECKPOINT' >/dev/null
TIMELINE_A=$(sql "$PRIMARY_PORT" 'SELECT timeline_id FROM pg_control_checkpoint()')
sql "$PRIMARY_PORT" "INSERT INTO walship_demo VALUES (3, 'written on the original primary after the way back')" >/dev/null
IFS='|' read -r A_COUNT A_SUM A_HISTORY A_DEMO < <(sql "$PRIMARY_PORT" \
    'SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT sum(abalance) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history), (SELECT count(*) - 1 FROM walship_demo)')
printf '       %-28s %14s %14s\n' "" "B (stopped)" "A (primary)" \
    "pgbench_accounts count" "$B_COUNT" "$A_COUNT" \
    "pgbench_accounts sum" "$B_SUM" "$A_SUM" \
    "pgbench_history rows" "$B_HISTORY" "$A_HISTORY" \
    "walship_demo rows" "$B_DEMO" "$A_DEMO"
[ "$TIMELINE_A" = 3 ] || fail "expected timeline 3 after the switch back, found $TIMELINE_A"
[ "$B_COUNT|$B_SUM|$B_HISTORY|$B_DEMO" = "$A_COUNT|$A_SUM|$A_HISTORY|$A_DEMO" ] ||
    fail "data differs between the new primary and the old primary after the switch back"
info "OK: the original primary is the primary again, writable, timeline $TIMELINE_A, data identical"
info "way back (receiver, pg_rewind, catch-up under load, switchover) took $((SECONDS - T_BACK))s"
info "the old host's archive fences timeline 2 now; the original receiver gets timeline 3 from here on."

printf '\n==== Demo complete in %ss (not counting the build)\n' "$((SECONDS - T0))"
