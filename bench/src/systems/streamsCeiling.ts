import { randomBytes } from "node:crypto"
import { Redis } from "ioredis"
import pg from "pg"
import { wallNow } from "../clock.ts"
import { submitAtRate, type Warmup, warmupOf } from "../pace.ts"
import {
  countQueries,
  createBenchDatabase,
  fakeAnswer,
  flushPgStats,
  insertResults,
  insertTickets,
  type ResultRow,
  StatementTally,
  ticketCommand,
  verifyResultCount,
} from "../pg.ts"
import type { BenchEnv, BenchSystem, MeasuredWindow, RunResult, SystemEntry } from "../system.ts"
import { Tracker } from "../tracker.ts"

/**
 * The ceiling of our design, with nothing but Redis Streams and PostgreSQL:
 * - a producer batch-INSERTs tickets into PostgreSQL, then XADDs them to a work stream;
 * - `workers` simulated workers in this process, sharing `readerConnections` blocking connections
 *   (one consumer per connection, reading as many entries as it has idle workers), answer each
 *   ticket by XADDing a result to a results stream and XACKing the ticket, over one shared
 *   write connection;
 * - a collector XREADGROUPs results in batches, INSERTs each batch in one statement, then XACKs it:
 *   a result is durable before it is acknowledged.
 */

const readerConnections = 5
const producerChunk = 500
const collectorBatch = 1000
const blockMs = 100
const poolSize = 4

type StreamReply = [key: string, entries: [id: string, fields: string[] | null][]][] | null

const field = (fields: ReadonlyArray<string>, name: string): string => {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]!
  throw new Error(`stream entry without ${name}`)
}

const makeSystem = (env: BenchEnv): BenchSystem => {
  const name = "streams-ceiling"
  let prefix = ""
  let pool: pg.Pool | undefined
  let dbUrl = ""
  /** The system's statements, and the harness's own (flushing statistics). */
  const tally = new StatementTally()
  const harness = new StatementTally()
  let dropDb: (() => Promise<void>) | undefined
  const clients: Redis[] = []
  const connect = (): Redis => {
    const c = new Redis(env.redisUrl, { protocol: 2, maxRetriesPerRequest: 3 })
    clients.push(c)
    return c
  }

  const setup = async (): Promise<void> => {
    prefix = `bench:${name}:${randomBytes(4).toString("hex")}:`
    const db = await createBenchDatabase(env.pgAdminUrl, name)
    dropDb = db.drop
    dbUrl = db.url
    pool = new pg.Pool({ connectionString: db.url, max: poolSize })
    // Dropping the database at teardown ends idle connections: not an error of the run.
    pool.on("error", () => {})
    countQueries(pool, tally)
  }

  const run = async (
    capacity: number,
    workers: number,
    produce: (submit: (first: number, count: number) => Promise<void>) => Promise<number>,
    mode: RunResult["mode"],
    window: MeasuredWindow | undefined,
    targetRate?: number,
    warmup?: Warmup<(first: number, count: number) => Promise<void>>,
  ): Promise<RunResult> => {
    const p = pool!
    const work = `${prefix}work`
    const results = `${prefix}results`
    const offset = warmup?.tickets ?? 0
    const tracker = new Tracker(offset + capacity)
    let errors = 0
    let running = true

    const producer = connect()
    const writer = connect()
    await producer.xgroup("CREATE", work, "workers", "$", "MKSTREAM")
    await producer.xgroup("CREATE", results, "collector", "$", "MKSTREAM")

    // Workers: each reader connection serves a share of the workers.
    const readerLoop = async (reader: Redis, consumer: string, capacity: number): Promise<void> => {
      let idle = capacity
      let wake: (() => void) | undefined
      const answer = async (id: string, fields: string[]): Promise<void> => {
        try {
          await Promise.all([
            writer.xadd(
              results,
              "*",
              "ticket",
              field(fields, "ticket"),
              "created",
              field(fields, "created"),
              "status",
              fakeAnswer.status,
              "exit_code",
              String(fakeAnswer.exitCode),
              "output",
              fakeAnswer.output,
            ),
            writer.xack(work, "workers", id),
          ])
        } catch {
          errors++
        } finally {
          idle++
          wake?.()
        }
      }
      while (running) {
        if (idle === 0) {
          await new Promise<void>((resolve) => {
            wake = resolve
          })
          wake = undefined
          continue
        }
        let reply: StreamReply
        try {
          reply = (await reader.xreadgroup(
            "GROUP",
            "workers",
            consumer,
            "COUNT",
            idle,
            "BLOCK",
            blockMs,
            "STREAMS",
            work,
            ">",
          )) as StreamReply
        } catch {
          if (running) errors++
          continue
        }
        for (const [, entries] of reply ?? []) {
          for (const [id, fields] of entries) {
            idle--
            void answer(id, fields ?? [])
          }
        }
      }
    }

    // Collector: batch of results -> one INSERT -> XACK.
    const collectorLoop = async (reader: Redis): Promise<void> => {
      while (running) {
        let reply: StreamReply
        try {
          reply = (await reader.xreadgroup(
            "GROUP",
            "collector",
            "collector",
            "COUNT",
            collectorBatch,
            "BLOCK",
            blockMs,
            "STREAMS",
            results,
            ">",
          )) as StreamReply
        } catch {
          if (running) errors++
          continue
        }
        for (const [, entries] of reply ?? []) {
          if (entries.length === 0) continue
          const rows: ResultRow[] = entries.map(([, fields]) => {
            const f = fields ?? []
            return {
              ticket: Number(field(f, "ticket")),
              createdAt: Number(field(f, "created")),
              status: field(f, "status"),
              exitCode: Number(field(f, "exit_code")),
              output: field(f, "output"),
            }
          })
          try {
            await insertResults(p, rows)
          } catch {
            errors++
            continue // left pending, not acknowledged
          }
          const at = wallNow()
          for (const r of rows) tracker.markCommitted(r.ticket, at)
          await reader.xack(results, "collector", ...entries.map(([id]) => id)).catch(() => {
            errors++
          })
        }
      }
    }

    const loops: Promise<void>[] = []
    for (let c = 0; c < readerConnections; c++) {
      const share = Math.floor(workers / readerConnections) + (c < workers % readerConnections ? 1 : 0)
      if (share > 0) loops.push(readerLoop(connect(), `w${c}`, share))
    }
    loops.push(collectorLoop(connect()))

    const submit = async (first: number, count: number): Promise<void> => {
      const at = wallNow()
      for (let i = first; i < first + count; i++) tracker.markCreated(i, at)
      try {
        await insertTickets(p, first, count, ticketCommand, at)
        const pipe = producer.pipeline()
        const created = String(at)
        for (let i = first; i < first + count; i++) {
          pipe.xadd(work, "*", "ticket", String(i), "created", created, "command", ticketCommand)
        }
        await pipe.exec()
      } catch {
        errors++
      }
    }

    try {
      if (warmup) await tracker.waitAll(await warmup.produce(submit))
      await window?.begin()
      const total = await produce((first, count) => submit(offset + first, count))
      await tracker.waitAll(offset + total)
      await window?.end()
      await verifyResultCount(p, name, offset + total)
      return tracker.result(name, mode, total, errors, targetRate, offset)
    } finally {
      running = false
      await Promise.all(loops)
    }
  }

  const saturation = (tickets: number, workers: number, window?: MeasuredWindow): Promise<RunResult> =>
    run(
      tickets,
      workers,
      async (submit) => {
        for (let first = 0; first < tickets; first += producerChunk) {
          await submit(first, Math.min(producerChunk, tickets - first))
        }
        return tickets
      },
      "saturation",
      window,
    )

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
      (submit) => submitAtRate(ratePerSecond, durationMs, submit),
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
    const admin = clients[0]
    if (admin !== undefined && prefix !== "") {
      await admin.del(`${prefix}work`, `${prefix}results`).catch(() => {})
    }
    for (const c of clients.splice(0)) c.disconnect()
    await pool?.end()
    pool = undefined
    await dropDb?.()
    dropDb = undefined
  }

  return { name, setup, saturation, atRate, teardown, counters }
}

export const streamsCeiling: SystemEntry = { name: "streams-ceiling", create: makeSystem }
