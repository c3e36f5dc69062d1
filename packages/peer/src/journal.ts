import { chmodSync, closeSync, fsyncSync, openSync } from "node:fs"
import { dirname } from "node:path"
import type { DatabaseSync, StatementSync } from "node:sqlite"
import { Protocol } from "@picus/core"
import { Effect, Schema } from "effect"

/**
 * The outcome of a job this peer ran: the fields of its `result` message except the token (a
 * result is sent with the token of the session that is current when it is sent).
 */
export const KeptResult = Schema.Struct({
  ticket: Protocol.Id,
  result: Protocol.ResultText,
  exit_code: Schema.NullOr(Protocol.ExitCode),
  status: Protocol.ResultStatus,
  started_at: Schema.optionalKey(Protocol.EpochMillis),
  finished_at: Schema.optionalKey(Protocol.EpochMillis),
  truncated: Schema.optionalKey(Schema.Boolean),
})
export type KeptResult = typeof KeptResult.Type

/** The journal cannot be opened or written (a full disk, permissions, a damaged file). */
export class JournalError extends Schema.TaggedError<JournalError>()("JournalError", {
  path: Schema.String,
  message: Schema.String,
  cause: Schema.Defect(),
}) {}

export interface JournalOptions {
  /** Results kept (sent ones; one not yet sent is never dropped). Default 1,000. */
  readonly keptResults?: number
  /** Bytes of output kept in all; the oldest sent results go first. Default 8 MiB. */
  readonly keptOutputBytes?: number
  /** Started tickets remembered (so a ticket never runs twice). Default 10,000. */
  readonly rememberedTickets?: number
}

/**
 * What makes "never run twice" hold across a restart: the tickets this peer started and the
 * results it finished, in SQLite (WAL) in the state folder. Each write joins the transaction of
 * its group: everything written in one turn of the event loop is committed together, with one
 * fsync (synchronous=FULL), and a write's effect succeeds only once its group is committed.
 */
export interface Journal {
  readonly path: string
  /** True when this peer (this run or an earlier one) started the ticket. */
  readonly hasRun: (ticket: string) => boolean
  /** The kept result of a ticket, sent or not. */
  readonly kept: (ticket: string) => KeptResult | undefined
  /** Kept results not yet sent, in the order they finished. */
  readonly pending: () => ReadonlyArray<KeptResult>
  /** Records that the ticket is started; succeeds once that is on disk. Call it before running it. */
  readonly started: (ticket: string) => Effect.Effect<void, JournalError>
  /** Records a finished job's result, not yet sent; succeeds once it is on disk. Call it before sending it. */
  readonly finished: (result: KeptResult) => Effect.Effect<void, JournalError>
  /**
   * The server's Redis took the result: it stays kept (for a re-delivery) but is no longer
   * pending. Written in the next turn, with no fsync of its own and not waited for: a mark lost to
   * a power cut only sends the result again, and the server records a result once.
   */
  readonly sent: (ticket: string) => void
  /** Tickets started and results kept before the journal existed (peer.json), in their order; on disk when it returns. */
  readonly adopt: (
    started: ReadonlyArray<string>,
    results: ReadonlyArray<KeptResult & { readonly sent: boolean }>,
  ) => void
  /** Groups committed so far by this process, one fsync each. */
  readonly commits: () => number
  /** Commits what is waiting and closes the file (also done when the process exits). */
  readonly close: () => void
}

/**
 * `node:sqlite`, loaded when first needed. Node 24 before 24.15 says on loading it that it is
 * experimental; that one warning is kept out of the peer's output, every other one is not.
 */
let sqlite: typeof import("node:sqlite") | undefined
const loadSqlite = (): typeof import("node:sqlite") => {
  if (sqlite !== undefined) return sqlite
  sqlite = withoutSqliteWarning(() => process.getBuiltinModule("node:sqlite"))
  return sqlite
}

/** Runs `f` with the experimental-SQLite warning dropped (exported for its test). */
export const withoutSqliteWarning = <A>(f: () => A): A => {
  const emit = process.emitWarning
  process.emitWarning = function (this: NodeJS.Process, warning: string | Error, ...rest: Array<unknown>) {
    const type = typeof rest[0] === "string" ? rest[0] : (rest[0] as { type?: string } | undefined)?.type
    const text = typeof warning === "string" ? warning : warning.message
    if (type === "ExperimentalWarning" && text.startsWith("SQLite is an experimental feature")) return
    return (emit as (...args: Array<unknown>) => void).call(this, warning, ...rest)
  } as typeof process.emitWarning
  try {
    return f()
  } finally {
    process.emitWarning = emit
  }
}

const SCHEMA = `
  create table if not exists meta (key text primary key, value text not null);
  create table if not exists started (seq integer primary key, ticket text not null unique);
  create table if not exists results (
    seq integer primary key,
    ticket text not null unique,
    output text not null,
    exit_code integer,
    status text not null,
    started_at integer,
    finished_at integer,
    truncated integer,
    sent integer not null default 0
  );
  create index if not exists results_pending on results (seq) where sent = 0;
`

interface ResultRow {
  readonly ticket: string
  readonly output: string
  readonly exit_code: number | null
  readonly status: string
  readonly started_at: number | null
  readonly finished_at: number | null
  readonly truncated: number | null
}

const RESULT_COLUMNS = "ticket, output, exit_code, status, started_at, finished_at, truncated"

const fromRow = (row: ResultRow): KeptResult => ({
  ticket: row.ticket,
  result: row.output,
  exit_code: row.exit_code,
  status: row.status as KeptResult["status"],
  ...(row.started_at === null ? {} : { started_at: row.started_at }),
  ...(row.finished_at === null ? {} : { finished_at: row.finished_at }),
  ...(row.truncated === null ? {} : { truncated: row.truncated === 1 }),
})

const toParams = (r: KeptResult) =>
  [
    r.ticket,
    r.result,
    r.exit_code,
    r.status,
    r.started_at ?? null,
    r.finished_at ?? null,
    r.truncated === undefined ? null : r.truncated ? 1 : 0,
  ] as const

/** A new file made 0600 (SQLite gives its -wal and -shm files the same mode), its folder entry on disk. */
const createPrivate = (path: string) => {
  closeSync(openSync(path, "a", 0o600))
  chmodSync(path, 0o600)
  const dir = openSync(dirname(path), "r")
  try {
    fsyncSync(dir)
  } finally {
    closeSync(dir)
  }
}

/** The closes of the journals open in this process: each is closed (its group committed) at exit. */
const openJournals = new Set<() => void>()
let exitHooked = false
const closeAll = () => {
  for (const close of [...openJournals]) close()
}

/** Opens (or makes) the journal of `peerId` at `path`; another peer id's tickets are forgotten. */
export const openJournal = (path: string, peerId: string, options: JournalOptions = {}): Journal => {
  const keptResults = options.keptResults ?? 1_000
  const keptOutputBytes = options.keptOutputBytes ?? 8 * 1024 * 1024
  const rememberedTickets = options.rememberedTickets ?? 10_000
  /** Results finished beyond the bound before the oldest are dropped: compaction is now and then. */
  const slack = Math.max(1, Math.ceil(keptResults / 4))
  const fail = (cause: unknown, what: string) =>
    new JournalError({
      path,
      cause,
      message: `cannot ${what} the journal ${path}: ${cause instanceof Error ? cause.message : String(cause)}`,
    })

  let db: DatabaseSync
  try {
    createPrivate(path)
    db = new (loadSqlite().DatabaseSync)(path)
    db.exec("pragma journal_mode = wal; pragma synchronous = full;")
    db.exec(SCHEMA)
  } catch (cause) {
    throw fail(cause, "open")
  }
  const prepare = (sql: string): StatementSync => db.prepare(sql)
  const q = {
    start: prepare("insert into started (ticket) values (?) on conflict (ticket) do nothing"),
    finish: prepare(
      `insert or replace into results (${RESULT_COLUMNS}, sent) values (?, ?, ?, ?, ?, ?, ?, 0)`,
    ),
    adoptResult: prepare(
      `insert into results (${RESULT_COLUMNS}, sent) values (?, ?, ?, ?, ?, ?, ?, ?) on conflict (ticket) do nothing`,
    ),
    sent: prepare("update results set sent = 1 where ticket = ?"),
    hasRun: prepare(
      "select exists (select 1 from started where ticket = ?1) or exists (select 1 from results where ticket = ?1) as run",
    ),
    kept: prepare(`select ${RESULT_COLUMNS} from results where ticket = ?`),
    pending: prepare(`select ${RESULT_COLUMNS} from results where sent = 0 order by seq`),
    count: prepare("select count(*) as n from results"),
    // The newest sent results that fit beside the pending ones stay; the older ones go.
    dropResults: prepare(`
      with p as (select count(*) as n, coalesce(sum(length(cast(output as blob))), 0) as bytes from results where sent = 0)
      delete from results where seq in (
        select s.seq from (
          select seq, row_number() over w as n, sum(length(cast(output as blob))) over w as bytes
          from results where sent = 1 window w as (order by seq desc)
        ) as s, p
        where s.n > ?1 - p.n or s.bytes > ?2 - p.bytes
      )`),
    dropStarted: prepare(
      "delete from started where seq <= (select seq from started order by seq desc limit 1 offset ?)",
    ),
    peer: prepare("select value from meta where key = 'peer_id'"),
    setPeer: prepare("insert or replace into meta (key, value) values ('peer_id', ?)"),
  }

  /** Whether a group's transaction is open; it is committed in the next turn of the event loop. */
  let inGroup = false
  let waiting: Array<(failure: JournalError | undefined) => void> = []
  /** Sent marks not written yet: they go with the next group. */
  const sentLater = new Set<string>()
  /** Rows in `results`, to know when to compact. */
  let resultRows = Number((q.count.get() as { n: number }).n)
  let closed = false
  /** Set when the journal can no longer promise an fsync: every durable write fails. */
  let broken: JournalError | undefined
  let commits = 0

  const compact = () => {
    q.dropResults.run(keptResults, keptOutputBytes)
    q.dropStarted.run(rememberedTickets)
    countRows()
  }

  const countRows = () => {
    resultRows = Number((q.count.get() as { n: number }).n)
  }

  const rollback = () => {
    try {
      if (db.isTransaction) db.exec("rollback")
    } catch {
      // Rolled back already.
    }
  }

  const commit = () => {
    if (!inGroup) return
    inGroup = false
    const batch = waiting
    waiting = []
    let failure: JournalError | undefined
    try {
      if (resultRows > keptResults + slack) compact()
      db.exec("commit")
      commits++
    } catch (cause) {
      failure = fail(cause, "write")
      rollback()
      try {
        countRows()
      } catch {
        // Counted again at the next compaction.
      }
    }
    for (const done of batch) done(failure)
  }

  /** Sent marks are a hint: one that cannot be written only has its result sent again. */
  const writeMarks = () => {
    for (const ticket of sentLater) {
      try {
        q.sent.run(ticket)
      } catch {
        // Sent again, then.
      }
    }
    sentLater.clear()
  }

  const joinGroup = () => {
    if (broken !== undefined) throw broken
    if (closed) throw new Error("the journal is closed")
    if (inGroup) return
    db.exec("begin immediate")
    inGroup = true
    setImmediate(commit)
    writeMarks()
  }

  /**
   * Sent marks with no group to join: a commit of their own without an fsync (synchronous=NORMAL,
   * still safe from a crash of the process; a power cut may only make them sent again).
   */
  let marksScheduled = false
  const flushMarks = () => {
    marksScheduled = false
    if (closed || sentLater.size === 0) return
    if (inGroup) return writeMarks()
    try {
      db.exec("pragma synchronous = normal; begin immediate")
      writeMarks()
      db.exec("commit")
    } catch {
      rollback()
      sentLater.clear()
    }
    try {
      db.exec("pragma synchronous = full")
    } catch (cause) {
      // Never leave the durable writes without their fsync: they fail from now on.
      closed = true
      broken = fail(cause, "set up")
    }
  }

  /** Writes at once, in the open group; succeeds when the group is committed. */
  const durable = (write: () => void, what: string): Effect.Effect<void, JournalError> =>
    Effect.callback<void, JournalError>((resume) => {
      try {
        joinGroup()
        write()
      } catch (cause) {
        resume(Effect.fail(fail(cause, what)))
        return
      }
      waiting.push((failure) => resume(failure === undefined ? Effect.void : Effect.fail(failure)))
    })

  /** Writes in one transaction of its own, committed when it returns. */
  const now = (write: () => void) => {
    commit()
    try {
      db.exec("begin immediate")
      write()
      db.exec("commit")
    } catch (cause) {
      rollback()
      throw fail(cause, "write")
    }
  }

  try {
    now(() => {
      const row = q.peer.get() as { value: string } | undefined
      if (row?.value !== peerId) {
        // Another peer's tickets are not this one's to answer.
        db.exec("delete from started; delete from results;")
        q.setPeer.run(peerId)
      }
      compact()
    })
  } catch (error) {
    db.close()
    throw error
  }

  const close = () => {
    if (!db.isOpen) return
    openJournals.delete(close)
    try {
      commit()
      flushMarks()
    } finally {
      closed = true
      db.close()
    }
  }
  openJournals.add(close)
  if (!exitHooked) {
    exitHooked = true
    process.once("exit", closeAll)
  }

  return {
    path,
    hasRun: (ticket) => (q.hasRun.get(ticket) as { run: number }).run === 1,
    kept: (ticket) => {
      const row = q.kept.get(ticket) as ResultRow | undefined
      return row && fromRow(row)
    },
    pending: () =>
      (q.pending.all() as unknown as ReadonlyArray<ResultRow>)
        .filter((row) => !sentLater.has(row.ticket))
        .map(fromRow),
    started: (ticket) => durable(() => q.start.run(ticket), "record the start of a ticket in"),
    finished: (result) =>
      durable(() => {
        q.finish.run(...toParams(result))
        sentLater.delete(result.ticket)
        resultRows++
      }, "keep a result in"),
    sent: (ticket) => {
      if (closed) return
      sentLater.add(ticket)
      if (!marksScheduled) {
        marksScheduled = true
        setImmediate(flushMarks)
      }
    },
    adopt: (started, results) =>
      now(() => {
        for (const ticket of started) q.start.run(ticket)
        for (const r of results) q.adoptResult.run(...toParams(r), r.sent ? 1 : 0)
        compact()
      }),
    commits: () => commits,
    close,
  }
}
