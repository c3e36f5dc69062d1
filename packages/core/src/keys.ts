/**
 * Every Redis key and channel name of the system, in one place.
 *
 * Layout (prefix defaults to "picus"; tests use their own prefix per run):
 *
 *   {p}:uplink                  stream   peer -> servers. register, result, heartbeat, logout.
 *                                        Read by the consumer group "servers": each entry goes to
 *                                        exactly one server instance, which XACKs it only after the
 *                                        PostgreSQL commit; entries of a dead instance are reclaimed
 *                                        with XAUTOCLAIM.
 *   {p}:peer:{peerId}:inbox     stream   server -> one peer. accepted/rejected, jobs, shutdown.
 *                                        Read by that peer alone (XREAD from its last id), so a peer
 *                                        that was away briefly still finds its jobs; it trims what it
 *                                        has handled.
 *   {p}:server:{serverId}:inbox stream   server -> one server instance: peer messages forwarded by
 *                                        the instance that read them to the instance that owns the
 *                                        peer's session. Read by that instance (group "servers").
 *   {p}:reply:{nonce}           stream   server -> a registering peer: the answer to the registration that
 *                                        carried this nonce (random, chosen by the peer, so only it can
 *                                        name the key). Expires after REPLY_TTL_MS.
 *   {p}:peer:{peerId}:owner     string   which instance owns the peer's session: a hint mirrored from
 *                                        the owner's memory, set with a TTL and renewed while it lives.
 *   {p}:deadletters             stream   uplink entries no instance could handle (a permanent refusal,
 *                                        or too many attempts), each with its reason, attempts and
 *                                        where it came from; operators list, retry or drop them. Capped
 *                                        (MAXLEN ~): the oldest go first.
 *   {p}:events                  channel  pub/sub, may be lost: the live event feed for operators.
 *
 * Per-peer keys share the prefix `{p}:peer:{peerId}:` so that a Redis ACL user per peer can be
 * limited to `~{p}:peer:{peerId}:*` plus XADD on the uplink.
 */

export const UPLINK_GROUP = "servers"

export interface Keys {
  readonly prefix: string
  readonly uplink: string
  readonly events: string
  readonly deadLetters: string
  readonly peerInbox: (peerId: string) => string
  readonly peerOwner: (peerId: string) => string
  readonly reply: (nonce: string) => string
  readonly serverInbox: (serverId: string) => string
}

/** Ids are free text on the wire; escape what would let one id reach into another's keys. */
const escapeId = (id: string): string => encodeURIComponent(id).replaceAll("*", "%2A")

export const makeKeys = (prefix = "picus"): Keys => ({
  prefix,
  uplink: `${prefix}:uplink`,
  events: `${prefix}:events`,
  deadLetters: `${prefix}:deadletters`,
  peerInbox: (peerId) => `${prefix}:peer:${escapeId(peerId)}:inbox`,
  peerOwner: (peerId) => `${prefix}:peer:${escapeId(peerId)}:owner`,
  reply: (nonce) => `${prefix}:reply:${escapeId(nonce)}`,
  serverInbox: (serverId) => `${prefix}:server:${escapeId(serverId)}:inbox`,
})
