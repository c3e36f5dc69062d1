import { Effect, Option } from "effect"
import { LogoutReason } from "../../protocol/messages.ts"
import type { LogRow } from "../ReportStore.ts"
import { SessionStore, type SessionStoreService } from "../SessionStore.ts"
import type { MemoryState } from "./state.ts"

export const makeMemorySessions = (memory: MemoryState): SessionStoreService => {
  const { peers, log, sessions, instances, identities, copy, openTicketsWhere, openSessionOf, holds, lost } =
    memory
  const append = (row: Omit<LogRow, "id" | "at" | "repeats"> & { readonly repeats?: number }) =>
    log.push({ ...row, repeats: row.repeats ?? 1, id: memory.nextLogId++, at: Date.now() })
  const isClosed = (sessionId: string | null) =>
    log.some((r) => r.event === "logout" && r.sessionId === sessionId)

  return SessionStore.of({
    admitRegistration: (claim) =>
      Effect.sync(() => {
        const row = identities.get(claim.peerId) ?? {
          identityKey: null,
          lastRegisterTs: null,
          lastAdmittedAt: null,
        }
        if (row.identityKey !== null && claim.identityKey !== row.identityKey) return "wrong_identity"
        if (claim.ts !== null && row.lastRegisterTs !== null && claim.ts <= row.lastRegisterTs)
          return "replayed"
        if (row.lastAdmittedAt !== null && claim.now - row.lastAdmittedAt < claim.minIntervalMs)
          return "too_many"
        identities.set(claim.peerId, {
          identityKey: row.identityKey ?? claim.identityKey,
          lastRegisterTs: claim.ts ?? row.lastRegisterTs,
          lastAdmittedAt: claim.now,
        })
        return "admitted"
      }),
    login: (l) =>
      Effect.sync(() => {
        peers.set(l.peerId, { lastSeenAt: Date.now(), os: l.os, distro: l.distro, labels: { ...l.labels } })
        for (const [sessionId, s] of sessions) {
          if (s.peerId !== l.peerId || s.closed) continue
          s.closed = true
          s.epoch++
          if (!isClosed(sessionId)) {
            append({
              event: "logout",
              peerId: l.peerId,
              sessionId,
              reason: LogoutReason.replaced,
              serverId: l.serverId,
              serverIp: null,
            })
          }
        }
        sessions.set(l.sessionId, {
          peerId: l.peerId,
          os: l.os,
          distro: l.distro,
          heartbeats: l.agentVersion !== null,
          sealed: l.sealed ?? false,
          openedAt: Date.now(),
          tokenId: l.tokenId ?? null,
          ownerId: l.serverId,
          ownerRun: memory.instance(l.serverId, l.leaseMs).run,
          epoch: 1,
          closed: false,
        })
        append({
          event: "login",
          peerId: l.peerId,
          sessionId: l.sessionId,
          reason: null,
          serverId: l.serverId,
          serverIp: l.serverIp,
        })
        const adopted = openTicketsWhere((t) => t.peerId === l.peerId)
        for (const t of adopted) t.sessionId = l.sessionId
        return { epoch: 1, adopted: adopted.map(copy) }
      }),
    logRejected: ({ peerId, reason, serverId, serverIp, repeats }) =>
      Effect.sync(() =>
        append({
          event: "rejected",
          peerId,
          sessionId: null,
          reason,
          serverId,
          serverIp,
          repeats: repeats ?? 1,
        }),
      ),
    logout: ({ peerId, sessionId, epoch, reason, serverId }) =>
      Effect.sync(() => {
        if (!holds(sessionId, epoch) || isClosed(sessionId)) return false
        sessions.get(sessionId)!.closed = true
        append({ event: "logout", peerId, sessionId, reason, serverId, serverIp: null })
        return true
      }),
    endSessionsOfTokens: ({ tokenIds, reason, serverId }) =>
      Effect.sync(() => {
        const ended: Array<{ peerId: string; sessionId: string }> = []
        for (const [sessionId, s] of sessions) {
          if (s.closed || s.tokenId === null || !tokenIds.includes(s.tokenId)) continue
          s.closed = true
          s.epoch++
          if (!isClosed(sessionId))
            append({ event: "logout", peerId: s.peerId, sessionId, reason, serverId, serverIp: null })
          ended.push({ peerId: s.peerId, sessionId })
        }
        return ended
      }),
    logShutdown: ({ serverId, reason }) =>
      Effect.sync(() =>
        append({ event: "shutdown", peerId: null, sessionId: null, reason, serverId, serverIp: null }),
      ),
    instanceAlive: (serverId) =>
      Effect.sync(() => {
        const now = Date.now()
        const instance = instances.get(serverId)
        // A new run: the sessions of the one before are lost from now on. The lease stays.
        instances.set(serverId, {
          startedAt: now,
          aliveAt: now,
          stoppedAt: null,
          beats: (instance?.beats ?? 0) + 1,
          run: (instance?.run ?? 0) + 1,
          leaseUntil: instance?.leaseUntil ?? now,
        })
      }),
    instanceStopped: (serverId) =>
      Effect.sync(() => {
        const now = Date.now()
        const instance = memory.instance(serverId, 0)
        instance.stoppedAt = now
        // Run out already (PostgreSQL's now() moves on within a millisecond; Date.now() does not).
        instance.leaseUntil = Math.min(instance.leaseUntil, now - 1)
      }),
    instanceStatus: (serverId) =>
      Effect.sync(() => {
        const instance = instances.get(serverId)
        return instance === undefined
          ? Option.none()
          : Option.some({
              aliveAgoMs: Math.max(0, Date.now() - instance.aliveAt),
              stopped: instance.stoppedAt !== null,
              beat: String(instance.beats),
            })
      }),
    lostInstances: ({ deadAfterMs, byServerId }) =>
      Effect.sync(() => {
        const now = Date.now()
        return [...instances]
          .filter(([id, i]) => id !== byServerId && i.stoppedAt === null && i.aliveAt < now - deadAfterMs)
          .map(([serverId]) => serverId)
          .sort()
      }),
    renewLease: ({ serverId, leaseMs, sessions: held }) =>
      Effect.sync(() => {
        const now = Date.now()
        const instance = memory.instance(serverId, leaseMs)
        instance.aliveAt = now
        instance.beats++
        instance.leaseUntil = now + leaseMs
        return [...new Set(held.map((l) => l.sessionId))].filter((sessionId) => {
          const s = sessions.get(sessionId)
          return (
            s !== undefined &&
            held.some((l) => l.sessionId === sessionId && holds(sessionId, l.epoch)) &&
            s.ownerId === serverId &&
            s.ownerRun === instance.run
          )
        })
      }),
    takeOverSessions: ({ serverId, leaseMs, limit, sessionId: only }) =>
      Effect.sync(() => {
        const now = Date.now()
        const taker = memory.instance(serverId, leaseMs)
        const candidates = [...sessions]
          .filter(([id, s]) => {
            if (s.closed) return false
            const owner = instances.get(s.ownerId)
            if (only !== undefined) return id === only && (s.ownerId === serverId || lost(s))
            if (owner === undefined) return false
            return s.ownerRun < owner.run || (owner.leaseUntil < now && s.ownerId !== serverId)
          })
          .slice(0, Math.max(0, limit))
        return candidates.map(([sessionId, s]) => {
          const fromServerId = s.ownerId
          s.ownerId = serverId
          s.ownerRun = taker.run
          s.epoch++
          return {
            sessionId,
            epoch: s.epoch,
            peerId: s.peerId,
            os: s.os,
            distro: s.distro,
            heartbeats: s.heartbeats,
            sealed: s.sealed,
            fromServerId,
            tickets: openTicketsWhere((t) => t.sessionId === sessionId).map(copy),
          }
        })
      }),
    sessionOf: (peerId) => Effect.sync(() => Option.fromNullishOr(openSessionOf(peerId))),
  })
}
