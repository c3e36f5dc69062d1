import { Protocol, Trust } from "@picus/core"
import { Clock, Effect, Result, Schema } from "effect"

/**
 * What the peer trusts and how it checks what the server tells it. Every server message (inbox or
 * reply) must carry a `sig` trailer by the cluster key the peer pinned; an acceptance may also move
 * the pin, to the key of the first server that answers (trust on first use, or a fingerprint given
 * by the operator) or, after a rotation, to a new key the pinned one endorsed.
 */

/** The cluster key the operator gave: the key itself, or the fingerprint of the key to pin. */
export type ClusterKeyPin =
  | { readonly _tag: "Key"; readonly key: string }
  | { readonly _tag: "Fingerprint"; readonly fingerprint: string }

const B64_KEY = /^[A-Za-z0-9_-]{43}$/

/** `--cluster-key`: a base64url public key, or `sha256:` and its fingerprint. */
export const parseClusterKeyPin = (text: string): Result.Result<ClusterKeyPin, string> => {
  const given = text.trim()
  if (given.startsWith("sha256:")) {
    return B64_KEY.test(given.slice("sha256:".length))
      ? Result.succeed({ _tag: "Fingerprint", fingerprint: given })
      : Result.fail("a fingerprint is sha256: and 43 base64url characters (as the server prints it)")
  }
  return B64_KEY.test(given) && Trust.publicKeyOf(given) !== undefined
    ? Result.succeed({ _tag: "Key", key: given })
    : Result.fail("expected the cluster's public key (43 base64url characters) or sha256:<fingerprint>")
}

/** How a pin is written down, to tell later whether the operator gave another one. */
export const pinText = (pin: ClusterKeyPin): string => (pin._tag === "Key" ? pin.key : pin.fingerprint)

/** What the state file keeps: the key, and the pin given (or "first-use") that led to it. */
export interface PinnedClusterKey {
  readonly key: string
  readonly from: string
}

export const FIRST_USE = "first-use"

/** What the peer checks server messages against right now. */
export type Trusted =
  | { readonly _tag: "Pinned"; readonly key: string; readonly from: string }
  /** Nothing pinned yet: the first acceptance whose key has this fingerprint pins it. */
  | { readonly _tag: "Fingerprint"; readonly fingerprint: string }
  /** Nothing pinned yet: the first validly signed acceptance pins its key. */
  | { readonly _tag: "FirstUse" }

export class NoClusterKey extends Schema.TaggedError<NoClusterKey>()("NoClusterKey", {
  message: Schema.String,
}) {}

export const NO_CLUSTER_KEY =
  "no cluster key to check the server's messages with: start the peer with --enroll <enrollment string> " +
  "(or PICUS_ENROLL), or with --token and --cluster-key <public key or sha256:fingerprint>, or, to " +
  "trust the first server that answers, --trust-on-first-use"

/**
 * The trust the peer starts with. A key pinned in the state wins while the operator gives the same
 * pin as when it was pinned (a rotation moved it on since); a pin the operator changed wins over it.
 */
export const resolveTrust = (entry: {
  readonly given: ClusterKeyPin | undefined
  readonly trustOnFirstUse: boolean
  readonly pinned: PinnedClusterKey | undefined
}): Result.Result<{ readonly trusted: Trusted; readonly note?: string }, NoClusterKey> => {
  const { given, pinned } = entry
  if (pinned !== undefined && (given === undefined || pinned.from === pinText(given))) {
    return Result.succeed({ trusted: { _tag: "Pinned", key: pinned.key, from: pinned.from } })
  }
  const changed =
    pinned === undefined
      ? undefined
      : `the cluster key given is not the one pinned before (${Trust.fingerprintOf(pinned.key)}): pinning the one given`
  if (given?._tag === "Key") {
    return Result.succeed({
      trusted: { _tag: "Pinned", key: given.key, from: given.key },
      ...(changed ? { note: changed } : {}),
    })
  }
  if (given?._tag === "Fingerprint") {
    return Result.succeed({
      trusted: { _tag: "Fingerprint", fingerprint: given.fingerprint },
      ...(changed ? { note: changed } : {}),
    })
  }
  if (entry.trustOnFirstUse) {
    return Result.succeed({
      trusted: { _tag: "FirstUse" },
      note:
        "WARNING: trusting on first use: the key of the first server that answers is pinned, unchecked. " +
        "Whoever can write to Redis before then can pose as the server. Prefer --enroll or --cluster-key.",
    })
  }
  return Result.fail(new NoClusterKey({ message: NO_CLUSTER_KEY }))
}

/** What the cluster signs when it moves to a new key: the previous key endorses the new one. */
export const endorsementText = (publicKey: string): string => `picus cluster key ${publicKey}`

/** Why a message is refused; each kind is logged apart, at most once per interval. */
export type RefusalKind =
  | "malformed"
  | "unsigned"
  | "mis-signed"
  | "unpinned"
  | "another session"
  | "replayed"
  | "unsealable"

export type Verdict =
  | { readonly ok: true }
  | { readonly ok: false; readonly kind: RefusalKind; readonly why: string }

const refuse = (kind: RefusalKind, why: string) => ({ ok: false, kind, why }) as const

/**
 * A server message other than an acceptance: signed by the pinned key, or refused. A message of a
 * sealed session may carry the server's MAC instead, under `serverKey` (`Trust.serverToPeerKey` of
 * the unsealed token).
 */
export const checkServerMessage = (
  payload: string,
  trusted: Trusted,
  what: string,
  serverKey?: string,
): Verdict => {
  if (serverKey !== undefined) {
    switch (Trust.checkMac(payload, serverKey)) {
      case "valid":
        return { ok: true }
      case "invalid":
        return refuse("mis-signed", `${what}: its MAC is not the session's`)
      case "missing":
        break
    }
  }
  if (trusted._tag !== "Pinned") {
    return refuse("unpinned", `${what}: no cluster key is pinned yet to check it with`)
  }
  switch (Trust.checkSignature(payload, trusted.key)) {
    case "valid":
      return { ok: true }
    case "unsigned":
      return refuse("unsigned", `${what}: not signed`)
    case "invalid":
      return refuse("mis-signed", `${what}: not signed by the pinned cluster key`)
  }
}

export type AcceptanceVerdict =
  | {
      readonly ok: true
      /** The key that signed it, to pin when it differs from the pinned one. */
      readonly key: string
      readonly change?: "first-use" | "fingerprint" | "rotation"
    }
  | { readonly ok: false; readonly kind: RefusalKind; readonly why: string }

/** An acceptance: signed by the pinned key, or by a key it may pin (see the module's comment). */
export const checkAcceptance = (
  payload: string,
  accepted: Protocol.RegisterAccepted,
  trusted: Trusted,
): AcceptanceVerdict => {
  const shown = accepted.cluster_key
  const signedByShown = shown !== undefined && Trust.checkSignature(payload, shown) === "valid"
  switch (trusted._tag) {
    case "FirstUse":
      return signedByShown
        ? { ok: true, key: shown, change: "first-use" }
        : refuse(
            shown === undefined ? "unsigned" : "mis-signed",
            "acceptance: not signed by the key it shows",
          )
    case "Fingerprint":
      if (shown === undefined || Trust.fingerprintOf(shown) !== trusted.fingerprint) {
        return refuse("mis-signed", "acceptance: its cluster key does not have the fingerprint given")
      }
      return signedByShown
        ? { ok: true, key: shown, change: "fingerprint" }
        : refuse("mis-signed", "acceptance: not signed by the key it shows")
    case "Pinned": {
      const direct = Trust.checkSignature(payload, trusted.key)
      if (direct === "valid") return { ok: true, key: trusted.key }
      if (shown === undefined || shown === trusted.key) {
        return refuse(
          direct === "unsigned" ? "unsigned" : "mis-signed",
          `acceptance: ${direct === "unsigned" ? "not signed" : "not signed by the pinned cluster key"}`,
        )
      }
      // Signed by another key: only a key the pinned one endorsed may take its place.
      if (
        accepted.key_endorsement === undefined ||
        !Trust.verifyBytes(endorsementText(shown), accepted.key_endorsement, trusted.key)
      ) {
        return refuse("mis-signed", "acceptance: signed by a cluster key the pinned key did not endorse")
      }
      return signedByShown
        ? { ok: true, key: shown, change: "rotation" }
        : refuse("mis-signed", "acceptance: not signed by the endorsed key it shows")
    }
  }
}

/** What an acceptance seals to the registration's box key. */
const SealedSession = Schema.Struct({
  token: Protocol.Token,
  redis_user: Schema.optionalKey(Schema.String.check(Schema.isNonEmpty())),
  redis_password: Schema.optionalKey(Schema.String.check(Schema.isNonEmpty())),
})
export type SealedSession = typeof SealedSession.Type

const decodeSealed = Schema.decodeUnknownResult(Schema.fromJsonString(SealedSession))

/** Opens the acceptance's sealed part with the registration's box key. */
export const openSealed = (
  boxKey: Trust.BoxKeyPair,
  sealed: string | undefined,
): Result.Result<SealedSession, string> => {
  if (sealed === undefined) return Result.fail("acceptance: no sealed session token")
  const opened = Trust.unseal(boxKey, sealed)
  if (opened === undefined)
    return Result.fail("acceptance: its sealed part does not open with this registration's key")
  const decoded = decodeSealed(opened)
  return Result.isSuccess(decoded)
    ? Result.succeed(decoded.success)
    : Result.fail("acceptance: its sealed part is not a session token")
}

/**
 * Lines about refused messages, at most one per kind per interval: the first of a kind is told at
 * once, the rest are counted and told as a count once the interval is over (`flush`, called as
 * the peer goes round its loop). A flood of forgeries costs a line per kind per interval.
 */
export const makeRefusalLog = (options: {
  readonly intervalMs: number
  readonly write: (line: string) => Effect.Effect<void>
}) => {
  const kinds = new Map<RefusalKind, { since: number; count: number }>()
  const write = (line: string) => options.write(Trust.redactSecrets(line))
  return {
    refuse: (kind: RefusalKind, why: string): Effect.Effect<void> =>
      Effect.gen(function* () {
        const now = yield* Clock.currentTimeMillis
        const seen = kinds.get(kind)
        if (seen !== undefined && now - seen.since < options.intervalMs) {
          seen.count++
          return
        }
        if (seen !== undefined && seen.count > 0) yield* write(countLine(kind, seen.count, now - seen.since))
        kinds.set(kind, { since: now, count: 0 })
        yield* write(`refused a server message (${kind}): ${why}; more like it are counted`)
      }),
    flush: Effect.gen(function* () {
      if (kinds.size === 0) return
      const now = yield* Clock.currentTimeMillis
      for (const [kind, seen] of kinds) {
        if (now - seen.since < options.intervalMs) continue
        kinds.delete(kind)
        if (seen.count > 0) yield* write(countLine(kind, seen.count, now - seen.since))
      }
    }),
  }
}

const countLine = (kind: RefusalKind, count: number, ms: number) =>
  `refused ${count} more server message(s) (${kind}) in the last ${Math.round(ms / 1000)}s`
