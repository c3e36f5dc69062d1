import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Protocol } from "@picus/core"
import { Effect } from "effect"
import { CatalogError, defaultCatalogPath, loadCatalog } from "../src/catalog.ts"

const dir = mkdtempSync(join(tmpdir(), "picus-catalog-"))
let files = 0
const write = (content: unknown): string => {
  const path = join(dir, `catalog-${files++}.json`)
  writeFileSync(path, typeof content === "string" ? content : JSON.stringify(content))
  return path
}
const good = { id: "uptime", name: "Uptime", os: "linux", distro: "debian", command: "uptime" }

/** Loads a catalog that must be refused, and returns the error. */
const refused = (content: unknown) =>
  Effect.gen(function* () {
    const path = write(content)
    const failure = yield* Effect.flip(loadCatalog(path))
    assert.instanceOf(failure, CatalogError)
    assert.strictEqual(failure.path, path)
    assert.include(failure.message, path)
    return failure
  })

describe("loadCatalog", () => {
  it.effect("reads the default catalog, and a job at every limit", () =>
    Effect.gen(function* () {
      assert.isAbove((yield* loadCatalog(defaultCatalogPath)).length, 0)
      const edge = {
        id: "😀".repeat(Protocol.MAX_ID_LENGTH),
        name: "n".repeat(Protocol.MAX_LABEL_LENGTH),
        os: "linux",
        distro: "debian",
        command: "x".repeat(Protocol.MAX_COMMAND_BYTES),
        timeout_ms: Protocol.MAX_TIMEOUT_MS,
      }
      const jobs = yield* loadCatalog(write({ jobs: [good, edge] }))
      assert.deepStrictEqual(jobs[0], {
        job_id: "uptime",
        name: "Uptime",
        os: "linux",
        distro: "debian",
        command: "uptime",
        timeout_ms: 30_000,
      })
      assert.strictEqual(jobs[1]?.timeout_ms, Protocol.MAX_TIMEOUT_MS)
    }),
  )

  it.effect("a command over the wire's limit: names the file, the job, the field and the limit", () =>
    Effect.gen(function* () {
      const error = yield* refused({
        jobs: [good, { ...good, id: "big", command: "x".repeat(9 * 1024) }],
      })
      assert.strictEqual(error.index, 1)
      assert.strictEqual(error.jobId, "big")
      assert.strictEqual(error.field, "command")
      assert.include(error.message, `job 1 (id "big"): command: expected at most 8192 UTF-8 bytes, got 9216`)
    }),
  )

  it.effect("every field is held to its wire schema", () =>
    Effect.gen(function* () {
      const cases: ReadonlyArray<readonly [Record<string, unknown>, string, string]> = [
        [{ command: "" }, "command", "command: expected a non-empty string"],
        [{ command: "a\u0000b" }, "command", "command: expected no U+0000"],
        [{ name: "" }, "name", "name: expected a non-empty string"],
        [
          { name: "n".repeat(Protocol.MAX_LABEL_LENGTH + 1) },
          "name",
          "name: expected at most 256 code points",
        ],
        [{ os: "o".repeat(300) }, "os", "os: expected at most 256 code points, got 300"],
        [{ distro: "a\u0000" }, "distro", "distro: expected no U+0000"],
        [{ timeout_ms: 0 }, "timeout_ms", "timeout_ms: expected an integer from 1 to 2147483647, got 0"],
        [{ timeout_ms: 2 ** 31 }, "timeout_ms", "timeout_ms: expected an integer from 1 to 2147483647"],
        [{ timeout_ms: 1.5 }, "timeout_ms", "timeout_ms: expected an integer"],
        [{ id: "i".repeat(Protocol.MAX_ID_LENGTH + 1) }, "id", "id: expected at most 128 code points"],
      ]
      for (const [change, field, message] of cases) {
        const error = yield* refused({ jobs: [{ ...good, ...change }] })
        assert.strictEqual(error.field, field, error.message)
        assert.strictEqual(error.index, 0)
        assert.include(error.message, `: job 0`)
        assert.include(error.message, message)
      }
    }),
  )

  it.effect("a job without a readable id is named by its position", () =>
    Effect.gen(function* () {
      const error = yield* refused({ jobs: [good, { ...good, id: "other" }, { ...good, id: 7 }] })
      assert.strictEqual(error.index, 2)
      assert.isUndefined(error.jobId)
      assert.include(error.message, "job 2: id: expected a string")
    }),
  )

  it.effect("a repeated id, a missing jobs array, broken JSON, a missing file", () =>
    Effect.gen(function* () {
      const twice = yield* refused({ jobs: [good, { ...good, name: "Again" }] })
      assert.include(twice.message, `job 1 (id "uptime"): id: appears twice`)
      assert.include((yield* refused({ job: [] })).message, "jobs: missing")
      assert.include((yield* refused("{ not json")).message, "line 1 column 3: not valid JSON")
      assert.include((yield* refused("[1]")).message, `expected an object { "jobs": [...] }`)
      const absent = join(dir, "absent.json")
      assert.include((yield* Effect.flip(loadCatalog(absent))).message, `catalog ${absent}: ENOENT`)
    }),
  )

  it.effect("broken JSON and YAML name the line and column; a YAML catalog reads as its JSON twin", () =>
    Effect.gen(function* () {
      const json = yield* refused('{"jobs": [\n  {"id": "a",}\n]}\n')
      assert.include(json.message, "line 2 column 14: not valid JSON")
      const yamlPath = join(dir, "broken.yaml")
      writeFileSync(yamlPath, "jobs:\n  - id: a\n    name: [\n")
      const yaml = yield* Effect.flip(loadCatalog(yamlPath))
      assert.include(yaml.message, `catalog ${yamlPath} line 4 column 1: not valid YAML`)
      const goodPath = join(dir, "good.yml")
      writeFileSync(
        goodPath,
        "jobs:\n  - id: uptime\n    name: Uptime\n    os: linux\n    distro: debian\n    command: uptime\n",
      )
      assert.deepStrictEqual(yield* loadCatalog(goodPath), yield* loadCatalog(write({ jobs: [good] })))
    }),
  )
})
