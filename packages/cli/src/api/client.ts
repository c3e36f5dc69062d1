/**
 * A small client of a server's HTTP API (docs/api.md), for the commands that go through it: JSON
 * requests and the event stream. On Node's own http module, taken as the CommonJS module it is:
 * its ESM face reads every export, WebSocket's too, which loads a whole second HTTP client first
 * (about 0.1 s of CPU, as much as the rest of such a command).
 */
import type * as Http from "node:http"
import type * as Https from "node:https"
import { EXIT_USAGE, UsageError } from "@picus/core"

export interface Api {
  readonly url: URL
  readonly token: string
  readonly agent: Http.Agent
}

/** An answer of the API other than 2xx, or the API out of reach: `message` says what to fix. */
export class ApiError extends Error {
  override readonly name = "ApiError"
  readonly status: number | undefined
  constructor(message: string, status: number | undefined, options?: ErrorOptions) {
    super(message, options)
    this.status = status
  }
}

const moduleOf = (url: URL): typeof Http =>
  url.protocol === "https:"
    ? (process.getBuiltinModule("node:https") as typeof Https as unknown as typeof Http)
    : (process.getBuiltinModule("node:http") as typeof Http)

/** The API at `urlText`, with the operator token of PICUS_API_TOKEN. */
export const apiOf = (urlText: string): Api => {
  let url: URL
  try {
    url = new URL(urlText)
  } catch {
    throw new UsageError(
      `--api-url (or PICUS_API_URL) must be a URL like http://127.0.0.1:8080, got "${urlText}"`,
    )
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new UsageError(`--api-url (or PICUS_API_URL) must be an http:// or https:// URL, got "${urlText}"`)
  const token = process.env.PICUS_API_TOKEN?.trim() ?? ""
  if (token === "")
    throw new UsageError(
      `set PICUS_API_TOKEN to an operator token for ${url.origin} (picus operator-token create --name me --scope admin)`,
    )
  const Agent = moduleOf(url).Agent
  return { url, token, agent: new Agent({ keepAlive: true }) }
}

const unreachable = (api: Api, cause: unknown) => {
  const code = (cause as { code?: string }).code
  const why = code ?? (cause instanceof Error ? cause.message : String(cause))
  return new ApiError(
    `cannot reach the API at ${api.url.origin} (${why}); set PICUS_API_URL or --api-url to a server's --http address`,
    undefined,
    { cause },
  )
}

/** What a non-2xx answer means to the operator. */
const failureOf = (api: Api, status: number, text: string): ApiError => {
  let said: { error?: string; field?: string } = {}
  try {
    said = JSON.parse(text) as typeof said
  } catch {
    // Not the API's JSON (a proxy's page, say): its status speaks.
  }
  const error = said.error ?? (text.trim().slice(0, 200) || `HTTP ${status}`)
  if (status === 401)
    return new ApiError(
      `the API at ${api.url.origin} refused the token (${error}): set PICUS_API_TOKEN to an operator token (picus operator-token create)`,
      status,
    )
  if (status === 403)
    return new ApiError(`${error}: this needs an admin operator token in PICUS_API_TOKEN`, status)
  return new ApiError(said.field === undefined ? error : `${error} (${said.field})`, status)
}

const headersOf = (api: Api, extra: Record<string, string> = {}) => ({
  authorization: `Bearer ${api.token}`,
  accept: "application/json",
  ...extra,
})

/** One request; the parsed JSON of a 2xx answer, else an ApiError. */
export const request = <A>(api: Api, method: "GET" | "POST", path: string, body?: unknown): Promise<A> =>
  new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : JSON.stringify(body)
    const req = moduleOf(api.url).request(
      new URL(path, api.url),
      {
        method,
        agent: api.agent,
        headers: headersOf(
          api,
          payload === undefined
            ? {}
            : { "content-type": "application/json", "content-length": String(Buffer.byteLength(payload)) },
        ),
      },
      (res) => {
        const chunks: Array<Buffer> = []
        res.on("data", (chunk: Buffer) => chunks.push(chunk))
        res.on("error", (cause) => reject(unreachable(api, cause)))
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8")
          const status = res.statusCode ?? 0
          if (status < 200 || status >= 300) return reject(failureOf(api, status, text))
          try {
            resolve(JSON.parse(text) as A)
          } catch (cause) {
            reject(
              new ApiError(`the API at ${api.url.origin} answered ${path} with no JSON`, status, {
                cause,
              }),
            )
          }
        })
      },
    )
    req.on("error", (cause) => reject(unreachable(api, cause)))
    req.end(payload)
  })

export interface EventStream {
  /** Resolves once the server has subscribed this stream (events published from then on come). */
  readonly connected: Promise<void>
  /** Resolves when the stream ends, for whatever reason. */
  readonly ended: Promise<void>
  readonly close: () => void
}

/** `GET /api/events`: each event's JSON to `onEvent`, as it comes. */
export const openEvents = (api: Api, onEvent: (event: Record<string, unknown>) => void): EventStream => {
  let connect!: () => void
  let fail!: (error: unknown) => void
  let end!: () => void
  const connected = new Promise<void>((resolve, reject) => {
    connect = resolve
    fail = reject
  })
  const ended = new Promise<void>((resolve) => {
    end = resolve
  })
  // Only awaited by those who want it: an unreached API is told by the requests too.
  connected.catch(() => {})
  const req = moduleOf(api.url).request(
    new URL("/api/events", api.url),
    { headers: headersOf(api, { accept: "text/event-stream" }) },
    (res) => {
      const status = res.statusCode ?? 0
      if (status !== 200) {
        const chunks: Array<Buffer> = []
        res.on("data", (chunk: Buffer) => chunks.push(chunk))
        res.on("end", () => {
          fail(failureOf(api, status, Buffer.concat(chunks).toString("utf8")))
          end()
        })
        return
      }
      let pending = ""
      res.setEncoding("utf8")
      res.on("data", (text: string) => {
        pending += text
        for (let at = pending.indexOf("\n\n"); at >= 0; at = pending.indexOf("\n\n")) {
          const block = pending.slice(0, at)
          pending = pending.slice(at + 2)
          // The server's first words: it has subscribed.
          if (block.startsWith(": connected")) connect()
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data: "))
            .map((line) => line.slice(6))
            .join("\n")
          if (data === "") continue
          try {
            onEvent(JSON.parse(data) as Record<string, unknown>)
          } catch {
            // Not JSON: not an event of ours.
          }
        }
      })
      res.on("close", end)
      res.on("error", end)
    },
  )
  req.on("error", (cause) => {
    fail(unreachable(api, cause))
    end()
  })
  req.end()
  return { connected, ended, close: () => req.destroy() }
}

/**
 * Runs a command through the API at `url` and exits with its code: 2 for a usage mistake (or a
 * `400`), `codeOfStatus` for other answers of the API (default 1), 1 for anything else.
 */
export const exitThroughApi = async (
  url: string,
  body: (api: Api) => Promise<number>,
  codeOfStatus: (status: number | undefined) => number = () => 1,
): Promise<never> => {
  let code: number
  let api: Api | undefined
  try {
    api = apiOf(url)
    code = await body(api)
  } catch (error) {
    console.error(`error: ${error instanceof Error ? error.message : String(error)}`)
    code =
      error instanceof UsageError
        ? EXIT_USAGE
        : error instanceof ApiError
          ? error.status === 400
            ? EXIT_USAGE
            : codeOfStatus(error.status)
          : 1
  }
  api?.agent.destroy()
  process.exit(code)
}
