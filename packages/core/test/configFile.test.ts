import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { cac } from "cac"
import { applyConfigFile, ConfigFileError, explainSource } from "../src/index.ts"

const dir = mkdtempSync(join(tmpdir(), "picus-config-"))
let files = 0
const file = (text: string, ext = "yaml") => {
  const path = join(dir, `config-${files++}.${ext}`)
  writeFileSync(path, text)
  return path
}

/** A program like the project's: parses `args`, applies the file, returns the options the action gets. */
const optionsOf = (args: ReadonlyArray<string>, env: NodeJS.ProcessEnv = {}) => {
  const cli = cac("picus")
  cli.option("--config <file>", "the file")
  cli
    .command("run", "a command")
    .option("--redis-url <url>", "Redis URL (env REDIS_URL)")
    .option("--label <k=v>", "repeatable")
    .option("--limit <n>", "most rows", { default: 50 })
    .option("--json", "machine-readable")
  cli.command("other", "another command").option("--catalog <file>", "a catalog (env PICUS_CATALOG)")
  cli.parse(["node", "picus", ...args], { run: false })
  applyConfigFile(cli, args, ["log-format"], env)
  return cli.options
}

const refused = (text: string, ext?: string) => {
  const path = file(text, ext)
  try {
    optionsOf(["run", "--config", path])
  } catch (error) {
    assert.instanceOf(error, ConfigFileError)
    assert.include((error as Error).message, path)
    return (error as Error).message
  }
  return assert.fail("the file was accepted")
}

describe("the config file", () => {
  const config = file(
    "# picus\nredis-url: redis://from-file:6379\nlabel: [role=web, zone=a]\nlimit: 5\njson: true\ncatalog: x.json\nlog-format: json\n",
  )

  it("fills what was not typed: values, lists, numbers and booleans; other commands' keys are skipped", () => {
    const options = optionsOf(["run", "--config", config])
    assert.strictEqual(options.redisUrl, "redis://from-file:6379")
    assert.deepStrictEqual(options.label, ["role=web", "zone=a"])
    assert.strictEqual(options.limit, "5")
    assert.strictEqual(options.json, true)
    assert.isUndefined(options.catalog)
    assert.isUndefined(options.logFormat)
  })

  it("flags win over the environment, which wins over the file; PICUS_CONFIG names the file too", () => {
    assert.strictEqual(
      optionsOf(["run", "--redis-url", "redis://typed:1"], { PICUS_CONFIG: config }).redisUrl,
      "redis://typed:1",
    )
    assert.strictEqual(
      optionsOf(["run", "--redis-url=redis://typed:2", "--config", config]).redisUrl,
      "redis://typed:2",
    )
    // The environment's value is read by the command itself: the file's is not put in its way.
    assert.isUndefined(optionsOf(["run", "--config", config], { REDIS_URL: "redis://env:1" }).redisUrl)
    assert.strictEqual(optionsOf(["run"], {}).redisUrl, undefined)
  })

  it("a value the command refuses later points at the file's line", () => {
    optionsOf(["run", "--config", config])
    assert.strictEqual(
      explainSource('--limit must be a positive whole number, got "x"'),
      `--limit must be a positive whole number, got "x" (--limit is set in ${config} line 4, key limit)`,
    )
    assert.strictEqual(explainSource("--limits is not --limit-x"), "--limits is not --limit-x")
  })

  it("an unknown key, a bad value or broken syntax names the file, the line and the key", () => {
    assert.include(
      refused("limit: 5\nredis-ur: x\n"),
      'line 2: key "redis-ur" is not a flag of picus; did you mean "redis-url"?',
    )
    assert.include(refused("\n\njson: maybe\n"), 'line 3: key "json" must be true or false, got "maybe"')
    assert.include(
      refused("redis-url:\n  host: x\n"),
      'line 1: key "redis-url" must be text, a number or a list of them',
    )
    assert.include(refused("config: other.yaml\n"), 'key "config" cannot name another config file')
    assert.include(refused("limit: 5\nlabel: [a\n"), "line 3 column 1: not valid YAML")
    assert.include(refused('{"limit": 5,\n "json": tru}', "json"), "line 2 column 10: not valid JSON")
    assert.include(refused("- a\n- b\n"), "expected keys and values")
  })

  it("reads JSON the same as YAML", () => {
    const json = file('{"redis-url": "redis://json:1", "json": false}', "json")
    const options = optionsOf(["run", "--config", json])
    assert.deepStrictEqual([options.redisUrl, options.json], ["redis://json:1", false])
  })
})
