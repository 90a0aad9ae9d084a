// The peer: Supabase's stripe-sync-engine behind a plain node:http server, the way its
// README wires it (verify the signature, upsert the object into PostgreSQL, answer 200).
// Never part of Lattice; run only by `python -m tests.benchmarks e2e --peer`.
// CommonJS: the package's ESM build refers to __dirname to find its migrations.
const http = require('node:http')
const { StripeSync, runMigrations } = require('@supabase/stripe-sync-engine')

const { PEER_DATABASE_URL, PEER_PORT, PEER_WEBHOOK_SECRET } = process.env

async function main() {
await runMigrations({ databaseUrl: PEER_DATABASE_URL, schema: 'stripe', logger: { info() {}, warn() {}, error: console.error } })
const sync = new StripeSync({
  poolConfig: { connectionString: PEER_DATABASE_URL, max: 10 },
  schema: 'stripe',
  stripeSecretKey: 'sk_test_peer_benchmark_no_api_calls',
  stripeWebhookSecret: PEER_WEBHOOK_SECRET,
  // The payload is trusted as sent: no call to Stripe's API during the benchmark.
  backfillRelatedEntities: false,
  autoExpandLists: false,
  revalidateObjectsViaStripeApi: [],
})

// A Content-Length on every answer, as the load client (and Stripe) reads them.
function reply(res, status, body) {
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  })
  res.end(body)
}

http
  .createServer((req, res) => {
    if (req.method === 'GET') {
      reply(res, 200, '{"ready":true}')
      return
    }
    const chunks = []
    req.on('data', (chunk) => chunks.push(chunk))
    req.on('end', async () => {
      try {
        await sync.processWebhook(Buffer.concat(chunks), req.headers['stripe-signature'])
        reply(res, 200, '{"received":true}')
      } catch (error) {
        reply(res, 400, JSON.stringify({ error: String(error.message).slice(0, 200) }))
      }
    })
  })
  .listen(Number(PEER_PORT), '127.0.0.1', () => console.log(`peer listening on ${PEER_PORT}`))
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
