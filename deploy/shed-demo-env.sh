# Sourced by demo.sh and with-stack.sh. A shell that sourced the demo's env (as the demo's
# last lines suggest) names the demo's own database, topics, secrets and fake Stripe API:
# the stack, the tests and the next demo must not take those for their own. Its ports go
# too, when they are the ones the last demo wrote: a port set by hand stays chosen.
case "${LATTICE_DATABASE_URL:-}" in
  */lattice_demo | */lattice_demo\?*)
    unset LATTICE_DATABASE_URL LATTICE_TOPIC LATTICE_USAGE_TOPIC LATTICE_WEBHOOK_SECRETS \
      LATTICE_STRIPE_API_KEY LATTICE_STRIPE_API_BASE
    for shed_port in DEMO_RECEIVER_PORT DEMO_STRIPE_PORT; do
      if [ -n "${!shed_port:-}" ] &&
        grep -qx "export $shed_port=${!shed_port}" "${LATTICE_HOME:-.lattice}/demo/env" 2>/dev/null; then
        unset "$shed_port"
      fi
    done
    unset shed_port
    ;;
esac
