#!/usr/bin/env bash
# A local Prefect stack on this machine: server on loopback (SQLite, analytics off), the cpu and
# gpu process pools, every deployment of deploy/prefect.yaml, and one worker per pool.
# Prints the dashboard URL; Ctrl-C (or SIGTERM) stops everything it started, workers first.
#
#   PREFECT_PORT (default 4200)   PREFECT_HOME (default ./.prefect)   PREFECT (default .venv/bin/prefect)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PREFECT_PORT:-4200}
PREFECT=${PREFECT:-.venv/bin/prefect}
export PREFECT_HOME=${PREFECT_HOME:-$PWD/.prefect}
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_API_URL="http://127.0.0.1:${PORT}/api"
mkdir -p "$PREFECT_HOME"

server="" workers=()
# Job control: each service runs in its own process group, so stopping it also stops the flow-run
# processes a worker started; and, unlike a background job of a plain script, with SIGINT not
# ignored (a Prefect worker turns SIGTERM into SIGINT to itself, and an ignored SIGINT would leave
# it running). TERM first; whatever still runs after 10 s is killed, and the script says so.
set -m
stop_group() {
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 -- "-$1" 2>/dev/null || return 0; sleep 0.5; done
  echo "process group $1 ($2) did not stop within 10 s of SIGTERM; killed"
  kill -KILL -- "-$1" 2>/dev/null || true
}
stop() {
  trap - EXIT INT TERM
  for pid in "${workers[@]}"; do stop_group "$pid" worker; done
  [ -z "$server" ] || stop_group "$server" server
  echo "local stack stopped"
}
trap stop EXIT INT TERM

"$PREFECT" server start --host 127.0.0.1 --port "$PORT" >"$PREFECT_HOME/server.log" 2>&1 &
server=$!
for _ in $(seq 120); do
  "${PREFECT%/prefect}/python" - "$PREFECT_API_URL" 2>/dev/null <<'PY' && break
import sys, urllib.request
urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)
PY
  kill -0 "$server" 2>/dev/null || { echo "prefect server failed: see $PREFECT_HOME/server.log"; exit 1; }
  sleep 1
done

for pool in cpu gpu; do
  "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1 || "$PREFECT" work-pool create "$pool" --type process >/dev/null
done
"$PREFECT" --no-prompt deploy --all --prefect-file deploy/prefect.yaml >"$PREFECT_HOME/deploy.log" 2>&1 \
  || { cat "$PREFECT_HOME/deploy.log"; exit 1; }
for pool in cpu gpu; do
  "$PREFECT" worker start --pool "$pool" --type process >"$PREFECT_HOME/worker-$pool.log" 2>&1 &
  workers+=($!)
done

echo "Prefect dashboard: http://127.0.0.1:${PORT}"
echo "Run the pipeline:  PREFECT_API_URL=$PREFECT_API_URL $PREFECT deployment run survey-pipeline/survey-pipeline"
echo "Logs in $PREFECT_HOME; Ctrl-C stops the stack."
wait "$server" || true
