#!/usr/bin/env bash
# Start and stop the Kamailio presence server (kamailio.cfg beside this file)
# that bench/sipp_bench.py uses as its PUBLISH baseline.
#
#   run.sh start    new SQLite database in $RUNDIR, start Kamailio, wait until
#                   UDP and TCP 127.0.0.1:5070 are bound, print its PID
#   run.sh stop     SIGTERM, wait up to 10 s, then SIGKILL
#   run.sh status   "running <pid>" or "stopped"
#   run.sh pids     the main PID and its children, one a line (CPU accounting)
#
# Environment:
#   RUNDIR      scratch directory: database, pid files, log, control socket
#               (default /tmp/escbench/kamailio; removed and re-created by start)
#   PUBL_CACHE  1 = publications written through to SQLite (default),
#               2 = publications in memory only
#   CHILDREN    UDP workers (-n) and TCP readers (default 2)
#   JOURNAL     SQLite journal mode, e.g. WAL; empty = SQLite's default
#               (DELETE). db_sqlite 5.6 leaves synchronous at FULL whatever
#               the mode.
#   SHM_MB      shared memory in MB (default 4096): tm keeps every transaction
#               about 5 s after its reply, which at 16,000 PUBLISH/s peaked
#               near 1.1 GB
#   PRELOAD_SQL an SQL file run on the new database before Kamailio starts
#               (default none). bench/notify_bench.py uses it to authorize its
#               watchers in advance (rows in the `watchers` table with status 1,
#               active): presence_xml looks every new subscription up there and,
#               when none is found, inserts one, and two workers inserting into
#               SQLite at once get "database is locked" (db_sqlite sets no busy
#               timeout) and answer 500. The PUBLISH benchmark sets nothing.
#
# Needs the Debian packages kamailio, kamailio-presence-modules,
# kamailio-sqlite-modules and sqlite3, and `ss` (iproute2).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CFG="$HERE/kamailio.cfg"
RUNDIR="${RUNDIR:-/tmp/escbench/kamailio}"
PUBL_CACHE="${PUBL_CACHE:-1}"
CHILDREN="${CHILDREN:-2}"
JOURNAL="${JOURNAL:-}"
SHM_MB="${SHM_MB:-4096}"
PRELOAD_SQL="${PRELOAD_SQL:-}"
DB="$RUNDIR/presence.db"
PIDFILE="$RUNDIR/kamailio.pid"
LOG="$RUNDIR/kamailio.log"
# Kamailio's own SQLite schema, shipped by kamailio-sqlite-modules.
SCHEMA_DIR="${SCHEMA_DIR:-/usr/share/kamailio/db_sqlite}"
ADDRESS="127.0.0.1:5070"

pid_alive() { [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

# Kamailio's pid file (-P) names the main process; the launcher's PID is the
# same process and serves when the pid file is not written yet.
main_pid() { cat "$PIDFILE" 2>/dev/null || cat "$RUNDIR/launcher.pid"; }

bound() {
    ss -lun | grep -q "$ADDRESS " && ss -ltn | grep -q "$ADDRESS "
}

start() {
    if pid_alive; then echo "already running: $(cat "$PIDFILE")" >&2; exit 1; fi
    rm -rf "$RUNDIR"
    mkdir -p "$RUNDIR"
    sqlite3 "$DB" < "$SCHEMA_DIR/standard-create.sql"   # the version table
    sqlite3 "$DB" < "$SCHEMA_DIR/presence-create.sql"
    if [[ -n "$PRELOAD_SQL" ]]; then
        sqlite3 "$DB" < "$PRELOAD_SQL"
    fi
    local -a defines=(-A "DBURL=\"sqlite://$DB\""
                      -A "PUBL_CACHE=$PUBL_CACHE"
                      -A "CTLSOCK=\"unix:$RUNDIR/kamailio_ctl\""
                      -A "TCP_CHILDREN=$CHILDREN")
    if [[ "${JOURNAL^^}" == WAL ]]; then
        # WAL is a property of the file: set it once here. Having each
        # Kamailio process switch the mode at start-up makes them race on the
        # database (db_sqlite sets no busy timeout), and a child that gets
        # "database is locked" brings Kamailio down.
        sqlite3 "$DB" "PRAGMA journal_mode=WAL;" >/dev/null
    elif [[ -n "$JOURNAL" ]]; then
        # Other modes last one connection, so db_sqlite must set them. It
        # matches the database by the path it parsed from the URL, which is
        # "sqlite:///tmp/x.db" minus the separating slash: "tmp/x.db".
        defines+=(-A "DBJOURNAL=\"${DB#/}=$JOURNAL\"")
    fi
    # -DD: foreground, own process group; -E: log to stderr (captured in $LOG).
    kamailio -f "$CFG" -DD -E -n "$CHILDREN" -m "$SHM_MB" -M 16 \
        -P "$PIDFILE" -Y "$RUNDIR" "${defines[@]}" \
        >"$LOG" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" > "$RUNDIR/launcher.pid"
    for _ in $(seq 1 50); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "kamailio exited during start-up; its log:" >&2
            cat "$LOG" >&2
            exit 1
        fi
        if [[ -s "$PIDFILE" ]] && bound; then
            sleep 0.3   # let the workers finish their own start-up
            echo "$pid"
            return 0
        fi
        sleep 0.1
    done
    echo "kamailio did not bind $ADDRESS (UDP and TCP) within 5 s" >&2
    exit 1
}

stop() {
    local pid
    pid="$(main_pid 2>/dev/null || true)"
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
        echo "not running"
        rm -f "$PIDFILE"
        return 0
    fi
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            echo "stopped $pid"
            return 0
        fi
        sleep 0.1
    done
    # sipp_bench.py looks for the word SIGKILL here to report an unclean stop.
    echo "kamailio $pid still running 10 s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

pids() {
    pid_alive || { echo "not running" >&2; exit 1; }
    local pid
    pid="$(cat "$PIDFILE")"
    echo "$pid"
    ps -o pid= --ppid "$pid" | tr -d ' '
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) if pid_alive; then echo "running $(cat "$PIDFILE")"; else echo "stopped"; fi ;;
    pids) pids ;;
    *) echo "usage: $0 start|stop|status|pids" >&2; exit 2 ;;
esac
