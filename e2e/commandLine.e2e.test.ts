import { spawnSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createPool, sql } from "slonik"
import { afterAll, describe, expect, it } from "vitest"
import { operatorProgram } from "../packages/cli/src/program.ts"
import { peerProgram } from "../packages/peer/src/program.ts"
import { serverProgram } from "../packages/server/src/program.ts"
import { adminUrl, withDatabase } from "../packages/server/test/support/database.ts"
import { freePort } from "./support/ports.ts"
import { killAll, runPicus } from "./support/processes.ts"

// Every command of the three programs, read from their cac objects so that a command added later is
// covered without editing this test: --help and --version answer, a typo or an unknown flag exits 2
// and starts nothing.

afterAll(killAll)

/** `./picus` argv prefixes of every command: the operator's, and the server's and peer's own. */
const everyCommand = (): ReadonlyArray<ReadonlyArray<string>> => {
  const named = (cli: { commands: ReadonlyArray<{ name: string }> }) =>
    cli.commands.map((c) => c.name).filter((n) => n !== "")
  const operator = named(operatorProgram("picus")).filter((n) => n !== "server" && n !== "peer")
  return [
    [],
    ...operator.map((n) => [n]),
    ["server"],
    ...named(serverProgram("picus server")).map((n) => ["server", n]),
    ["peer"],
    ...named(peerProgram("picus peer")).map((n) => ["peer", n]),
  ]
}

/** A database name that must never appear: any command that starts anything would create it. */
const untouched = `picus_never_${randomBytes(6).toString("hex")}`
const env = {
  DATABASE_URL: withDatabase(adminUrl(), untouched),
  // Nothing listens there: a command that reached for Redis would fail, not pass unnoticed.
  REDIS_URL: "redis://127.0.0.1:1",
  PICUS_REDIS_PREFIX: `never-${untouched}`,
}

/** Runs every argv list, a few processes at a time (the machine is shared). */
const runAll = async (argvs: ReadonlyArray<ReadonlyArray<string>>, width = 4) => {
  const results: Array<Awaited<ReturnType<typeof runPicus>>> = []
  let next = 0
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < argvs.length) {
        const index = next++
        results[index] = await runPicus(argvs[index]!, env)
      }
    }),
  )
  return results
}

const databaseExists = async (name: string) => {
  const pool = await createPool(adminUrl(), { maxPoolSize: 1 })
  try {
    return await pool.exists(sql.unsafe`select 1 from pg_database where datname = ${name}`)
  } finally {
    await pool.end()
  }
}

describe("every command of ./picus", () => {
  const commands = everyCommand()

  it("enumerates the programs' commands (the operator's, the server, the peer)", () => {
    const flat = commands.map((c) => c.join(" "))
    for (const expected of ["", "token", "migrate", "server", "peer", "completion"])
      expect(flat).toContain(expected)
  })

  it("answers --help (usage, exit 0) and --version (exit 0) on every command", async () => {
    const help = await runAll(commands.map((c) => [...c, "--help"]))
    const version = await runAll(commands.map((c) => [...c, "--version"]))
    commands.forEach((command, i) => {
      const name = ["picus", ...command].join(" ")
      expect(help[i]?.code, `${name} --help:\n${help[i]?.output}`).toBe(0)
      expect(help[i]?.stdout, `${name} --help`).toMatch(/Usage:/)
      // The usage line names the command itself.
      expect(help[i]?.stdout, `${name} --help`).toContain(`$ ${name}`)
      expect(version[i]?.code, `${name} --version:\n${version[i]?.output}`).toBe(0)
      expect(version[i]?.stdout).toMatch(/^picus( server| peer)? \d+\.\d+\.\d+$/)
    })
  })

  it("refuses an unknown command (with a suggestion) and an unknown flag: exit 2, nothing started", async () => {
    const typos = [
      { argv: ["tokn", "list"], hint: 'did you mean "picus token"?' },
      { argv: ["server", "sesions"], hint: 'did you mean "picus sessions"?' },
      { argv: ["peer", "bogus"], hint: "unknown command" },
      { argv: ["nothing-like-it"], hint: 'unknown command "nothing-like-it"' },
    ]
    const flagged = commands.map((c) => [...c, "--bogus-flag"])
    const results = await runAll([...typos.map((t) => t.argv), ...flagged])
    typos.forEach((typo, i) => {
      expect(results[i]?.code, results[i]?.output).toBe(2)
      expect(results[i]?.output).toContain(typo.hint)
    })
    flagged.forEach((argv, i) => {
      const result = results[typos.length + i]
      expect(result?.code, `picus ${argv.join(" ")}:\n${result?.output}`).toBe(2)
      expect(result?.output).toContain('unknown option "--bogus-flag"')
    })
    expect(await databaseExists(untouched)).toBe(false)
  })

  it("--config (or PICUS_CONFIG): flags win over the environment, which wins over the file", async () => {
    const [inFile, inEnv, typed] = await Promise.all([freePort(), freePort(), freePort()])
    const dir = mkdtempSync(join(tmpdir(), "picus-config-"))
    const config = join(dir, "picus.yaml")
    // Keys of the server and the peer are allowed in the operator's file, and skipped.
    writeFileSync(
      config,
      `database-url: postgres://postgres@127.0.0.1:${inFile}/picus\nlog-format: json\nconcurrency: 2\n`,
    )
    const { DATABASE_URL: _unset, ...noDatabase } = env
    const reached = (port: number) => `cannot reach PostgreSQL at 127.0.0.1:${port}, database picus`
    const [fromFile, fromEnv, fromFlag, bad] = await Promise.all([
      runPicus(["token", "list", "--config", config], noDatabase),
      runPicus(["token", "list"], {
        ...noDatabase,
        PICUS_CONFIG: config,
        DATABASE_URL: `postgres://postgres@127.0.0.1:${inEnv}/picus`,
      }),
      runPicus(
        ["migrate", "--database-url", `postgres://postgres@127.0.0.1:${typed}/picus`, "--config", config],
        {
          ...noDatabase,
          DATABASE_URL: `postgres://postgres@127.0.0.1:${inEnv}/picus`,
        },
      ),
      (async () => {
        const broken = join(dir, "broken.yaml")
        writeFileSync(broken, "# fleet\nredis-url: redis://x\nredis-prefx: p\n")
        return runPicus(["server", "--config", broken], env)
      })(),
    ])
    expect(fromFile.code, fromFile.output).toBe(1)
    expect(fromFile.output).toContain(reached(inFile))
    expect(fromEnv.output).toContain(reached(inEnv))
    expect(fromFlag.output).toContain(reached(typed))
    expect(bad.code, bad.output).toBe(2)
    expect(bad.output).toContain(
      `config file ${join(dir, "broken.yaml")} line 3: key "redis-prefx" is not a flag of picus; did you mean "redis-prefix"?`,
    )
  })

  it("picus completion bash, sourced in bash, completes every command and each command's flags", async () => {
    const [bash, zsh, wrong] = await runAll([
      ["completion", "bash"],
      ["completion", "zsh"],
      ["completion", "fish"],
    ])
    expect(bash?.code, bash?.output).toBe(0)
    expect(zsh?.code, zsh?.output).toBe(0)
    expect(zsh?.stdout).toContain("compdef _picus picus")
    expect(wrong?.code).toBe(2)
    const dir = mkdtempSync(join(tmpdir(), "picus-completion-"))
    const script = join(dir, "picus.bash")
    writeFileSync(script, bash?.stdout ?? "")
    // Each case: the words typed so far, the last one being completed.
    const cases: Array<ReadonlyArray<string>> = [
      ["picus", "tok"],
      ["picus", "token", "--na"],
    ]
    const operator = operatorProgram("picus")
    const programs = [
      { words: [] as ReadonlyArray<string>, cli: operator },
      { words: ["server"], cli: serverProgram("picus server") },
      { words: ["peer"], cli: peerProgram("picus peer") },
    ]
    const expected: Array<ReadonlyArray<string>> = [["token"], ["--name"]]
    for (const { words, cli } of programs)
      for (const command of cli.commands) {
        const path = [...words, ...(command.name === "" ? [] : [command.name])]
        // A command completes from its first two letters; its flags from "--".
        if (command.name !== "") {
          cases.push(["picus", ...words, command.name.slice(0, 2)])
          expected.push([command.name])
        }
        if (words.length === 0 && (command.name === "server" || command.name === "peer")) continue
        cases.push(["picus", ...path, "--"])
        expected.push(command.options.map((o) => /--([a-z0-9-]+)/.exec(o.rawName)?.[1]).map((n) => `--${n}`))
      }
    const body = cases
      .map(
        (words) =>
          `COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}; _picus; echo "\${COMPREPLY[*]}"`,
      )
      .join("\n")
    const completed = spawnSync("bash", ["--norc", "-c", `source ${script}\n${body}`], { encoding: "utf8" })
    expect(completed.status, completed.stderr).toBe(0)
    const lines = completed.stdout.split("\n")
    cases.forEach((words, i) => {
      const offered = (lines[i] ?? "").split(" ")
      for (const word of expected[i] ?? []) expect(offered, `${words.join(" ")}<TAB>`).toContain(word)
    })
    expect(lines[0]).toBe("token")
  })
})
