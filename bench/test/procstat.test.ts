import { spawn } from "node:child_process"
import { describe, expect, it } from "vitest"
import { readProcess, treeCpuMs } from "../src/procstat.ts"

describe("treeCpuMs", () => {
  it("counts the CPU of live descendants, which the reaped children's times (cutime) do not", async () => {
    // A shell whose child works (a counting loop), says so, and stays alive: unreaped.
    const child = spawn(
      "/bin/sh",
      [
        "-c",
        "sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i + 1)); done; echo worked; exec sleep 30' & wait",
      ],
      { stdio: ["ignore", "pipe", "ignore"], detached: true },
    )
    try {
      await new Promise<void>((resolve) => child.stdout.on("data", () => resolve()))
      const pid = child.pid!
      const reaped = readProcess(pid, { children: true }).cpuMs
      const tree = treeCpuMs(pid)
      // The loop's CPU (its own, some 100 ms or more here) is in the tree and not in the reaped times.
      expect(tree - reaped).toBeGreaterThan(50)
    } finally {
      process.kill(-child.pid!, "SIGKILL")
    }
  })
})
