import { chmodSync, closeSync, fsync, fsyncSync, openSync } from "node:fs"
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
 * its group: everything written by the code of one task of the event loop (the fibers run together
 * by the scheduler, say) is committed together, then the
 * WAL is fsynced off the event loop, one fsync for all the groups committed while the last one
 * ran; a write's effect succeeds only once its group is on disk.
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
   * pending. Written with the open group, not waited for and with no fsync of its own: a mark lost
   * to a power cut only sends the result again, and the server records a result once.
   */
  readonly sent: (ticket: string) => void
  /** Tickets started and results kept before the journal existed (peer.json), in their order; on disk when it returns. */
  readonly adopt: (
    started: ReadonlyArray<string>,
    results: ReadonlyArray<KeptResult & { readonly sent: boolean }>,
  ) => void
  /** Groups committed so far, and fsyncs of their WAL (groups committed close together share one). */
  readonly stats: () => { readonly commits: number; readonly fsyncs: number }
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

/** The folder's entry of a file made in it, on disk. */
const fsyncDir = (path: string) => {
  const dir = openSync(dirname(path), "r")
  try {
    fsyncSync(dir)
  } finally {
    closeSync(dir)
  }
}

/** A new file made 0600 (SQLite gives its -wal and -shm files the same mode). */
const createPrivate = (path: string) => {
  closeSync(openSync(path, "a", 0o600))
  chmodSync(path, 0o600)
  fsyncDir(path)
}

type Waiter = (failure: JournalError | undefined) => void

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
    const mode = (db.prepare("pragma journal_mode = wal").get() as { journal_mode: string }).journal_mode
    if (mode !== "wal") throw new Error(`SQLite keeps its ${mode} journal mode here, not WAL`)
    // Commits write the WAL; the journal fsyncs it itself before it tells a write is done.
    db.exec("pragma synchronous = normal")
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

  /** Whether a group's transaction is open; it is committed once the code running now is done. */
  let inGroup = false
  /** The durable writes of the open group: told once it is committed and then synced. */
  let waiting: Array<Waiter> = []
  /** Committed, waiting for an fsync that starts after their commit. */
  let unsynced: Array<Waiter> = []
  let syncing = false
  /** The WAL file, for the fsyncs (opened once the first commit has made it). */
  let walFd: number | undefined
  /** Rows in `results`, to know when to compact. */
  let resultRows = Number((q.count.get() as { n: number }).n)
  let closed = false
  /** Set when the journal can no longer promise that a write is on disk: every durable write fails. */
  let broken: JournalError | undefined
  let commits = 0
  let fsyncs = 0

  const countRows = () => {
    resultRows = Number((q.count.get() as { n: number }).n)
  }

  const compact = () => {
    q.dropResults.run(keptResults, keptOutputBytes)
    q.dropStarted.run(rememberedTickets)
    countRows()
  }

  const rollback = () => {
    try {
      if (db.isTransaction) db.exec("rollback")
    } catch {
      // Rolled back already.
    }
  }

  const wal = (): number => {
    if (walFd !== undefined) return walFd
    walFd = openSync(`${path}-wal`, "r+")
    fsyncDir(path)
    return walFd
  }

  /**
   * One fsync of the WAL, off the event loop, for every group committed before it started: the
   * groups committed meanwhile share the next one.
   */
  const sync = () => {
    if (syncing || unsynced.length === 0) return
    const batch = unsynced
    unsynced = []
    const done = (failure: JournalError | undefined) => {
      syncing = false
      fsyncs++
      // After a failed fsync the kernel may have dropped the pages: nothing is promised any more.
      if (failure !== undefined) broken ??= failure
      for (const told of batch) told(failure)
      if (closed) closeWal()
      else sync()
    }
    let fd: number
    try {
      fd = wal()
    } catch (cause) {
      syncing = true
      return done(fail(cause, "sync"))
    }
    syncing = true
    fsync(fd, (error) => done(error === null ? undefined : fail(error, "sync")))
  }

  const closeWal = () => {
    if (walFd === undefined || syncing) return
    closeSync(walFd)
    walFd = undefined
  }

  const commit = () => {
    if (!inGroup) return
    inGroup = false
    const batch = waiting
    waiting = []
    try {
      if (resultRows > keptResults + slack) {
        try {
          compact()
        } catch {
          // A failed statement is undone alone: the group's own writes stand, compacted next time.
        }
      }
      db.exec("commit")
      commits++
    } catch (cause) {
      const failure = fail(cause, "write")
      rollback()
      try {
        countRows()
      } catch {
        // Counted again at the next compaction.
      }
      for (const told of batch) told(failure)
      return
    }
    if (batch.length === 0) return // sent marks only: no fsync of their own
    unsynced.push(...batch)
    sync()
  }

  const joinGroup = () => {
    if (broken !== undefined) throw broken
    if (closed) throw new Error("the journal is closed")
    if (inGroup) return
    db.exec("begin immediate")
    inGroup = true
    // Once the code running now is done: what it and the fibers run with it wrote is one group.
    queueMicrotask(commit)
  }

  /** Writes at once, in the open group; succeeds when the group is committed and synced. */
  const durable = (write: () => void, what: string): Effect.Effect<void, JournalError> =>
    Effect.callback<void, JournalError>((resume) => {
      try {
        joinGroup()
        write()
      } catch (cause) {
        resume(Effect.fail(cause instanceof JournalError ? cause : fail(cause, what)))
        return
      }
      waiting.push((failure) => resume(failure === undefined ? Effect.void : Effect.fail(failure)))
    })

  /** Writes in a transaction of its own, on disk when it returns. */
  const now = (write: () => void) => {
    commit()
    try {
      db.exec("begin immediate")
      write()
      db.exec("commit")
      fsyncSync(wal())
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
      // Groups committed and still waiting for an fsync: one now (the one under way tells its own).
      const batch = unsynced
      unsynced = []
      if (batch.length > 0) {
        let failure: JournalError | undefined
        try {
          fsyncSync(wal())
        } catch (cause) {
          failure = fail(cause, "sync")
        }
        for (const told of batch) told(failure)
      }
    } finally {
      closed = true
      db.close()
      closeWal()
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
    pending: () => (q.pending.all() as unknown as ReadonlyArray<ResultRow>).map(fromRow),
    started: (ticket) => durable(() => q.start.run(ticket), "record the start of a ticket in"),
    finished: (result) =>
      durable(() => {
        q.finish.run(...toParams(result))
        resultRows++
      }, "keep a result in"),
    sent: (ticket) => {
      try {
        joinGroup()
        q.sent.run(ticket)
      } catch {
        // A mark not written only has its result sent again.
      }
    },
    adopt: (started, results) =>
      now(() => {
        for (const ticket of started) q.start.run(ticket)
        for (const r of results) q.adoptResult.run(...toParams(r), r.sent ? 1 : 0)
        compact()
      }),
    stats: () => ({ commits, fsyncs }),
    close,
  }
}
