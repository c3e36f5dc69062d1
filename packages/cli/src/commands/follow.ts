/**
 * Following tickets live: their output as their peers send it (relayed on the feed, never
 * stored), then each one's final status from PostgreSQL. `picus ticket <id> --follow` follows one
 * (`followTicket`); `followTickets` follows many (a run's), each line prefixed with its peer's id.
 */
import {
  isTerminal,
  Protocol,
  type StoreError,
  type TicketInfo,
  TicketStore,
  Transport,
  type TransportError,
  TransportRedis,
  UsageError,
} from "@picus/core"
import { Effect, Fiber, Option, Stream } from "effect"
import type { ServerConfig } from "server"
import { withExistingStore } from "server"

export interface FollowOptions {
  /** Prefix each line with the ticket's peer id (for many tickets at once). */
  readonly prefix?: boolean
  /** Where output goes, as it comes (default: stdout). */
  readonly write?: (text: string) => void
  /** Where notes about the output go (default: stderr), apart from the output itself. */
  readonly note?: (line: string) => void
  /** How often PostgreSQL is asked whether the tickets ended (default 250 ms). */
  readonly pollMs?: number
}

/** What was shown of a ticket's output so far. */
interface Shown {
  text: string
  next: number
  /** Chunks lost or bytes dropped on the way: the live text is not the whole output. */
  gaps: boolean
  /** A line not yet ended (prefixed output is written a whole line at a time). */
  partial: string
}

/**
 * Follows tickets until each has ended: prints the output their peers relay while they run, and,
 * once a ticket has ended, what of its stored output was not shown live (all of it when nothing
 * came live: a short job, a peer that does not stream, a feed that lost it). Returns each ticket's
 * final record; a ticket unknown to PostgreSQL is left out.
 */
export const followTickets = Effect.fnUntraced(function* (
  tickets: ReadonlyArray<string>,
  options: FollowOptions = {},
): Effect.fn.Return<ReadonlyMap<string, TicketInfo>, StoreError | TransportError, TicketStore | Transport> {
  const store = yield* TicketStore
  const transport = yield* Transport
  const write = options.write ?? ((text: string) => void process.stdout.write(text))
  const note = options.note ?? ((line: string) => void process.stderr.write(`${line}\n`))
  const wanted = new Set(tickets)
  const shown = new Map<string, Shown>()
  const peers = new Map<string, string>()
  const ended = new Map<string, TicketInfo>()

  /** Writes output of a ticket; prefixed, a whole line at a time (`flush`: and the last, unended). */
  const emit = (ticket: string, text: string, flush = false) => {
    if (!options.prefix) return text.length > 0 ? write(text) : undefined
    const s = stateOf(ticket)
    const lines = (s.partial + text).split("\n")
    s.partial = lines.pop() ?? ""
    if (flush && s.partial.length > 0) lines.push(s.partial)
    if (flush) s.partial = ""
    const peer = peers.get(ticket) ?? "?"
    for (const line of lines) write(`${peer}: ${line}\n`)
  }
  const stateOf = (ticket: string) => {
    let s = shown.get(ticket)
    if (s === undefined) {
      s = { text: "", next: 0, gaps: false, partial: "" }
      shown.set(ticket, s)
    }
    return s
  }

  // Subscribed before the first look at PostgreSQL, so nothing falls between the two.
  const listening = yield* transport.subscribe.pipe(
    Stream.runForEach((payload) =>
      Effect.sync(() => {
        const event = Protocol.decodeFeedEvent(payload)
        if (event?.event !== "output" || !wanted.has(event.ticket) || ended.has(event.ticket)) return
        peers.set(event.ticket, event.peer_id)
        const s = stateOf(event.ticket)
        if (event.seq !== s.next || (event.dropped ?? 0) > 0) s.gaps = true
        s.next = event.seq + 1
        s.text += event.data
        emit(event.ticket, event.data)
      }),
    ),
    Effect.forkChild,
  )
  let open = [...wanted]
  while (open.length > 0) {
    for (const ticket of open) {
      const info = yield* store.ticketInfo(ticket)
      if (Option.isNone(info)) {
        wanted.delete(ticket)
        continue
      }
      peers.set(ticket, info.value.peerId)
      if (!isTerminal(info.value.state)) continue
      ended.set(ticket, info.value)
      const s = stateOf(ticket)
      const output = info.value.result?.output ?? ""
      // The stored output is the whole of it: what was not shown live follows. Following that
      // began after the job's first output (pub/sub keeps nothing) shows the rest, and says so.
      const after = s.text.length === 0 ? 0 : output.lastIndexOf(s.text)
      if (output.startsWith(s.text)) emit(ticket, output.slice(s.text.length))
      else if (after >= 0) emit(ticket, output.slice(after + s.text.length))
      emit(ticket, "", true)
      if (s.gaps || after > 0)
        note(`(not all of ticket ${ticket}'s output was shown live: picus ticket ${ticket} shows it whole)`)
    }
    open = open.filter((t) => wanted.has(t) && !ended.has(t))
    if (open.length > 0) yield* Effect.sleep(options.pollMs ?? 250)
  }
  yield* Fiber.interrupt(listening)
  return ended
})

/** One line on a ticket's end: its state, exit code and why when it did not end by a result. */
export const endLine = (info: TicketInfo): string => {
  const exit = info.result?.exitCode
  const why = info.closeReason === null ? "" : `: ${info.closeReason}`
  return `ticket ${info.ticket} (${info.peerId}) ${info.state}${exit === undefined || exit === null ? "" : ` (exit ${exit})`}${why}`
}

/**
 * `picus ticket <id> --follow`: the ticket's output as it comes, then its end on stderr; the exit
 * code is 0 if it succeeded, else 1.
 */
export const followTicket = (ticket: string, config: ServerConfig) =>
  withExistingStore(
    config,
    Effect.gen(function* () {
      const info = (yield* followTickets([ticket])).get(ticket)
      if (info === undefined) return yield* Effect.fail(new UsageError(`no ticket ${ticket}`))
      console.error(endLine(info))
      return info.state === "succeeded" ? 0 : 1
    }).pipe(Effect.provide(TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix }))),
  )

/**
 * Prints the live output of the tickets `follows` accepts, a whole line at a time, each prefixed
 * with its peer's id, until interrupted (then the lines left unended). For a run's many tickets:
 * it reads nothing from PostgreSQL, only the feed.
 */
export const printLiveOutput = (
  follows: (ticket: string) => boolean,
  write: (line: string) => void = (line) => void process.stdout.write(line),
): Effect.Effect<never, TransportError, Transport> =>
  Effect.gen(function* () {
    const transport = yield* Transport
    const partial = new Map<string, { readonly peer: string; text: string }>()
    yield* transport.subscribe.pipe(
      Stream.runForEach((payload) =>
        Effect.sync(() => {
          const event = Protocol.decodeFeedEvent(payload)
          if (event?.event !== "output" || !follows(event.ticket)) return
          const open = partial.get(event.ticket) ?? { peer: event.peer_id, text: "" }
          const lines = (open.text + event.data).split("\n")
          open.text = lines.pop() ?? ""
          partial.set(event.ticket, open)
          for (const line of lines) write(`${event.peer_id}: ${line}\n`)
        }),
      ),
      Effect.ensuring(
        Effect.sync(() => {
          for (const { peer, text } of partial.values()) if (text.length > 0) write(`${peer}: ${text}\n`)
        }),
      ),
    )
    return yield* Effect.never
  })
