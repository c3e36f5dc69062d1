/**
 * `picus run`, `picus cancel` and `picus peers` alone, for when they go through a server's HTTP API
 * (PICUS_API_URL): main.ts starts this instead of the whole operator's program, which loads the
 * stores and Redis for its other commands. Same flags as the whole program's (runView.ts,
 * cancelView.ts, peersView.ts), same behaviour (api/run.ts, api/cancel.ts, api/peers.ts).
 */
import { cac } from "cac"
import { type CancelFlags, defineCancel } from "./commands/cancelView.ts"
import { definePeers, type PeersFlags } from "./commands/peersView.ts"
import { apiUrlOf, defineRun, type RunFlags } from "./commands/runView.ts"

const urlOf = (flags: { readonly apiUrl?: string }): string => {
  const url = apiUrlOf(flags)
  if (url === undefined) throw new Error("apiRunProgram: no API URL")
  return url
}

export const apiRunProgram = (name: string) => {
  const cli = cac(name)
  defineRun(cli).action(async (words: ReadonlyArray<string>, flags: RunFlags) =>
    (await import("./api/run.ts")).runViaApi(flags, words.map(String), urlOf(flags)),
  )
  defineCancel(cli).action(async (ticket: string, more: ReadonlyArray<string>, flags: CancelFlags) =>
    (await import("./api/cancel.ts")).cancelViaApi(
      flags,
      [String(ticket), ...more.map(String)],
      urlOf(flags),
    ),
  )
  definePeers(cli).action(async (action: string | undefined, _id: unknown, flags: PeersFlags) =>
    (await import("./api/peers.ts")).peersViaApi(action, flags.json === true, urlOf(flags)),
  )
  return cli
}
