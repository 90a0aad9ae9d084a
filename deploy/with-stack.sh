#!/usr/bin/env bash
# Run a command with the local stack up and its stack.env sourced (in LATTICE_HOME,
# .lattice by default); stop afterwards what this script started (even when
# the command fails or is interrupted).
set -uo pipefail
cd "$(dirname "$0")/.."
lattice=.venv/bin/lattice
# shellcheck source=deploy/shed-demo-env.sh
. deploy/shed-demo-env.sh
# Stop afterwards only what was not running before (a broker of the user's keeps running).
running=$("$lattice" stack status 2>/dev/null)
stop_after=()
for service in kafka postgresql; do
  grep -Eq "^$service +running" <<<"$running" || stop_after+=(--only "$service")
done
cleanup() {
  if [ ${#stop_after[@]} -gt 0 ]; then "$lattice" stack down "${stop_after[@]}" || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
"$lattice" stack up || exit $?
# shellcheck disable=SC1091
. "${LATTICE_HOME:-.lattice}/stack.env"
# The command runs in the background so that a SIGTERM sent to this script alone (a CI
# job's timeout, a supervisor) reaches it at once: bash runs a trap only after the
# foreground command ends. A background command would ignore SIGINT and read /dev/null:
# both are given back (Ctrl-C in a terminal reaches it directly, as before).
.venv/bin/python -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as exc:
    print(f"with-stack.sh: {sys.argv[1]}: {exc.strerror}", file=sys.stderr)
    os._exit(127)' "$@" <&0 &
child=$!
trap 'wait "$child"; exit 130' INT
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
wait "$child"
