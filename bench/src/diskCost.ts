// The disk cost of the record: fills a fresh database through the store (the statements the
// servers run) with 1,000 sessions (a login and a logout each), then 1,000 tickets with their
// results, and prints what each added, from pg_total_relation_size (tables, indexes and TOAST).
// Usage: node bench/src/diskCost.ts  (DATABASE_URL: a server to make the scratch database on)
import { randomBytes, randomUUID } from "node:crypto"
import { type CatalogJob, Store } from "@picus/core"
import { Effect } from "effect"
import pg from "pg"
import { PgStore } from "server"

const admin = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres"
const name = `picus_disk_${randomBytes(4).toString("hex")}`
const urlOf = (database: string) => {
  const url = new URL(admin)
  url.pathname = `/${database}`
  return url.toString()
}
const adminClient = new pg.Client({ connectionString: urlOf("postgres") })
await adminClient.connect()
await adminClient.query(`create database "${name}"`)
const client = new pg.Client({ connectionString: urlOf(name) })

/** Bytes of every table of the schema, with its indexes and TOAST. */
const sizes = async () => {
  const { rows } = await client.query<{ table: string; bytes: string }>(`
    select c.relname as table, pg_total_relation_size(c.oid)::bigint as bytes
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = 'public' and c.relkind = 'r'
  `)
  return new Map(rows.map((r) => [r.table, Number(r.bytes)]))
}
const delta = (before: Map<string, number>, after: Map<string, number>) => {
  const grown = [...after].map(([t, b]) => [t, b - (before.get(t) ?? 0)] as const).filter(([, d]) => d > 0)
  const total = grown.reduce((a, [, d]) => a + d, 0)
  return { total, grown: grown.sort((a, b) => b[1] - a[1]) }
}
const kib = (bytes: number) => `${(bytes / 1024).toFixed(0)} KiB`

const PEERS = 100
const SESSIONS = 1_000
const TICKETS = 1_000
// A typical short job's output (a line or two); output is stored as the peer sent it, up to its cap.
const OUTPUT = "Linux web-1 6.1.0-18-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 x86_64 GNU/Linux\n"

const fill = Effect.gen(function* () {
  const store = yield* Store
  yield* Effect.promise(() => client.connect())
  const job: CatalogJob = {
    job_id: "uname",
    name: "Kernel",
    os: "linux",
    distro: "debian",
    command: "uname -a",
    timeout_ms: 30_000,
  }
  yield* store.replaceCatalog(Array.from({ length: 10 }, (_, i) => ({ ...job, job_id: `job-${i}` })))
  const login = (peerId: string) => {
    const sessionId = randomUUID()
    return store
      .login({
        leaseMs: 60_000,
        peerId,
        sessionId,
        serverId: "server-a",
        serverIp: "10.0.0.1",
        os: "linux",
        distro: "debian",
        hostname: peerId,
        agentVersion: "1.0.0",
      })
      .pipe(Effect.as(sessionId))
  }
  // Peers registered once, so the sessions' cost is the sessions', not the peers'.
  const first = yield* Effect.forEach(
    Array.from({ length: PEERS }, (_, i) => `peer-${i}`),
    (peerId) => Effect.map(login(peerId), (sessionId) => ({ peerId, sessionId })),
  )
  for (const s of first)
    yield* store.logout({ ...s, epoch: 1, reason: "peer_shutdown", serverId: "server-a" })
  const before = yield* Effect.promise(sizes)
  for (let i = 0; i < SESSIONS; i++) {
    const peerId = `peer-${i % PEERS}`
    const sessionId = yield* login(peerId)
    yield* store.logout({ peerId, sessionId, epoch: 1, reason: "peer_shutdown", serverId: "server-a" })
  }
  const afterSessions = yield* Effect.promise(sizes)
  const jobs = yield* store.jobsFor("linux", "debian")
  const open = yield* Effect.forEach(
    Array.from({ length: TICKETS / jobs.length }, (_, i) => `peer-${i}`),
    login,
  )
  const beforeTickets = yield* Effect.promise(sizes)
  for (const [i, sessionId] of open.entries()) {
    const peerId = `peer-${i}`
    const tickets = yield* store.createTickets({ peerId, sessionId, serverId: "server-a", jobs })
    const now = Date.now()
    yield* store.recordResults(
      tickets.map((t) => ({
        ticket: t.ticket,
        peerId,
        sessionId,
        epoch: 1,
        serverId: "server-a",
        status: "succeeded" as const,
        exitCode: 0,
        output: OUTPUT,
        truncated: false,
        startedAt: now - 20,
        finishedAt: now,
      })),
    )
  }
  const afterTickets = yield* Effect.promise(sizes)
  return { sessions: delta(before, afterSessions), tickets: delta(beforeTickets, afterTickets) }
})

try {
  const measured = await Effect.runPromise(fill.pipe(Effect.provide(PgStore.layer(urlOf(name)))))
  for (const [what, d] of Object.entries(measured)) {
    console.log(`per 1,000 ${what}: ${kib(d.total)}`)
    for (const [table, bytes] of d.grown) console.log(`  ${table.padEnd(20)} ${kib(bytes)}`)
  }
} finally {
  await client.end()
  await adminClient.query(`drop database "${name}" with (force)`)
  await adminClient.end()
}
