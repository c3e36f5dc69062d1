import { AskTimeout, LeaseLost, MailboxFull, StoreError, storeFailureKind, TransportError } from "@picus/core"
import { Cause, Option } from "effect"

/**
 * What to do with an uplink entry that failed, judged by the error's tagged type and its kind
 * (never its text):
 * - `wait`: a passing failure (PostgreSQL or Redis away, a session busy): try again after a
 *   backoff, as often as it takes; the entry is not to blame;
 * - `retry`: a failure that may pass (the session moved, a cause not known): try again, at most
 *   `maxAttempts` times in all;
 * - `deadLetter`: set it aside with the reason: the database refused it, or it used up its tries.
 */
export type Decision =
  | { readonly _tag: "wait" }
  | { readonly _tag: "retry" }
  | { readonly _tag: "deadLetter"; readonly reason: string }

export const judge = (cause: Cause.Cause<unknown>, attempts: number, maxAttempts: number): Decision => {
  const error = Cause.findErrorOption(cause)
  if (Option.isSome(error)) {
    const e = error.value
    if (e instanceof StoreError) {
      const kind = storeFailureKind(e)
      if (kind === "unavailable") return { _tag: "wait" }
      if (kind === "rejected") return { _tag: "deadLetter", reason: `refused by the database: ${e.message}` }
    }
    if (e instanceof TransportError || e instanceof MailboxFull || e instanceof AskTimeout)
      return { _tag: "wait" }
    if (attempts < maxAttempts) return { _tag: "retry" }
    const what = e instanceof LeaseLost ? "its session kept moving" : describe(e)
    return { _tag: "deadLetter", reason: `failed ${attempts} times: ${what}` }
  }
  if (attempts < maxAttempts) return { _tag: "retry" }
  return { _tag: "deadLetter", reason: `failed ${attempts} times: ${firstLine(Cause.pretty(cause))}` }
}

const describe = (e: unknown): string =>
  e instanceof Error ? `${e.name}: ${e.message}` : typeof e === "string" ? e : "an unknown error"

const firstLine = (text: string): string => (text.split("\n")[0] ?? "").slice(0, 500)
