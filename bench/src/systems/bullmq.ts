import { randomBytes } from "node:crypto"
import { type Job, Queue, Worker } from "bullmq"
import pg from "pg"
import { Batcher } from "../batcher.ts"
import { wallNow } from "../clock.ts"
import { submitAtRate, type Warmup, warmupOf } from "../pace.ts"
import {
  countQueries,
  createBenchDatabase,
  fakeAnswer,
  flushPgStats,
  insertResultSql,
  insertResults,
  type ResultRow,
  StatementTally,
  ticketCommand,
  verifyResultCount,
} from "../pg.ts"
import type { BenchEnv, BenchSystem, MeasuredWindow, RunResult, SystemEntry } from "../system.ts"
import { Tracker } from "../tracker.ts"

/**
 * BullMQ as typically used: one Queue, one Worker with `concurrency` = workers, results written to
 * PostgreSQL through a node-postgres Pool from inside the processor, so a job completes only once its
 * result is committed. Settings are the library defaults except the usual auto-removal of finished
 * jobs (keep the last 1000 completed and 5000 failed).
 *
 * - "bullmq": one INSERT per result.
 * - "bullmq-batched": the processor hands its row to a Batcher (a multi-row INSERT every
 *   `batchRows` rows or `batchDelayMs`) and returns once that INSERT has committed.
 */

interface TicketData {
  readonly ticket: number
  readonly command: string
  /** Wall-clock ms of creation, written to the result row. */
  readonly createdAt: number
}

/** Submission chunk size for saturation runs (Queue.addBulk). */
const addBulkSize = 500
/** node-postgres Pool size: the default (10). */
const poolSize = 10
const batchRows = 100
const batchDelayMs = 2

const makeSystem = (name: string, batched: boolean, env: BenchEnv): BenchSystem => {
  const redis = new URL(env.redisUrl)
  const connection = { host: redis.hostname, port: Number(redis.port || 6379) }
  let queueName = ""
  let pool: pg.Pool | undefined
  let dbUrl = ""
  let dropDb: (() => Promise<void>) | undefined
  /** The workers' statements, and the harness's own (flushing statistics). */
  const tally = new StatementTally()
  const harness = new StatementTally()
  let queue: Queue<TicketData> | undefined
  let worker: Worker<TicketData> | undefined

  const setup = async (): Promise<void> => {
    queueName = `bench-${name}-${randomBytes(4).toString("hex")}`
    const db = await createBenchDatabase(env.pgAdminUrl, name)
    dropDb = db.drop
    dbUrl = db.url
    pool = new pg.Pool({ connectionString: db.url, max: poolSize })
    // Dropping the database at teardown ends idle connections: not an error of the run.
    pool.on("error", () => {})
    countQueries(pool, tally)
    queue = new Queue<TicketData>(queueName, { connection })
    await queue.waitUntilReady()
  }

  /** Starts the worker, runs `produce`, waits for every result, checks the count in PostgreSQL. */
  const run = async (
    capacity: number,
    workers: number,
    produce: (tracker: Tracker, q: Queue<TicketData>, offset: number) => Promise<number>,
    mode: RunResult["mode"],
    window: MeasuredWindow | undefined,
    targetRate?: number,
    warmup?: Warmup<(first: number, count: number) => Promise<void>>,
  ): Promise<RunResult> => {
    const p = pool!
    const q = queue!
    const offset = warmup?.tickets ?? 0
    const tracker = new Tracker(offset + capacity)
    let errors = 0
    const batcher = new Batcher<ResultRow>((rows) => insertResults(p, rows), batchRows, batchDelayMs)
    const processor = async (job: Job<TicketData>): Promise<void> => {
      const { ticket, createdAt } = job.data
      const row: ResultRow = { ticket, createdAt, ...fakeAnswer }
      if (batched) {
        tracker.markCommitted(ticket, await batcher.add(row))
      } else {
        await p.query(insertResultSql, [row.ticket, row.status, row.exitCode, row.output, row.createdAt])
        tracker.markCommitted(ticket)
      }
    }
    const w = new Worker<TicketData>(queueName, processor, {
      connection,
      concurrency: workers,
      removeOnComplete: { count: 1000 },
      removeOnFail: { count: 5000 },
    })
    worker = w
    w.on("failed", () => {
      errors++
    })
    w.on("error", () => {
      errors++
    })
    await w.waitUntilReady()
    if (warmup)
      await tracker.waitAll(await warmup.produce((first, count) => addAtRate(tracker, q, first, count)))
    await window?.begin()
    const total = await produce(tracker, q, offset)
    await tracker.waitAll(offset + total)
    await batcher.drain()
    await window?.end()
    await verifyResultCount(p, name, offset + total)
    return tracker.result(name, mode, total, errors, targetRate, offset)
  }

  const jobOf = (ticket: number, createdAt: number) => ({
    name: "ticket",
    data: { ticket, command: ticketCommand, createdAt },
  })

  const saturation = (tickets: number, workers: number, window?: MeasuredWindow): Promise<RunResult> =>
    run(
      tickets,
      workers,
      async (tracker, q) => {
        for (let first = 0; first < tickets; first += addBulkSize) {
          const count = Math.min(addBulkSize, tickets - first)
          const at = wallNow()
          const jobs = []
          for (let i = first; i < first + count; i++) {
            tracker.markCreated(i, at)
            jobs.push(jobOf(i, at))
          }
          await q.addBulk(jobs)
        }
        return tickets
      },
      "saturation",
      window,
    )

  /** One add per ticket, those due together side by side. */
  const addAtRate = async (tracker: Tracker, q: Queue<TicketData>, first: number, count: number) => {
    const at = wallNow()
    const adds: Promise<unknown>[] = []
    for (let i = first; i < first + count; i++) {
      tracker.markCreated(i, at)
      const job = jobOf(i, at)
      adds.push(q.add(job.name, job.data))
    }
    await Promise.all(adds)
  }

  const atRate = (
    ratePerSecond: number,
    durationMs: number,
    workers: number,
    window?: MeasuredWindow,
    warmupMs = 0,
  ): Promise<RunResult> =>
    run(
      Math.max(1, Math.round((ratePerSecond * durationMs) / 1000)),
      workers,
      (tracker, q, offset) =>
        submitAtRate(ratePerSecond, durationMs, (first, count) =>
          addAtRate(tracker, q, offset + first, count),
        ),
      "rate",
      window,
      ratePerSecond,
      warmupOf(ratePerSecond, warmupMs, (submit) => submitAtRate(ratePerSecond, warmupMs, submit)),
    )

  const counters = async () => {
    await flushPgStats(pool!, harness)
    return {
      databaseUrl: dbUrl,
      benchStatements: tally.snapshot(),
      harnessStatements: harness.statements,
      pgStatsFlushed: true,
    }
  }

  const teardown = async (): Promise<void> => {
    await worker?.close()
    worker = undefined
    if (queue !== undefined) {
      await queue.obliterate({ force: true }).catch(() => {})
      await queue.close()
      queue = undefined
    }
    await pool?.end()
    pool = undefined
    await dropDb?.()
    dropDb = undefined
  }

  return { name, setup, saturation, atRate, teardown, counters }
}

export const bullmq: SystemEntry = { name: "bullmq", create: (env) => makeSystem("bullmq", false, env) }
export const bullmqBatched: SystemEntry = {
  name: "bullmq-batched",
  create: (env) => makeSystem("bullmq-batched", true, env),
}
