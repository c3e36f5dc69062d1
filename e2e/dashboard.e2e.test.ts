import { execFileSync } from "node:child_process"
import { copyFileSync, existsSync, mkdirSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { chromium } from "playwright-core"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { freePort } from "./support/ports.ts"
import { eventually, killAll, repoRoot, runPicus, startPicus } from "./support/processes.ts"

// The dashboard in a real browser (Debian's chromium, headless) against a real server with real
// peers: the timeline shows their sessions, a server's shutdown with its reason, and the fleet.

const CHROMIUM = "/usr/bin/chromium"
const OUTPUT = join(repoRoot, "e2e", "output", "dashboard")

/** Installs Debian's chromium when the machine lacks it, as CI does. */
const ensureChromium = () => {
  if (existsSync(CHROMIUM)) return
  const apt = { stdio: "inherit" as const, env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } }
  execFileSync("apt-get", ["update"], apt)
  execFileSync("apt-get", ["install", "-y", "--no-install-recommends", "chromium"], apt)
}

const here = detectOs()
let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_HEARTBEAT_MS: "300", PICUS_GRACE_MS: "1500", PICUS_DRAIN_MS: "500" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

describe("the dashboard", () => {
  it("shows the peers' sessions on the timeline, a shutdown with its reason, and the fleet", async () => {
    ensureChromium()
    const port = await freePort()
    const catalog = writeCatalog(world.dir, [
      { id: "hello", name: "Hello", os: here.os, distro: here.distro, command: "echo hello" },
    ])
    const enrollment = await runPicus(["token", "create", "--name", "web", "--json"], world.env)
    expect(enrollment.code, enrollment.output).toBe(0)
    const { token: peerToken } = JSON.parse(enrollment.stdout) as { token: string }
    const reader = await runPicus(
      ["operator-token", "create", "--name", "browser", "--scope", "read", "--json"],
      world.env,
    )
    expect(reader.code, reader.output).toBe(0)
    const { token } = JSON.parse(reader.stdout) as { token: string }

    const serverEnv = { ...world.env, PICUS_CATALOG: catalog }
    const serverArgs = ["server", "--http", `127.0.0.1:${port}`, "--shutdown-reason", "maintenance window"]
    const first = startPicus("server-1", serverArgs, serverEnv)
    await first.waitForLine(/serving/)
    const peers = ["web-1", "web-2"].map((id, i) =>
      startPicus(
        id,
        ["peer", "--peer-id", id, "--label", `rack=r${i + 1}`, "--state-dir", join(world.dir, id)],
        { ...world.env, PICUS_TOKEN: peerToken },
      ),
    )
    for (const [i, peer] of peers.entries()) await peer.waitForLine(new RegExp(`registered as web-${i + 1}`))
    // The server stops (a shutdown with its reason); the peers log in again to the next one.
    first.signalGroup("SIGINT")
    expect(await first.exited).toBe(0)
    const second = startPicus("server-2", serverArgs, serverEnv)
    await second.waitForLine(/serving/)
    await eventually("both peers back", async () => {
      const response = await fetch(`http://127.0.0.1:${port}/api/peers`, {
        headers: { authorization: `Bearer ${token}` },
      })
      const { peers: listed } = (await response.json()) as { peers: Array<{ online: boolean }> }
      return listed.length === 2 && listed.every((p) => p.online) ? true : undefined
    })

    mkdirSync(OUTPUT, { recursive: true })
    const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), "picus-chromium-")), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
      ],
      viewport: { width: 1280, height: 900 },
    })
    try {
      const page = browser.pages()[0] ?? (await browser.newPage())
      const errors: Array<string> = []
      page.on("pageerror", (error) => errors.push(String(error)))
      await page.goto(`http://127.0.0.1:${port}/`)
      // No token yet: the page asks for one, and refuses a wrong one.
      await page.fill("#token", "picusop_wrong")
      await page.click("#login button[type=submit]")
      await page.waitForSelector("#login-error:text('unknown or revoked')")
      await page.fill("#token", token)
      await page.click("#login button[type=submit]")
      await page.waitForSelector("#board:not([hidden])")
      expect(await page.textContent("#who")).toContain("browser (read)")

      // Two sessions per peer: the first ended by the server's shutdown, the second still open.
      // A locator, not a string predicate: the page's CSP forbids the eval such a predicate needs.
      await page.locator(".vis-item.session").nth(3).waitFor()
      const bars = await page.$$eval(".vis-item.session", (nodes) => nodes.map((n) => n.className))
      expect(bars.filter((c) => c.includes("reason-server_shutdown"))).toHaveLength(2)
      expect(bars.filter((c) => c.includes("reason-open"))).toHaveLength(2)
      const labels = await page.$$eval(".vis-label", (nodes) => nodes.map((n) => n.textContent?.trim()))
      expect(labels).toEqual(expect.arrayContaining(["server shutdowns", "web-1", "web-2"]))
      const shutdown = await page.waitForSelector(".vis-item.shutdown")
      expect(await shutdown.textContent()).toContain("maintenance window")

      const fleet = await page.$$eval("#fleet tbody tr", (rows) =>
        rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent)),
      )
      expect(fleet).toHaveLength(2)
      expect(fleet[0]?.slice(0, 5)).toEqual(["web-1", "online", here.os, here.distro, "rack=r1"])
      await page.waitForSelector("#live:text('live')")
      // A run submitted elsewhere (an admin token) shows up live with its progress and output.
      const admin = await runPicus(
        ["operator-token", "create", "--name", "ops", "--scope", "admin", "--json"],
        world.env,
      )
      const submitted = await fetch(`http://127.0.0.1:${port}/api/runs`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${(JSON.parse(admin.stdout) as { token: string }).token}`,
          "content-type": "application/json",
        },
        body: JSON.stringify({
          command: "echo hello from $(hostname)",
          name: "greet",
          target: { all: true },
        }),
      })
      expect(submitted.status).toBe(201)
      const { run_id: runId } = (await submitted.json()) as { run_id: string }
      const runRow = `#runs tbody tr[data-run='${runId}']`
      await page.waitForSelector(`${runRow}:has-text('2/2 done, 2 ok')`)
      await page.click(runRow)
      await page.waitForSelector("#tickets tbody tr:has-text('web-2')")
      const outputs = await page.$$eval("#tickets tbody pre", (nodes) => nodes.map((n) => n.textContent))
      expect(outputs).toHaveLength(2)
      for (const output of outputs) expect(output).toMatch(/^hello from /)
      // A peer that stops shows up live: its session bar ends, coloured by its reason.
      peers[1]!.signalGroup("SIGINT")
      await peers[1]!.exited
      await page.waitForSelector(".vis-item.session.reason-peer_shutdown")
      await page.waitForSelector("#events li:text('web-2 logged out: peer_shutdown')")
      expect(errors).toEqual([])

      await page.screenshot({ path: join(OUTPUT, "dashboard.png"), fullPage: true })
      // The README's picture is refreshed on request only, so a test run never changes the repository.
      if (process.env.PICUS_UPDATE_SCREENSHOT === "1")
        copyFileSync(join(OUTPUT, "dashboard.png"), join(repoRoot, "docs", "dashboard.png"))
    } finally {
      await browser.close()
    }
    second.signalGroup("SIGINT")
    expect(await second.exited).toBe(0)
  })
})
