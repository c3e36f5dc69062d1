import { type SendToPeerOptions, type Transport, Trust } from "@picus/core"

/**
 * The Transport the gateway's parts see: the same as the one it was given, except that every payload
 * written for a peer (its inbox, a registration's reply stream) is signed by the cluster key on the
 * way out, or, for a sealed session's messages (`macKey`), MACed under the key derived from the
 * session's token.
 *
 * Why a wrapped Transport rather than a mail service the senders call: the gateway builds every part
 * (registration, sessions, shutdown) over this one, so inside it no unsigned Transport is in reach.
 * A send written tomorrow is signed without anyone remembering to; with a separate service, the raw
 * `sendToPeer` would still be one `yield* Transport` away from every part.
 */
export const signingTransport = (
  transport: Transport["Service"],
  key: Trust.SigningKey,
): Transport["Service"] => {
  // A sealed session's messages: an HMAC under its key does the signature's job, for far less.
  const authenticate = (payload: string, options?: SendToPeerOptions) =>
    options?.macKey === undefined
      ? Trust.signPayload(payload, key)
      : Trust.macPayload(payload, options.macKey)
  return {
    ...transport,
    sendToPeer: (peerId, payload, options) =>
      transport.sendToPeer(peerId, authenticate(payload, options), options),
    sendManyToPeer: (peerId, payloads, options) =>
      transport.sendManyToPeer(
        peerId,
        payloads.map((payload) => authenticate(payload, options)),
        options,
      ),
    sendReply: (nonce, payload) => transport.sendReply(nonce, Trust.signPayload(payload, key)),
  }
}
