/** `picus watch`: the live event feed, one line (or JSON object) per event. */
import { Protocol, Transport, TransportRedis, UsageError } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect, Stream } from "effect"
import { resolveServerConfig, type ServerFlags, sharedOptions } from "server"
import { run } from "../support.ts"

type WatchFlags = ServerFlags & {
  json?: boolean
  peer?: string | ReadonlyArray<string>
  event?: string | ReadonlyArray<string>
}

const EVENTS: ReadonlyArray<Protocol.FeedEvent["event"]> = [
  "registered",
  "rejected",
  "taken_over",
  "job_sent",
  "result",
  "logged_out",
  "shutdown",
  "output",
  "cancelled",
]

const listOf = (value: string | ReadonlyArray<string> | undefined): ReadonlyArray<string> =>
  value === undefined ? [] : (Array.isArray(value) ? value : [value]).map(String)

/** What an event says beyond its kind and peer. */
const details = (e: Protocol.FeedEvent): string => {
  switch (e.event) {
    case "registered":
      return `session ${e.session_id} ${e.os ?? "?"}/${e.distro ?? "?"} ${e.tickets} ticket(s)`
    case "rejected":
    case "logged_out":
    case "shutdown":
      return e.reason
    case "taken_over":
      return `session ${e.session_id} from ${e.from_server_id}`
    case "job_sent":
      return `ticket ${e.ticket} ${e.name}`
    case "result":
      return `ticket ${e.ticket} ${e.name} ${e.status}${e.exit_code === null ? "" : ` exit ${e.exit_code}`} ${JSON.stringify(e.first_line)}`
    case "output":
      return `ticket ${e.ticket} ${e.stream} #${e.seq}${e.dropped ? ` (${e.dropped} bytes dropped)` : ""} ${JSON.stringify(e.data)}`
    case "cancelled":
      return `ticket ${e.ticket}${e.requested ? " (asked to stop)" : ""} ${e.reason}`
  }
}

/** One line: time, server, event, peer, details. */
export const watchLine = (e: Protocol.FeedEvent): string =>
  [new Date(e.at).toISOString(), e.server_id, e.event, "peer_id" in e ? e.peer_id : "-", details(e)].join(
    "  ",
  )

export const registerWatch = (cli: CAC): void => {
  sharedOptions(cli.command("watch", "The live event feed: registrations, logins, logouts, tickets, output"))
    .option("--json", "One JSON object per event")
    .option("--peer <id>", "Only this peer's events (repeatable)")
    .option("--event <name>", `Only this kind of event (repeatable): ${EVENTS.join(", ")}`)
    .example("picus watch --peer web-7 --event result")
    .action((flags: WatchFlags) => {
      const config = resolveServerConfig(flags)
      const peers = new Set(listOf(flags.peer))
      const events = new Set(listOf(flags.event))
      const bad = [...events].find((e) => !EVENTS.includes(e as Protocol.FeedEvent["event"]))
      if (bad !== undefined)
        return run(Effect.fail(new UsageError(`--event ${bad}: not an event; one of ${EVENTS.join(", ")}`)))
      return run(
        Effect.gen(function* () {
          const transport = yield* Transport
          // Told on stderr, so a pipe of lines or JSON stays clean.
          yield* Console.error(`watching the feed of ${config.redisPrefix} (Ctrl+C to stop)`)
          yield* transport.subscribe.pipe(
            Stream.runForEach((payload) => {
              const e = Protocol.decodeFeedEvent(payload)
              if (e === undefined) return Effect.void
              if (events.size > 0 && !events.has(e.event)) return Effect.void
              if (peers.size > 0 && !("peer_id" in e && peers.has(e.peer_id))) return Effect.void
              return Console.log(flags.json ? payload : watchLine(e))
            }),
          )
        }).pipe(
          Effect.provide(TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix })),
        ),
      )
    })
}
