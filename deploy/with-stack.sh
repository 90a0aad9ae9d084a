#!/usr/bin/env bash
# Run a command with the local stack up and its stack.env sourced (in LATTICE_HOME,
# .lattice by default); stop the stack afterwards if this script started it (even when
# the command fails or is interrupted).
set -uo pipefail
cd "$(dirname "$0")/.."
lattice=.venv/bin/lattice
if "$lattice" stack status >/dev/null 2>&1; then started=0; else started=1; fi
cleanup() {
  if [ "$started" = 1 ]; then "$lattice" stack down || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$lattice" stack up || exit $?
# shellcheck disable=SC1091
. "${LATTICE_HOME:-.lattice}/stack.env"
"$@"
