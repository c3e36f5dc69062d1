import { randomBytes } from "node:crypto"
import pg from "pg"
import { type StatementCounts, statementKey } from "server"

/** The tables every baseline writes: tickets (when the system records them) and one result per ticket. */
const schema = `
create table tickets (
  ticket      bigint primary key,
  command     text not null,
  created_at  timestamptz not null
);
create table results (
  ticket        bigint primary key,
  status        text not null,
  exit_code     integer,
  output        text not null,
  created_at    timestamptz not null,
  committed_at  timestamptz not null default clock_timestamp()
);
`

/** A fresh database next to the admin URL's, with the schema; returns its URL and a dropper. */
export const createBenchDatabase = async (
  adminUrl: string,
  label: string,
): Promise<{ url: string; drop: () => Promise<void> }> => {
  const name = `bench_${label.replace(/[^a-z0-9]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  try {
    await admin.query(`create database ${name}`)
  } finally {
    await admin.end()
  }
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  const db = new pg.Client({ connectionString: url.toString() })
  await db.connect()
  try {
    await db.query(schema)
  } finally {
    await db.end()
  }
  const drop = async (): Promise<void> => {
    const c = new pg.Client({ connectionString: adminUrl })
    await c.connect()
    try {
      await c.query(`drop database if exists ${name} with (force)`)
    } finally {
      await c.end()
    }
  }
  return { url: url.toString(), drop }
}

export interface ResultRow {
  readonly ticket: number
  readonly status: string
  readonly exitCode: number | null
  readonly output: string
  /** Wall-clock ms of the ticket's creation. */
  readonly createdAt: number
}

export const insertResultSql =
  "insert into results (ticket, status, exit_code, output, created_at) " +
  "values ($1, $2, $3, $4, to_timestamp($5::float8 / 1000)) on conflict (ticket) do nothing"

/** One INSERT of many results (a single statement, so a single implicit transaction). */
export const insertResults = async (pool: pg.Pool, rows: ReadonlyArray<ResultRow>): Promise<void> => {
  await pool.query(
    "insert into results (ticket, status, exit_code, output, created_at) " +
      "select t, s, e, o, to_timestamp(c / 1000) " +
      "from unnest($1::bigint[], $2::text[], $3::int[], $4::text[], $5::float8[]) as r(t, s, e, o, c) " +
      "on conflict (ticket) do nothing",
    [
      rows.map((r) => r.ticket),
      rows.map((r) => r.status),
      rows.map((r) => r.exitCode),
      rows.map((r) => r.output),
      rows.map((r) => r.createdAt),
    ],
  )
}

/** One INSERT of many tickets. */
export const insertTickets = async (
  pool: pg.Pool,
  first: number,
  count: number,
  command: string,
  createdAt: number,
): Promise<void> => {
  await pool.query(
    "insert into tickets (ticket, command, created_at) " +
      "select t, $3, to_timestamp($4::float8 / 1000) from generate_series($1::bigint, $2::bigint) as t",
    [first, first + count - 1, command, createdAt],
  )
}

/** Throws unless exactly `expected` result rows are committed. */
export const verifyResultCount = async (pool: pg.Pool, system: string, expected: number): Promise<void> => {
  const { rows } = await pool.query<{ n: number }>("select count(*)::int as n from results")
  const n = rows[0]?.n ?? -1
  if (n !== expected) throw new Error(`${system}: ${n} result rows committed for ${expected} tickets`)
}

/** The fake answer of every worker: what `echo hi` prints, without running a shell. */
export const fakeAnswer = { status: "succeeded", exitCode: 0, output: "hi\n" } as const
export const ticketCommand = "echo hi"

/** Statements sent through pools, named as the server's counter names them (`statementKey`). */
export class StatementTally {
  #statements = 0
  readonly #byStatement: Record<string, number> = {}

  add(sql: string): void {
    this.#statements++
    const key = statementKey({ sql })
    this.#byStatement[key] = (this.#byStatement[key] ?? 0) + 1
  }

  get statements(): number {
    return this.#statements
  }

  /** The counts so far (these pools send no explicit transactions). */
  snapshot(): StatementCounts {
    return { statements: this.#statements, transactions: 0, byStatement: { ...this.#byStatement } }
  }
}

/** Counts every `pool.query` of `pool` into `tally` (the baselines' only way of querying). */
export const countQueries = (pool: pg.Pool, tally: StatementTally): void => {
  const query = pool.query.bind(pool) as (...args: ReadonlyArray<unknown>) => unknown
  const counted = (...args: ReadonlyArray<unknown>): unknown => {
    const first = args[0]
    tally.add(typeof first === "string" ? first : String((first as { text?: unknown }).text ?? ""))
    return query(...args)
  }
  ;(pool as unknown as { query: typeof counted }).query = counted
}

/**
 * Makes every connection of `pool` publish its PostgreSQL statistics now: a backend publishes them
 * at most once a second, an idle one up to 10 s later. One statement per connection, into `tally`.
 */
export const flushPgStats = async (pool: pg.Pool, tally: StatementTally): Promise<void> => {
  const clients = await Promise.all(Array.from({ length: pool.totalCount }, () => pool.connect()))
  try {
    await Promise.all(
      clients.map((c) => {
        tally.add("select pg_stat_force_next_flush()")
        return c.query("select pg_stat_force_next_flush()")
      }),
    )
  } finally {
    for (const c of clients) c.release()
  }
}
