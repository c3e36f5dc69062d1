/**
 * Every Redis key and channel name of the system, in one place.
 *
 * Layout (prefix defaults to "picus"; tests use their own prefix per run):
 *
 *   {p}:uplink:in               list     peer -> servers: the intake. Peers and enrolling peers RPUSH
 *                                        here, and nothing else (no argument of RPUSH trims or
 *                                        deletes). Server instances move its entries, in order, into
 *                                        {p}:uplink (lua/intake.lua), dropping those over
 *                                        MAX_MESSAGE_BYTES.
 *   {p}:uplink:in:dropped       string   how many intake entries were dropped for their size.
 *   {p}:uplink:in:since         string   when the intake was first seen left non-empty (ms), unset
 *                                        while it is empty: its part of the uplink backlog.
 *   {p}:uplink                  stream   servers only: what was moved from the intake. register,
 *                                        result, heartbeat, logout.
 *                                        Read by the consumer group "servers": each entry goes to
 *                                        exactly one server instance, which XACKs it only after the
 *                                        PostgreSQL commit; entries of a dead instance are reclaimed
 *                                        with XAUTOCLAIM.
 *   {p}:peer:{peerId}:inbox     stream   server -> one peer. accepted/rejected, jobs, shutdown.
 *                                        Read by that peer alone (XREAD from its last id), so a peer
 *                                        that was away briefly still finds its jobs; it trims what it
 *                                        has handled. One that a notice (a rejection, session_expired)
 *                                        created expires after REPLY_TTL_MS unless a session opens.
 *   {p}:server:{serverId}:inbox stream   server -> one server instance: peer messages forwarded by
 *                                        the instance that read them to the instance that owns the
 *                                        peer's session. Read by that instance (group "servers").
 *   {p}:reply:{nonce}           stream   server -> a registering peer: the answer to the registration that
 *                                        carried this nonce (random, chosen by the peer, so only it can
 *                                        name the key). Expires after REPLY_TTL_MS.
 *   {p}:peer:{peerId}:owner     string   which instance owns the peer's session: a hint mirrored from
 *                                        the owner's memory, set with a long TTL (thirty leases) and
 *                                        renewed a slice at a time while it lives.
 *   {p}:deadletters             stream   uplink entries no instance could handle (a permanent refusal,
 *                                        or too many attempts), each with its reason, attempts and
 *                                        where it came from; operators list, retry or drop them. Capped
 *                                        (MAXLEN ~): the oldest go first.
 *   {p}:events                  channel  pub/sub, may be lost: the live event feed for operators.
 *
 * Redis users (ACL), when the server runs with them (see docs/security.md):
 *
 *   {p}:enroll:{tokenId}        an enrolling peer: RPUSH on the intake, XREAD on {p}:reply:*.
 *   {p}:peer:{peerId}           a peer in a session (or a provisioned seed peer): RPUSH on the
 *                               intake; XREAD, XREVRANGE, XTRIM on its own inbox.
 *
 * No peer ever writes a shared stream (XADD ... MAXLEN 0 would empty it), reads another's inbox,
 * or lists keys. The rules are below, next to the keys they name.
 */

export const UPLINK_GROUP = "servers"

export interface Keys {
  readonly prefix: string
  readonly uplinkIntake: string
  readonly intakeDropped: string
  readonly intakeSince: string
  readonly uplink: string
  readonly events: string
  readonly deadLetters: string
  readonly peerInbox: (peerId: string) => string
  readonly peerOwner: (peerId: string) => string
  readonly reply: (nonce: string) => string
  readonly serverInbox: (serverId: string) => string
  /** The Redis user an enrolling peer logs in as, for the token it enrolls with. */
  readonly enrollUser: (tokenId: number | string) => string
  /** The Redis user of a peer (one session's, or a provisioned seed peer's). */
  readonly peerUser: (peerId: string) => string
}

/** Ids are free text on the wire; escape what would let one id reach into another's keys. */
const escapeId = (id: string): string => encodeURIComponent(id).replaceAll("*", "%2A")

export const makeKeys = (prefix = "picus"): Keys => ({
  prefix,
  uplinkIntake: `${prefix}:uplink:in`,
  intakeDropped: `${prefix}:uplink:in:dropped`,
  intakeSince: `${prefix}:uplink:in:since`,
  uplink: `${prefix}:uplink`,
  events: `${prefix}:events`,
  deadLetters: `${prefix}:deadletters`,
  peerInbox: (peerId) => `${prefix}:peer:${escapeId(peerId)}:inbox`,
  peerOwner: (peerId) => `${prefix}:peer:${escapeId(peerId)}:owner`,
  reply: (nonce) => `${prefix}:reply:${escapeId(nonce)}`,
  serverInbox: (serverId) => `${prefix}:server:${escapeId(serverId)}:inbox`,
  enrollUser: (tokenId) => `${prefix}:enroll:${escapeId(String(tokenId))}`,
  peerUser: (peerId) => `${prefix}:peer:${escapeId(peerId)}`,
})

/** A key name as an ACL pattern that matches it alone (Redis patterns are globs). */
const exactly = (key: string): string => key.replace(/[*?[\]\\]/g, "\\$&")

/**
 * Rules are sent as separate ACL SETUSER arguments, but a selector `(...)` is one argument split on
 * spaces by Redis, so a prefix with white space would break the rules apart.
 */
const checkPrefix = (keys: Keys): void => {
  if (/\s/.test(keys.prefix) || keys.prefix === "")
    throw new Error(`a Redis key prefix for ACL users must be non-empty and without spaces: "${keys.prefix}"`)
}

export interface AclRuleOptions {
  /**
   * The database index peers select (the /db of their Redis URL). Not 0: they get SELECT too, which
   * opens nothing more (key patterns are the same in every database).
   */
  readonly db?: number
}

const selectRule = (options: AclRuleOptions): ReadonlyArray<string> =>
  options.db !== undefined && options.db !== 0 ? ["+select"] : []

/**
 * The ACL rules of a peer's Redis user (after `reset on #<hash>`, see RedisAcl): RPUSH on the intake
 * (write only: it cannot read what others sent), and in a selector of its own XREAD, XREVRANGE and
 * XTRIM on its inbox alone. PING. Nothing else: no other key, no channel, no XADD anywhere.
 */
export const peerAclRules = (
  keys: Keys,
  peerId: string,
  options: AclRuleOptions = {},
): ReadonlyArray<string> => {
  checkPrefix(keys)
  return [
    "resetchannels",
    "-@all",
    "+ping",
    ...selectRule(options),
    "+rpush",
    `%W~${exactly(keys.uplinkIntake)}`,
    `(+xread +xrevrange +xtrim ~${exactly(keys.peerInbox(peerId))})`,
  ]
}

/**
 * The ACL rules of an enrolling peer's Redis user: RPUSH on the intake, and XREAD (read only) on
 * reply streams. With no KEYS or SCAN it reads only a reply whose random nonce it chose.
 */
export const enrollAclRules = (keys: Keys, options: AclRuleOptions = {}): ReadonlyArray<string> => {
  checkPrefix(keys)
  return [
    "resetchannels",
    "-@all",
    "+ping",
    ...selectRule(options),
    "+rpush",
    `%W~${exactly(keys.uplinkIntake)}`,
    `(+xread %R~${exactly(keys.prefix)}:reply:*)`,
  ]
}

/**
 * What the operator gives the servers' own Redis user (with its password): every key and channel of
 * the prefix, every command but the dangerous ones, and of those INFO (the connection's ready
 * check), CLIENT UNBLOCK (waking a blocked read) and ACL (managing the peers' users). ACL makes the
 * login as strong as Redis's default user: it stays with the servers.
 */
export const serverAclRules = (keys: Keys): ReadonlyArray<string> => {
  checkPrefix(keys)
  return [
    "resetkeys",
    `~${exactly(keys.prefix)}:*`,
    "resetchannels",
    `&${exactly(keys.prefix)}:*`,
    "-@all",
    "+@all",
    "-@dangerous",
    "+info",
    "+client|unblock",
    "+acl",
  ]
}
