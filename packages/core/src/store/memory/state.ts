import { holds } from "../../domain/lease.ts"
import { isTerminal } from "../../domain/ticket.ts"
import type { CatalogJob } from "../CatalogStore.ts"
import type { OperatorTokenInfo } from "../OperatorTokenStore.ts"
import type { LogRow, ResultRow } from "../ReportStore.ts"
import type { RunTarget } from "../RunStore.ts"
import type { SessionOwner } from "../SessionStore.ts"
import type { Ticket } from "../TicketStore.ts"
import type { TokenInfo } from "../TokenStore.ts"

export type MemoryTicket = { -readonly [K in keyof Ticket]: Ticket[K] } & {
  createdAt: number
  closeReason?: string | null
  /** An operator's cancel of it while delivered: who and why (tickets.cancel_reason). */
  cancelReason?: string | null
  runId?: string | null
  finishedAt?: number | null
}

export interface MemoryRun {
  readonly runId: string
  readonly createdAt: number
  readonly createdBy: string
  readonly name: string
  readonly command: string
  readonly timeoutMs: number
  readonly target: RunTarget
  readonly maxConcurrency: number | null
  readonly maxErrors: number | null
  readonly deliverBy: number
  closedAt: number | null
}

export interface MemorySession {
  readonly peerId: string
  readonly os: string | null
  readonly distro: string | null
  readonly heartbeats: boolean
  readonly sealed: boolean
  readonly openedAt: number
  readonly tokenId: number | null
  ownerId: string
  /** The run of its owner that holds it (see MemoryInstance.run). */
  ownerRun: number
  epoch: number
  closed: boolean
}

export interface MemoryInstance {
  startedAt: number
  aliveAt: number
  stoppedAt: number | null
  beats: number
  /** One more at each start: the sessions of an earlier run are lost. */
  run: number
  /** Its lease: it holds its current run's sessions until then. */
  leaseUntil: number
}

/**
 * The tables of the in-memory store, shared by its domain parts (a login touches sessions and
 * tickets, a result tickets and results), with the reads more than one part needs.
 */
export const makeMemoryState = () => {
  const state = {
    tokens: [] as Array<TokenInfo & { readonly hash: string }>,
    operatorTokens: [] as Array<OperatorTokenInfo & { readonly hash: string }>,
    catalog: new Map<string, CatalogJob & { enabled: boolean }>(),
    peers: new Map<
      string,
      {
        lastSeenAt: number
        os: string | null
        distro: string | null
        labels: Readonly<Record<string, string>>
      }
    >(),
    log: [] as Array<LogRow>,
    tickets: new Map<string, MemoryTicket>(),
    sessions: new Map<string, MemorySession>(),
    results: new Map<string, ResultRow>(),
    runs: new Map<string, MemoryRun>(),
    nextRun: 1000,
    instances: new Map<string, MemoryInstance>(),
    /** What binds each peer id to its identity key (peers.identity_key and the rest in PostgreSQL). */
    identities: new Map<
      string,
      { identityKey: string | null; lastRegisterTs: number | null; lastAdmittedAt: number | null }
    >(),
    nextTokenId: 1,
    nextOperatorTokenId: 1,
    nextLogId: 1,
    nextTicket: 100_000,

    copy: ({
      createdAt: _createdAt,
      closeReason: _closeReason,
      runId: _runId,
      finishedAt: _finishedAt,
      ...t
    }: MemoryTicket): Ticket => ({ ...t }),
    oldestFirst: (a: { ticket: string }, b: { ticket: string }) => Number(a.ticket) - Number(b.ticket),
    openTicketsWhere: (match: (t: Ticket) => boolean) =>
      [...state.tickets.values()].filter((t) => !isTerminal(t.state) && match(t)).sort(state.oldestFirst),
    openSessionOf: (peerId: string): SessionOwner | undefined => {
      const open = [...state.sessions].filter(([, s]) => s.peerId === peerId && !s.closed)
      const [sessionId, s] = open.sort(([, a], [, b]) => b.openedAt - a.openedAt)[0] ?? []
      if (sessionId === undefined || s === undefined) return undefined
      return {
        sessionId,
        ownerId: s.ownerId,
        epoch: s.epoch,
        expired: state.lost(s),
        sealed: s.sealed,
      }
    },
    /** No longer held: its owner's lease ran out, or its owner started again since it got it. */
    lost: (s: MemorySession): boolean => {
      const owner = state.instances.get(s.ownerId)
      return owner === undefined || owner.run !== s.ownerRun || owner.leaseUntil < Date.now()
    },
    /** The instance's row, made with a lease of `leaseMs` if it had none (as PostgreSQL's). */
    instance: (serverId: string, leaseMs: number): MemoryInstance => {
      const now = Date.now()
      const found = state.instances.get(serverId)
      if (found !== undefined) return found
      const made = {
        startedAt: now,
        aliveAt: now,
        stoppedAt: null,
        beats: 1,
        run: 1,
        leaseUntil: now + leaseMs,
      }
      state.instances.set(serverId, made)
      return made
    },
    holds: (sessionId: string, epoch: number) => {
      const s = state.sessions.get(sessionId)
      return s !== undefined && !s.closed && holds({ sessionId, epoch }, { sessionId, epoch: s.epoch })
    },
  }
  return state
}

export type MemoryState = ReturnType<typeof makeMemoryState>
