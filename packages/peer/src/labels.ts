import { Protocol } from "@picus/core"
import { Result, Schema } from "effect"

const decodeLabels = Schema.decodeUnknownResult(Protocol.Labels)

/**
 * The peer's labels: `--label k=v` (repeatable) or, without any, PICUS_LABELS="k=v,k2=v2". A bad one
 * is an error naming it; the same key twice is one too (which should win is not for us to guess).
 */
export const parseLabels = (
  flags: string | ReadonlyArray<string> | undefined,
  env: string | undefined,
): Result.Result<Readonly<Record<string, string>>, string> => {
  const source = flags === undefined ? "PICUS_LABELS" : "--label"
  const items =
    flags === undefined
      ? (env ?? "")
          .split(",")
          .map((item) => item.trim())
          .filter((item) => item !== "")
      : typeof flags === "string"
        ? [flags]
        : flags
  const labels: Record<string, string> = {}
  for (const item of items) {
    const at = String(item).indexOf("=")
    if (at <= 0) return Result.fail(`${source}: expected key=value, got ${JSON.stringify(String(item))}`)
    const key = String(item).slice(0, at)
    if (Object.hasOwn(labels, key)) return Result.fail(`${source}: the label ${key} is given twice`)
    labels[key] = String(item).slice(at + 1)
  }
  const decoded = decodeLabels(labels)
  if (Result.isFailure(decoded)) {
    const issues = Protocol.describeSchemaIssues(decoded.failure, "labels")
    return Result.fail(`${source}: ${issues.map((issue) => `${issue.field}: ${issue.message}`).join("; ")}`)
  }
  return Result.succeed(decoded.success)
}
