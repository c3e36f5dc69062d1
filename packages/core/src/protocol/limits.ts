/**
 * Size limits of the wire protocol. Every schema in `messages.ts` and the codec use these constants, so
 * this file is the single place to change a limit.
 *
 * Two units are used:
 * - "code points" (Unicode scalar values) for short identifiers and labels, so a peer written in any
 *   language counts them the same way;
 * - UTF-8 bytes for the large text fields and for the whole message, because those limits exist to
 *   bound memory and Redis payloads.
 */

/** Whole message, measured in UTF-8 bytes of the raw JSON text, checked before parsing. */
export const MAX_MESSAGE_BYTES = 1024 * 1024

/** `peer_id`, `ticket`, `session_id`, `server_id`: non-empty, at most this many code points. */
export const MAX_ID_LENGTH = 128

/** `token`: non-empty, at most this many code points. */
export const MAX_TOKEN_LENGTH = 512

/** `server_ip`, `os`, `distro`, `hostname`, `agent_version` and the job's `name`: at most this many code points. */
export const MAX_LABEL_LENGTH = 256

/** A peer's `labels` (register): at most this many. */
export const MAX_LABELS = 32

/** A label's key: 1 to 63 of lower-case letters, digits, `_`, `.`, `-` and `/`. */
export const LABEL_KEY_PATTERN = /^[a-z0-9_./-]{1,63}$/

/** `reason` (logout, rejection, shutdown): at most this many code points. */
export const MAX_REASON_LENGTH = 1024

/** The job's `command`: non-empty, at most this many UTF-8 bytes (8 KiB). */
export const MAX_COMMAND_BYTES = 8 * 1024

/** The result's `result` text: at most this many UTF-8 bytes (256 KiB). */
export const MAX_RESULT_BYTES = 256 * 1024

// Limits that make anything that decodes storable: PostgreSQL `integer` columns are 32-bit, `text`
// cannot hold U+0000, and an epoch-millisecond field must be a valid JS `Date` and `timestamptz`.

/** `exit_code` is stored in an `integer` column: a 32-bit signed integer. */
export const MIN_EXIT_CODE = -2_147_483_648
export const MAX_EXIT_CODE = 2_147_483_647

/** A job's `timeout_ms` is stored in an `integer` column: positive, at most this. */
export const MAX_TIMEOUT_MS = 2_147_483_647

/**
 * `started_at`, `finished_at`: at most this (the last valid JS `Date`, +275760-09-13), which
 * PostgreSQL's `timestamptz` (up to year 294276) also holds.
 */
export const MAX_EPOCH_MILLIS = 8_640_000_000_000_000

/** An `output` chunk's `data`: at most 4 KiB of UTF-8 (a peer sends at most a few a second per job). */
export const MAX_OUTPUT_CHUNK_BYTES = 4 * 1024

/** An `output` chunk's `seq` and `dropped`: plain counters, kept within a 32-bit column's range. */
export const MAX_OUTPUT_SEQ = 2_147_483_647

/** No wire string may contain this character: PostgreSQL `text` cannot store it. */
export const NUL = "\u0000"

/**
 * Number of UTF-8 bytes `text` occupies once encoded (as `TextEncoder` would encode it: a lone surrogate
 * becomes U+FFFD, 3 bytes). Counts without allocating.
 */
export const utf8ByteLength = (text: string): number => {
  let bytes = 0
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i)
    if (unit < 0x80) {
      bytes += 1
    } else if (unit < 0x800) {
      bytes += 2
    } else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1)
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4
        i++
      } else {
        bytes += 3
      }
    } else {
      bytes += 3
    }
  }
  return bytes
}
