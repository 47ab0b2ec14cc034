#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the store tests and print its SQLAlchemy URL.
# Uses Debian's postgresql binaries (installed by .ci/run); prints nothing and exits 0 when they are absent.
#   export LAYOUTCAST_TEST_PG_URL=$(scripts/pg_server.sh)
set -euo pipefail
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$BIN" ] && [ -x "$BIN/initdb" ] || exit 0
PORT=${LAYOUTCAST_PG_PORT:-55432}
DIR=${LAYOUTCAST_PG_DIR:-/tmp/layoutcast-pg}
RUN_AS=""
if [ "$(id -u)" = "0" ]; then RUN_AS="runuser -u postgres --"; fi
if ! $RUN_AS "$BIN/pg_ctl" -D "$DIR" status >/dev/null 2>&1; then
  rm -rf "$DIR"; mkdir -p "$DIR"
  [ -n "$RUN_AS" ] && chown postgres "$DIR"
  $RUN_AS "$BIN/initdb" -D "$DIR" -U lc --auth=trust >/dev/null
  $RUN_AS "$BIN/pg_ctl" -D "$DIR" -l "$DIR/server.log" -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1" -w start >/dev/null
  $RUN_AS "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U lc lctest
fi
echo "postgresql://lc@127.0.0.1:$PORT/lctest"
