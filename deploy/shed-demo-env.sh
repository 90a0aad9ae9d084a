# Sourced by demo.sh and with-stack.sh. A shell that sourced the demo's env (as the demo's
# last lines suggest) names the demo's own database, topics, secrets and fake Stripe API:
# the stack, the tests and the next demo must not take those for their own.
case "${LATTICE_DATABASE_URL:-}" in
  */lattice_demo | */lattice_demo\?*)
    unset LATTICE_DATABASE_URL LATTICE_TOPIC LATTICE_USAGE_TOPIC LATTICE_WEBHOOK_SECRETS \
      LATTICE_STRIPE_API_KEY LATTICE_STRIPE_API_BASE DEMO_RECEIVER_PORT DEMO_STRIPE_PORT
    ;;
esac
