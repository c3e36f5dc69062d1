import { Context, type Effect } from "effect"
import type { ResultStatus } from "../domain/ticket.ts"
import type { StoreError } from "./StoreError.ts"

export interface SessionRow {
  readonly peerId: string
  readonly sessionId: string
  readonly loginAt: number
  readonly logoutAt: number | null
  readonly durationMs: number
  readonly logoutReason: string | null
  readonly serverId: string
}

export interface LogRow {
  readonly id: number
  readonly at: number
  readonly event: "login" | "rejected" | "logout" | "shutdown"
  readonly peerId: string | null
  readonly sessionId: string | null
  readonly reason: string | null
  readonly serverId: string
  readonly serverIp: string | null
  /** How many refusals a `rejected` row stands for (1 for every other row). */
  readonly repeats: number
}

export interface ResultRow {
  readonly ticket: string
  readonly peerId: string
  readonly jobName: string
  readonly status: ResultStatus
  readonly exitCode: number | null
  readonly output: string
  readonly truncated: boolean
  readonly receivedAt: number
}

/** Reading what happened: sessions, the registration log, results; newest first. */
export interface ReportStoreService {
  readonly sessions: (filter: {
    readonly peerId?: string
    readonly limit: number
  }) => Effect.Effect<ReadonlyArray<SessionRow>, StoreError>
  readonly registrationLog: (filter: {
    readonly limit: number
  }) => Effect.Effect<ReadonlyArray<LogRow>, StoreError>
  readonly results: (filter: {
    readonly peerId?: string
    readonly limit: number
  }) => Effect.Effect<ReadonlyArray<ResultRow>, StoreError>
}

export class ReportStore extends Context.Service<ReportStore, ReportStoreService>()(
  "@picus/core/ReportStore",
) {}
