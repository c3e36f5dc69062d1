import { type Transport, Trust } from "@picus/core"

/**
 * The Transport the gateway's parts see: the same as the one it was given, except that every payload
 * written for a peer (its inbox, a registration's reply stream) is signed by the cluster key on the
 * way out.
 *
 * Why a wrapped Transport rather than a mail service the senders call: the gateway builds every part
 * (registration, sessions, shutdown) over this one, so inside it no unsigned Transport is in reach.
 * A send written tomorrow is signed without anyone remembering to; with a separate service, the raw
 * `sendToPeer` would still be one `yield* Transport` away from every part.
 */
export const signingTransport = (
  transport: Transport["Service"],
  key: Trust.SigningKey,
): Transport["Service"] => ({
  ...transport,
  sendToPeer: (peerId, payload, options) =>
    transport.sendToPeer(peerId, Trust.signPayload(payload, key), options),
  sendManyToPeer: (peerId, payloads) =>
    transport.sendManyToPeer(
      peerId,
      payloads.map((payload) => Trust.signPayload(payload, key)),
    ),
  sendReply: (nonce, payload) => transport.sendReply(nonce, Trust.signPayload(payload, key)),
})
