/**
 * Files people write by hand (the config file, a job catalog), in YAML or JSON: parsed so that a
 * mistake names the file, the line and the column, and each top-level key keeps its line.
 */
import { Result } from "effect"
import { isMap, isScalar, LineCounter, parseDocument } from "yaml"

/** A file that could not be read or parsed: where, and what is wrong there. */
export class StructuredFileError extends Error {
  override readonly name = "StructuredFileError"
  readonly path: string
  readonly line: number | undefined
  readonly column: number | undefined
  readonly reason: string
  constructor(path: string, line: number | undefined, column: number | undefined, reason: string) {
    super(
      `${path}${line === undefined ? "" : ` line ${line}${column === undefined ? "" : ` column ${column}`}`}: ${reason}`,
    )
    this.path = path
    this.line = line
    this.column = column
    this.reason = reason
  }
}

export interface StructuredFile {
  readonly value: unknown
  /** The line (from 1) of each top-level key of a mapping. */
  readonly keyLines: ReadonlyMap<string, number>
}

/** Line and column (from 1) of an offset into `text`. */
const positionOf = (text: string, offset: number) => {
  const before = text.slice(0, offset).split("\n")
  return { line: before.length, column: (before.at(-1)?.length ?? 0) + 1 }
}

/** Where the YAML parser, held to JSON's schema, finds the first mistake of `text`. */
const jsonErrorPosition = (text: string) => {
  const lines = new LineCounter()
  const first = parseDocument(text, { schema: "json", lineCounter: lines, prettyErrors: false }).errors[0]
  if (first === undefined) return undefined
  const { line, col } = lines.linePos(first.pos[0])
  return { line, column: col }
}

const isJsonPath = (path: string) => path.toLowerCase().endsWith(".json")

/**
 * Parses `text` (the contents of `path`): JSON when the name ends in .json, else YAML (of which
 * JSON is a part). A syntax error names the line and column.
 */
export const parseStructured = (
  path: string,
  text: string,
): Result.Result<StructuredFile, StructuredFileError> => {
  if (isJsonPath(path)) {
    try {
      JSON.parse(text)
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      // V8 says "... in JSON at position N (line L column C)" for most mistakes; for the others the
      // YAML parser, held to JSON's schema, finds the place.
      const at = /at position (\d+)/.exec(message)
      const where = at
        ? positionOf(text, Number(at[1]))
        : /end of JSON input/.test(message)
          ? positionOf(text, text.length)
          : jsonErrorPosition(text)
      const reason = message
        .replace(/\s*(in JSON )?at position \d+.*$/, "")
        .replace(/^Unexpected end of JSON input$/, "the JSON ends too soon")
      return Result.fail(
        new StructuredFileError(path, where?.line, where?.column, `not valid JSON: ${reason}`),
      )
    }
  }
  const lines = new LineCounter()
  const document = parseDocument(text, { lineCounter: lines, uniqueKeys: true, prettyErrors: false })
  const first = document.errors[0]
  if (first !== undefined) {
    const where = lines.linePos(first.pos[0])
    const reason = first.message.split("\n")[0] ?? first.message
    return Result.fail(
      new StructuredFileError(
        path,
        where.line,
        where.col,
        `not valid ${isJsonPath(path) ? "JSON" : "YAML"}: ${reason}`,
      ),
    )
  }
  const keyLines = new Map<string, number>()
  if (isMap(document.contents))
    for (const pair of document.contents.items) {
      const key = pair.key
      if (isScalar(key) && key.range) keyLines.set(String(key.value), lines.linePos(key.range[0]).line)
    }
  return Result.succeed({ value: document.toJS(), keyLines })
}
