/** Where an instance serves HTTP: parsed from `--http`. */
export interface HttpAddress {
  readonly host: string
  readonly port: number
}

/** `host:port`, `:port` or a bare port; the host defaults to loopback. */
export const parseHttpAddress = (text: string): HttpAddress | undefined => {
  const match = /^(?:(\[[0-9a-fA-F:]+\]|[^:]+)?:)?(\d{1,5})$/.exec(text.trim())
  if (match === null) return undefined
  const port = Number(match[2])
  if (port > 65_535) return undefined
  return { host: (match[1] ?? "127.0.0.1").replace(/^\[|\]$/g, ""), port }
}
