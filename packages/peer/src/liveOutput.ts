import { Protocol } from "@picus/core"

/** A chunk of live output to send, without the message's envelope. */
export interface LiveChunk {
  readonly seq: number
  readonly stream: Protocol.OutputStream
  readonly data: string
  /** Bytes left out since the chunk before. */
  readonly dropped: number
}

/** Bytes of an incomplete UTF-8 sequence at the end of `buffer` (held back for the next chunk). */
const incompleteTail = (buffer: Buffer): number => {
  for (let back = 1; back <= Math.min(3, buffer.length); back++) {
    const byte = buffer[buffer.length - back]!
    if ((byte & 0xc0) === 0x80) continue // a continuation byte: look further back
    const length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1
    return length > back ? back : 0
  }
  return 0
}

/**
 * A running job's output on its way to people watching: what came since the last chunk, per
 * stream, held to one chunk's worth (the rest is dropped and counted), and never more in all than
 * the output cap. The caller takes a chunk now and then (a few a second): output that comes faster
 * is coalesced, so the rate of messages is the caller's, whatever the command prints.
 */
export const makeLiveOutput = (options: { readonly capBytes: number; readonly maxChunkBytes?: number }) => {
  const maxChunk = options.maxChunkBytes ?? Protocol.MAX_OUTPUT_CHUNK_BYTES
  const pending: Record<Protocol.OutputStream, Array<Buffer>> = { stdout: [], stderr: [] }
  const bytes: Record<Protocol.OutputStream, number> = { stdout: 0, stderr: 0 }
  /** Which stream's pending output came first: it goes first. */
  const order: Array<Protocol.OutputStream> = []
  let accepted = 0
  let dropped = 0
  let seq = 0
  return {
    push: (stream: Protocol.OutputStream, chunk: Buffer) => {
      const room = Math.min(maxChunk - bytes[stream], options.capBytes - accepted)
      const kept = Math.max(0, Math.min(room, chunk.length))
      dropped += chunk.length - kept
      if (kept === 0) return
      if (bytes[stream] === 0) order.push(stream)
      pending[stream].push(chunk.subarray(0, kept))
      bytes[stream] += kept
      accepted += kept
    },
    /** The next chunk to send, or undefined when nothing is waiting. */
    take: (): LiveChunk | undefined => {
      const stream = order.shift()
      if (stream === undefined) return undefined
      const all = Buffer.concat(pending[stream])
      const tail = incompleteTail(all)
      const head = all.subarray(0, all.length - tail)
      pending[stream] = tail > 0 ? [all.subarray(all.length - tail)] : []
      bytes[stream] = tail
      if (tail > 0) order.push(stream)
      // NUL cannot travel; an invalid byte reads as U+FFFD (3 bytes), which may outgrow the chunk.
      let data = head.toString("utf8").replaceAll("\u0000", "\uFFFD")
      if (Protocol.utf8ByteLength(data) > maxChunk) {
        const cut = data.slice(0, Math.floor(maxChunk / 3))
        dropped += Protocol.utf8ByteLength(data) - Protocol.utf8ByteLength(cut)
        data = cut
      }
      const chunk = { seq: seq++, stream, data, dropped }
      dropped = 0
      return chunk
    },
    /** Chunks taken so far. */
    taken: () => seq,
  }
}
