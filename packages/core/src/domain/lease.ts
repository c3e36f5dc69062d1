import { Schema } from "effect"

/**
 * The fencing rule. A session is held by one instance at a time, while that instance's own lease
 * (its row in PostgreSQL) holds; its `epoch` goes up by one whenever the session changes hands
 * (taken over from a lost instance) or is closed by another (replaced by a newer login of its
 * peer). Every write its holder makes for the session names the epoch it holds, and the database
 * refuses it once the epoch has moved on: an instance paused past its lease cannot write over its
 * successor. The epoch is compared in the statement that writes (it locks the session's row), never
 * read first and trusted later.
 */

/** The session and the epoch an owner holds it at: the fencing token of its writes. */
export interface SessionLease {
  readonly sessionId: string
  readonly epoch: number
}

/**
 * A write for a session was refused: the epoch it named is no longer the session's (another
 * instance took the session over, or a newer login of the peer closed it). The writer has lost the
 * session and must stop acting for it.
 */
export class LeaseLost extends Schema.TaggedError<LeaseLost>()("LeaseLost", {
  sessionId: Schema.String,
  epoch: Schema.Int,
}) {}

/** Whether a write naming `held` may land on a session whose lease row says `stored` (open). */
export const holds = (held: SessionLease, stored: SessionLease): boolean =>
  held.sessionId === stored.sessionId && held.epoch === stored.epoch
