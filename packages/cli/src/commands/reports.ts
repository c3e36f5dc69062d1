/** `picus sessions` and `picus results`: what happened, from PostgreSQL. */
import { ReportStore } from "@picus/core"
import type { CAC } from "cac"
import { Effect } from "effect"
import { printRows, resolveServerConfig, type ServerFlags, sharedOptions, withStore } from "server"
import { run } from "../support.ts"

type ReportFlags = ServerFlags & { peer?: string; limit: number; json?: boolean; embedded?: boolean }

/** A read-only report over the Store: rows for people, or JSON with --json. */
const reportCommand = (
  cli: CAC,
  name: string,
  description: string,
  rowsOf: (
    store: ReportStore["Service"],
    filter: { readonly limit: number; readonly peerId?: string },
    json: boolean,
  ) => Effect.Effect<ReadonlyArray<Record<string, unknown>>, unknown>,
) =>
  sharedOptions(cli.command(name, description))
    .option("--embedded", "Read make dev's embedded database (folder PICUS_DATA_DIR, default .data)")
    .option("--peer <id>", "Only this peer")
    .option("--limit <n>", "Most rows", { default: 50 })
    .option("--json", "Machine-readable output")
    .action((flags: ReportFlags) =>
      run(
        withStore(
          resolveServerConfig(flags),
          Effect.gen(function* () {
            const filter = { limit: Number(flags.limit), ...(flags.peer ? { peerId: flags.peer } : {}) }
            printRows(yield* rowsOf(yield* ReportStore, filter, flags.json === true), flags.json === true)
          }),
          flags.embedded === true,
          true,
        ),
      ),
    )

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString())

export const registerReports = (cli: CAC): void => {
  reportCommand(cli, "sessions", "Peer sessions: login, logout, duration, reason", (store, filter) =>
    store.sessions(filter).pipe(
      Effect.map((rows) =>
        rows.map((s) => ({
          peer_id: s.peerId,
          login_at: iso(s.loginAt),
          logout_at: iso(s.logoutAt),
          duration_s: Math.round(s.durationMs / 100) / 10,
          logout_reason: s.logoutReason,
          server_id: s.serverId,
        })),
      ),
    ),
  )

  reportCommand(cli, "results", "Job results, newest first", (store, filter, json) =>
    store.results(filter).pipe(
      Effect.map((rows) =>
        rows.map((r) => ({
          ticket: r.ticket,
          peer_id: r.peerId,
          job: r.jobName,
          status: r.status,
          exit_code: r.exitCode,
          output: json ? r.output : (r.output.split("\n")[0] ?? "").slice(0, 60),
          received_at: iso(r.receivedAt),
        })),
      ),
    ),
  )
}
