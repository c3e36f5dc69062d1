import { Protocol } from "@picus/core"

/**
 * Renders feed events as one readable line each: time, peer, what happened. Colour and
 * alignment when writing to a terminal that supports them; plain lines otherwise (pipes, CI).
 */
export interface LiveViewOptions {
  readonly color: boolean
}

const codes = { dim: 2, red: 31, green: 32, yellow: 33, blue: 34, magenta: 35, cyan: 36 } as const
type Tone = keyof typeof codes

export const makeLiveView = ({ color }: LiveViewOptions) => {
  const paint = (tone: Tone, text: string) => (color ? `\x1b[${codes[tone]}m${text}\x1b[0m` : text)
  const time = (at: number) => new Date(at).toISOString().slice(11, 19)
  const line = (at: number, who: string, tone: Tone, what: string, detail = "") =>
    `${paint("dim", time(at))}  ${who.padEnd(14)}  ${paint(tone, what.padEnd(10))}  ${detail}`.trimEnd()

  return (event: Protocol.FeedEvent): string => {
    switch (event.event) {
      case "registered":
        return line(
          event.at,
          event.peer_id,
          "green",
          "accepted",
          `${event.os ?? "?"}/${event.distro ?? "?"}, ${event.tickets} job(s), session ${event.session_id.slice(0, 8)}`,
        )
      case "rejected":
        return line(event.at, event.peer_id, "red", "rejected", event.reason)
      case "taken_over":
        return line(event.at, event.peer_id, "yellow", "moved", `from ${event.from_server_id} (session kept)`)
      case "job_sent":
        return line(event.at, event.peer_id, "blue", "job", `#${event.ticket} ${event.name}`)
      case "result": {
        const ok = event.status === "succeeded"
        const exit = event.exit_code === null ? "" : ` exit ${event.exit_code}`
        return line(
          event.at,
          event.peer_id,
          ok ? "cyan" : "yellow",
          "result",
          `#${event.ticket} ${event.name}: ${event.status}${exit}  ${paint("dim", event.first_line.trim())}`,
        )
      }
      case "logged_out":
        return line(event.at, event.peer_id, "magenta", "logout", event.reason)
      case "shutdown":
        return line(event.at, event.server_id, "magenta", "shutdown", event.reason)
      case "output":
        return line(event.at, event.peer_id, "dim", event.stream, `#${event.ticket} ${event.data.trimEnd()}`)
      case "cancelled":
        return line(
          event.at,
          event.peer_id,
          "yellow",
          event.requested ? "cancel" : "cancelled",
          `#${event.ticket} ${event.reason}`,
        )
    }
  }
}

/** Whether stdout is a terminal that takes colour (and NO_COLOR is not set). */
export const stdoutWantsColor = (): boolean =>
  process.stdout.isTTY === true && process.env.NO_COLOR === undefined && process.stdout.hasColors?.() === true

export const renderFeedPayload = (
  render: ReturnType<typeof makeLiveView>,
  payload: string,
): string | undefined => {
  const event = Protocol.decodeFeedEvent(payload)
  return event ? render(event) : undefined
}
