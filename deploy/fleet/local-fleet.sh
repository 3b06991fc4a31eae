#!/usr/bin/env bash
# A fleet on one machine: a throwaway PostgreSQL cluster holding the lake's catalog, one shared
# data folder, and three lakewarden sidecars on ports 7117, 7118 and 7119, all on one lake.
#
#   deploy/fleet/local-fleet.sh [DIR]      # DIR (default ./lakewarden-fleet) keeps cluster and data
#
# Needs Debian's `postgresql` package (initdb, pg_ctl) and lakewarden installed. Ctrl-C stops
# the sidecars and the cluster; the lake stays in DIR. See docs/fleet.md.
set -euo pipefail

DIR=$(realpath -m "${1:-lakewarden-fleet}")
PORTS=(${LAKEWARDEN_FLEET_PORTS:-7117 7118 7119})
PG_PORT=${LAKEWARDEN_FLEET_PG_PORT:-55432}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    echo "PostgreSQL's initdb is not installed: apt-get install postgresql" >&2
    exit 2
fi
command -v lakewarden >/dev/null || { echo "lakewarden is not installed: pip install ." >&2; exit 2; }

# initdb refuses to run as root: the cluster then belongs to the package's postgres user.
AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi

mkdir -p "$DIR/data"
if [ ! -d "$DIR/pg" ]; then
    install -d -m 700 "$DIR/pg"
    PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    echo "$PASSWORD" > "$DIR/pg.password" && chmod 600 "$DIR/pg.password"
    if [ "${#AS[@]}" -gt 0 ]; then chown postgres "$DIR/pg" "$DIR/pg.password"; fi
    "${AS[@]}" "$BIN/initdb" -D "$DIR/pg" -U lakewarden --pwfile="$DIR/pg.password" \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
fi
"${AS[@]}" "$BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/pg/postgres.log" -w \
    -o "-p $PG_PORT -k $DIR/pg -c listen_addresses=127.0.0.1" start >/dev/null
PIDS=()
stop() {
    trap - INT TERM EXIT
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "${PIDS[@]}" 2>/dev/null || true
    "${AS[@]}" "$BIN/pg_ctl" -D "$DIR/pg" -m fast stop >/dev/null || true
    echo "fleet stopped; the lake stays in $DIR"
}
trap stop INT TERM EXIT

export PGPASSWORD=$(cat "$DIR/pg.password")
DSN="dbname=lake host=127.0.0.1 port=$PG_PORT user=lakewarden"
psql -h 127.0.0.1 -p "$PG_PORT" -U lakewarden -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'lake'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$PG_PORT" -U lakewarden -d postgres -qc "CREATE DATABASE lake"

export LAKEWARDEN_LAKE="postgres:$DSN" LAKEWARDEN_DATA_PATH="$DIR/data"
for port in "${PORTS[@]}"; do
    lakewarden serve --port "$port" 2>>"$DIR/sidecar-$port.log" &
    PIDS+=($!)
done
for port in "${PORTS[@]}"; do
    for _ in $(seq 1 240); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.5
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null \
        || { echo "the sidecar on $port did not start: $DIR/sidecar-$port.log" >&2; exit 1; }
    echo "sidecar ready: http://127.0.0.1:$port (metrics /metrics, MCP /mcp/)"
done
echo "one lake: postgres:$DSN, data in $DIR/data (PGPASSWORD in $DIR/pg.password); Ctrl-C stops"
wait "${PIDS[@]}"
