import { Effect } from "effect"
import { isTerminal, type TicketState } from "../../domain/ticket.ts"
import {
  type CreatedRun,
  isEmptyTarget,
  matchesTarget,
  maxErrorsReason,
  NoMatchingPeers,
  RUN_DEADLINE_REASON,
  type RunAdvance,
  type RunInfo,
  type RunPeer,
  RunStore,
  type RunStoreService,
  resolveAmount,
  type TicketView,
} from "../RunStore.ts"
import type { SessionOwner } from "../SessionStore.ts"
import type { Ticket } from "../TicketStore.ts"
import type { MemoryRun, MemoryState, MemoryTicket } from "./state.ts"

const isFailure = (state: TicketState) => state === "failed" || state === "timed_out"
const isActive = (state: TicketState) => state === "queued" || state === "delivered"

export const makeMemoryRuns = (memory: MemoryState): RunStoreService => {
  const { peers, tickets, runs, results, copy, openSessionOf } = memory

  const ticketsOf = (runId: string) =>
    [...tickets.values()].filter((t) => t.runId === runId).sort(memory.oldestFirst)

  const online = (peerId: string) => openSessionOf(peerId) !== undefined

  const end = (t: MemoryTicket, state: TicketState, reason: string) => {
    t.state = state
    t.closeReason = reason
    t.finishedAt = Date.now()
  }

  const advanceOne = (
    run: MemoryRun,
    into: { promoted: Array<Ticket>; owners: Map<string, SessionOwner>; cancelled: number },
  ) => {
    const mine = ticketsOf(run.runId)
    const errors = mine.filter((t) => isFailure(t.state)).length
    if (run.maxErrors !== null && errors > run.maxErrors) {
      for (const t of mine) {
        if (t.state === "pending" || t.state === "queued") {
          end(t, "cancelled", maxErrorsReason(errors, run.maxErrors))
          into.cancelled++
        }
      }
    } else {
      let room =
        run.maxConcurrency === null
          ? mine.length
          : run.maxConcurrency - mine.filter((t) => isActive(t.state)).length
      for (const t of mine) {
        if (room <= 0) break
        if (t.state !== "pending") continue
        room--
        // A new id: a holder reads only tickets newer than the last it has.
        tickets.delete(t.ticket)
        t.ticket = String(memory.nextTicket++)
        tickets.set(t.ticket, t)
        const owner = openSessionOf(t.peerId)
        t.state = "queued"
        t.sessionId = owner?.sessionId ?? null
        into.promoted.push(copy(t))
        if (owner !== undefined) into.owners.set(owner.sessionId, owner)
      }
    }
    if (ticketsOf(run.runId).every((t) => isTerminal(t.state))) run.closedAt = Date.now()
  }

  const advance = (runIds: Iterable<string>): RunAdvance => {
    const into = { promoted: [] as Array<Ticket>, owners: new Map<string, SessionOwner>(), cancelled: 0 }
    for (const runId of new Set(runIds)) {
      const run = runs.get(runId)
      if (run !== undefined && run.closedAt === null) advanceOne(run, into)
    }
    return {
      promoted: into.promoted,
      owners: [...into.owners.values()],
      cancelled: into.cancelled,
      undeliverable: 0,
    }
  }

  const viewOf = (t: MemoryTicket, firstLine: boolean): TicketView => {
    const result = results.get(t.ticket)
    const output =
      result === undefined ? null : firstLine ? (result.output.split("\n")[0] ?? "") : result.output
    return {
      ticket: t.ticket,
      runId: t.runId ?? null,
      peerId: t.peerId,
      name: t.name,
      command: t.command,
      state: t.state,
      attempts: t.attempts,
      closeReason: t.closeReason ?? null,
      createdAt: t.createdAt,
      deliveredAt: t.deliveredAt,
      finishedAt: t.finishedAt ?? (isTerminal(t.state) ? (result?.receivedAt ?? null) : null),
      exitCode: result?.exitCode ?? null,
      output,
      truncated: result?.truncated ?? false,
      startedAt: null,
      endedAt: null,
      online: online(t.peerId),
    }
  }

  const infoOf = (run: MemoryRun): RunInfo => {
    const counts: Partial<Record<TicketState, number>> = {}
    let offline = 0
    for (const t of ticketsOf(run.runId)) {
      counts[t.state] = (counts[t.state] ?? 0) + 1
      if (!isTerminal(t.state) && !online(t.peerId)) offline++
    }
    return { ...run, counts, offline }
  }

  return RunStore.of({
    createRun: (spec) =>
      Effect.suspend((): Effect.Effect<CreatedRun, NoMatchingPeers> => {
        if (isEmptyTarget(spec.target)) {
          return Effect.fail(
            new NoMatchingPeers({
              message: "no target given: name peers, an os, a distro, labels, or all",
              unknown: [],
            }),
          )
        }
        const unknown = (spec.target.peers ?? []).filter((id) => !peers.has(id))
        if (unknown.length > 0) {
          return Effect.fail(
            new NoMatchingPeers({ message: `no peer ${unknown.join(", ")} has ever registered`, unknown }),
          )
        }
        const matching: Array<RunPeer> = [...peers]
          .map(([peerId, p]) => ({
            peerId,
            os: p.os,
            distro: p.distro,
            labels: p.labels,
            online: online(peerId),
          }))
          .filter((p) => matchesTarget(spec.target, p))
          .sort((a, b) => (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0))
        const chosen = spec.onlineOnly === true ? matching.filter((p) => p.online) : matching
        const skipped = spec.onlineOnly === true ? matching.filter((p) => !p.online) : []
        const maxConcurrency = resolveAmount(spec.maxConcurrency, chosen.length, "concurrency")
        const maxErrors = resolveAmount(spec.maxErrors, chosen.length, "errors")
        const base = { peers: chosen, skipped, maxConcurrency, maxErrors }
        if (spec.dryRun === true) return Effect.succeed({ ...base, runId: null, tickets: [], owners: [] })
        if (chosen.length === 0 && spec.allowEmpty !== true) {
          return Effect.fail(
            new NoMatchingPeers({
              message:
                matching.length === 0
                  ? "no peer matches the target"
                  : `none of the ${matching.length} matching peer(s) is online`,
              unknown: [],
            }),
          )
        }
        const now = Date.now()
        const runId = `r${memory.nextRun++}`
        runs.set(runId, {
          runId,
          createdAt: now,
          createdBy: spec.createdBy,
          name: spec.name,
          command: spec.command,
          timeoutMs: spec.timeoutMs,
          target: spec.target,
          maxConcurrency,
          maxErrors,
          deliverBy: now + spec.deliverWithinMs,
          closedAt: chosen.length === 0 ? now : null,
        })
        const owners = new Map<string, SessionOwner>()
        const created = chosen.map((p, i) => {
          const queued = maxConcurrency === null || i < maxConcurrency
          const owner = queued ? openSessionOf(p.peerId) : undefined
          if (owner !== undefined) owners.set(owner.sessionId, owner)
          const ticket: MemoryTicket = {
            ticket: String(memory.nextTicket++),
            peerId: p.peerId,
            sessionId: owner?.sessionId ?? null,
            jobId: null,
            name: spec.name,
            os: p.os ?? "",
            distro: p.distro ?? "",
            command: spec.command,
            timeoutMs: spec.timeoutMs,
            state: queued ? "queued" : "pending",
            attempts: 0,
            deliveredAt: null,
            createdAt: now,
            runId,
            finishedAt: null,
          }
          tickets.set(ticket.ticket, ticket)
          return copy(ticket)
        })
        return Effect.succeed({ ...base, runId, tickets: created, owners: [...owners.values()] })
      }),

    advanceRuns: (runIds) => Effect.sync(() => advance(runIds)),

    sweepRuns: () =>
      Effect.sync(() => {
        const now = Date.now()
        let undeliverable = 0
        const open = [...runs.values()].filter((r) => r.closedAt === null)
        for (const run of open) {
          if (run.deliverBy > now) continue
          for (const t of ticketsOf(run.runId)) {
            if (t.state === "pending" || t.state === "queued") {
              end(t, "undeliverable", RUN_DEADLINE_REASON)
              undeliverable++
            }
          }
        }
        return { ...advance(open.map((r) => r.runId)), undeliverable }
      }),

    runInfo: (runId) =>
      Effect.sync(() => {
        const run = runs.get(runId)
        return run === undefined ? undefined : infoOf(run)
      }),

    recentRuns: (limit) =>
      Effect.sync(() =>
        [...runs.values()]
          .sort((a, b) => b.createdAt - a.createdAt || Number(b.runId.slice(1)) - Number(a.runId.slice(1)))
          .slice(0, Math.max(0, limit))
          .map(infoOf),
      ),

    runTickets: (runId, options) =>
      Effect.sync(() =>
        ticketsOf(runId)
          .filter((t) => options?.endedSince === undefined || isTerminal(t.state))
          .map((t) => viewOf(t, true)),
      ),

    ticketView: (ticket) =>
      Effect.sync(() => {
        const t = tickets.get(ticket)
        return t === undefined ? undefined : viewOf(t, false)
      }),

    openTickets: ({ peerId, runId, limit }) =>
      Effect.sync(() =>
        memory
          .openTicketsWhere(
            (t) =>
              (peerId === undefined || t.peerId === peerId) &&
              (runId === undefined || tickets.get(t.ticket)?.runId === runId),
          )
          .slice(0, Math.max(0, limit))
          .map((t) => viewOf(tickets.get(t.ticket)!, true)),
      ),

    peerViews: () =>
      Effect.sync(() =>
        [...peers]
          .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
          .map(([peerId, p]) => {
            const owner = openSessionOf(peerId)
            return {
              peerId,
              os: p.os,
              distro: p.distro,
              hostname: null,
              agentVersion: null,
              labels: p.labels,
              lastSeenAt: p.lastSeenAt,
              heldBy: owner?.ownerId ?? null,
              sessionId: owner?.sessionId ?? null,
            }
          }),
      ),
  })
}
