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
trap 'exit 130' INT TERM
"$lattice" stack up || exit $?
# shellcheck disable=SC1091
. "${LATTICE_HOME:-.lattice}/stack.env"
"$@"
