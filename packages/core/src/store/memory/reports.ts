import { Effect } from "effect"
import { ReportStore, type ReportStoreService } from "../ReportStore.ts"
import type { MemoryState } from "./state.ts"

export const makeMemoryReports = (memory: MemoryState): ReportStoreService => {
  const { log, results } = memory
  const newestFirst = <A>(rows: ReadonlyArray<A>, limit: number) => rows.slice().reverse().slice(0, limit)

  const sessionRows = () => {
    const logouts = new Map(log.filter((r) => r.event === "logout").map((r) => [r.sessionId, r]))
    return log
      .filter((r) => r.event === "login")
      .map((login) => {
        const logout = logouts.get(login.sessionId)
        return {
          peerId: login.peerId!,
          sessionId: login.sessionId!,
          loginAt: login.at,
          logoutAt: logout?.at ?? null,
          durationMs: (logout?.at ?? Date.now()) - login.at,
          logoutReason: logout?.reason ?? null,
          serverId: login.serverId,
        }
      })
  }

  return ReportStore.of({
    sessions: ({ peerId, limit }) =>
      Effect.sync(() =>
        newestFirst(
          sessionRows().filter((s) => peerId === undefined || s.peerId === peerId),
          limit,
        ),
      ),
    registrationLog: ({ limit }) => Effect.sync(() => newestFirst(log, limit)),
    results: ({ peerId, limit }) =>
      Effect.sync(() =>
        newestFirst(
          [...results.values()].filter((r) => peerId === undefined || r.peerId === peerId),
          limit,
        ),
      ),
  })
}
