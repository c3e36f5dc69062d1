import { createHash, randomUUID } from "node:crypto"
import type { Vitest } from "@effect/vitest"
import { Effect } from "effect"
import { type CatalogJob, type Login, Store, type Stores } from "../../store/Store.ts"

/** The test methods of a contract suite: every test can ask for any store service. */
export type StoreIt = Vitest.MethodsNonLive<Stores>

export const unique = (label: string) => `${label}-${randomUUID().slice(0, 8)}`
export const hashOf = (secret: string) => new Uint8Array(createHash("sha256").update(secret).digest())
export const LEASE_MS = 60_000
export const loginOf = (
  peerId: string,
  overrides: Partial<Login & { leaseMs: number }> = {},
): Login & { leaseMs: number } => ({
  leaseMs: LEASE_MS,
  peerId,
  sessionId: randomUUID(),
  serverId: "server-a",
  serverIp: "10.0.0.1",
  os: "linux",
  distro: "debian",
  hostname: "host",
  agentVersion: "test",
  ...overrides,
})
export const job = (jobId: string, distro: string, command = "echo hi"): CatalogJob => ({
  job_id: jobId,
  name: `Job ${jobId}`,
  os: "linux",
  distro,
  command,
  timeout_ms: 5_000,
})
export const newResult = (ticket: string, peerId: string, sessionId: string, epoch = 1) => ({
  ticket,
  peerId,
  sessionId,
  epoch,
  serverId: "server-a",
  status: "succeeded" as const,
  exitCode: 0,
  output: "file1 file2",
  truncated: false,
  startedAt: Date.now() - 5,
  finishedAt: Date.now(),
})

/** A peer logged in, a catalog of two jobs, and a ticket for each. */
export const ticketsSetup = Effect.gen(function* () {
  const store = yield* Store
  const peerId = unique("peer")
  const login = loginOf(peerId)
  yield* store.login(login)
  yield* store.replaceCatalog([job("list", "debian", "ls -al"), job("mem", "debian", "free -h")])
  const jobs = yield* store.jobsFor("linux", "debian")
  const tickets = yield* store.createTickets({
    peerId,
    sessionId: login.sessionId,
    serverId: "server-a",
    jobs,
  })
  return { store, peerId, login, tickets }
})
