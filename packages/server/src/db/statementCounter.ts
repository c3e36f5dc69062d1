import { Metrics } from "@picus/core"
import { Context, Effect, Metric } from "effect"
import type { Interceptor, Query } from "slonik"

/**
 * Counts the statements slonik pools send, as Effect metrics in the process's default registry (the
 * one an Effect program reads unless it provides its own): `picus_pg_statements_total` by
 * statement, and `picus_pg_transactions_total` for explicit transactions (each also sends START
 * TRANSACTION and COMMIT or ROLLBACK, which slonik issues past the interceptors). Counts, not
 * times: they do not drift with the machine's load.
 */

const STATEMENTS = "picus_pg_statements_total"
const TRANSACTIONS = "picus_pg_transactions_total"

const statements = Metric.counter(STATEMENTS, {
  description: "Statements sent to PostgreSQL, by statement (its name, or its verb and tables)",
  incremental: true,
})
const transactions = Metric.counter(TRANSACTIONS, {
  description: "Explicit transactions begun on PostgreSQL (each adds a begin and a commit or rollback)",
  incremental: true,
})

/** One labelled counter per statement key; the keys come from SQL written in this code, so few. */
const byKey = new Map<string, Metric.Counter<number>>()
const counterOf = (key: string): Metric.Counter<number> => {
  let counter = byKey.get(key)
  if (counter === undefined) {
    counter = Metric.withAttributes(statements, { statement: key })
    byKey.set(key, counter)
  }
  return counter
}

// Words only: keywords and identifiers, no placeholders, literals or punctuation.
const WORD = /[a-z_][a-z0-9_.]*/g
// A write and its table; neither a locking clause ("for update") nor an upsert's "do update set" is one.
const WRITE = /(?<!\b(?:for|key) )\b(insert into|update|delete from)\s+(?:only\s+)?([a-z_][a-z0-9_.]*)/g
// The first table read: a name not followed by "(" (unnest(...), now() are functions).
const FROM = /\bfrom\s+(?:only\s+)?([a-z_][a-z0-9_.]*)\b(?!\s*\()/

/**
 * A short, stable name for a statement: its slonik name if it has one, else what it does, e.g.
 * "insert peers", "update tickets", "with input: insert job_results, update tickets",
 * "select from sessions", or its first three words ("select pg_advisory_xact_lock").
 */
export const statementKey = (query: Pick<Query, "sql"> & { readonly name?: string | undefined }): string => {
  if (query.name !== undefined && query.name !== "") return query.name
  const flat = query.sql.replace(/\s+/g, " ").trim().toLowerCase()
  const words = flat.match(WORD) ?? []
  const verb = words[0] ?? ""
  const writes: string[] = []
  for (const m of flat.matchAll(WRITE)) {
    const write = `${m[1]!.split(" ")[0]} ${m[2]}`
    if (m[2] !== "set" && !writes.includes(write)) writes.push(write)
  }
  const from = FROM.exec(flat)?.[1]
  const reads = from === undefined ? undefined : `select from ${from}`
  const main =
    writes.length > 0
      ? writes.join(", ")
      : verb === "select" || verb === "with"
        ? (reads ?? words.slice(0, 3).join(" "))
        : words.slice(0, 3).join(" ")
  const key = verb === "with" ? `with ${words[1] ?? ""}: ${main}` : main
  return key.length > 80 ? `${key.slice(0, 79)}…` : key
}

/**
 * The interceptor counting a pool's statements into the metric registry of `context`. A transaction
 * is counted at its first statement: a connection keeps its transaction until it goes back to the
 * pool, so the last transaction seen per checked-out connection tells a new one apart.
 */
export const makeStatementCounter = (context: Context.Context<never>): Interceptor => {
  const openTransactions = new Map<string, string>()
  return {
    name: "picus/statement-counter",
    beforeQueryExecution: (queryContext, query) => {
      counterOf(statementKey(query)).updateUnsafe(1, context)
      const tx = queryContext.transactionId
      if (tx !== null && openTransactions.get(queryContext.connectionId) !== tx) {
        openTransactions.set(queryContext.connectionId, tx)
        transactions.updateUnsafe(1, context)
      }
      return null
    },
    afterQueryExecution: (queryContext) => {
      const elapsedNs = process.hrtime.bigint() - BigInt(queryContext.queryInputTime)
      Metrics.pgStatementSeconds.updateUnsafe(Number(elapsedNs) / 1e9, context)
      return null
    },
    beforePoolConnectionRelease: (connectionContext) => {
      openTransactions.delete(connectionContext.connectionId)
      return null
    },
  }
}

/** The counter every pool of `makePool` has: into the process's default registry. */
export const statementCounter: Interceptor = makeStatementCounter(Context.empty())

export interface StatementCounts {
  /** Statements sent through the interceptors (not the begin and commit of explicit transactions). */
  readonly statements: number
  /** Explicit transactions: each sent a begin and a commit or rollback besides its statements. */
  readonly transactions: number
  readonly byStatement: Readonly<Record<string, number>>
}

/** The counts so far, summed over every pool of this registry. */
export const statementCounts: Effect.Effect<StatementCounts> = Effect.map(Metric.snapshot, (snapshot) => {
  let total = 0
  let txs = 0
  const byStatement: Record<string, number> = {}
  for (const m of snapshot) {
    if (m.type !== "Counter") continue
    const count = Number(m.state.count)
    if (m.id === TRANSACTIONS) txs += count
    else if (m.id === STATEMENTS) {
      const key = m.attributes?.statement ?? ""
      byStatement[key] = (byStatement[key] ?? 0) + count
      total += count
    }
  }
  return { statements: total, transactions: txs, byStatement }
})

/** What starts the line `kill -USR2 <server pid>` makes the server print; JSON follows it. */
export const COUNTERS_LINE_PREFIX = "picus-counters "

/** The counters as one line: the prefix, then JSON (`{"pg": StatementCounts}`). */
export const countersLine: Effect.Effect<string> = Effect.map(
  statementCounts,
  (pg) => `${COUNTERS_LINE_PREFIX}${JSON.stringify({ pg })}`,
)
