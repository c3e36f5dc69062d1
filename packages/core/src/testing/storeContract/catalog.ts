import { assert, describe } from "@effect/vitest"
import { Effect } from "effect"
import { CatalogStore } from "../../store/Store.ts"
import { job, type StoreIt, unique } from "./support.ts"

/** The job catalog. */
export const catalogContract = (it: StoreIt) => {
  describe("catalog", () => {
    it.effect("gives a peer only the enabled jobs of its os and distro", () =>
      Effect.gen(function* () {
        const store = yield* CatalogStore
        const distro = unique("distro")
        const other = unique("other")
        yield* store.replaceCatalog([job("a", distro), job("b", other), job("c", distro)])
        const mine = yield* store.jobsFor("linux", distro)
        assert.deepStrictEqual(mine.map((j) => j.job_id).sort(), ["a", "c"])
        assert.deepStrictEqual(yield* store.jobsFor("windows", distro), [])
        yield* store.replaceCatalog([job("b", other, "uname -a")])
        assert.deepStrictEqual(yield* store.jobsFor("linux", distro), [])
        const b = yield* store.jobsFor("linux", other)
        assert.deepStrictEqual(
          b.map((j) => j.command),
          ["uname -a"],
        )
      }),
    )

    it.effect("gives jobs for any os or distro to every peer, even one that did not say its own", () =>
      Effect.gen(function* () {
        const store = yield* CatalogStore
        const distro = unique("distro")
        const anywhere = { ...job("anywhere", "any"), os: "any" }
        const anyLinux = job("any-linux", "any")
        const anyOs = { ...job("any-os", distro), os: "any" }
        yield* store.replaceCatalog([job("exact", distro), anywhere, anyLinux, anyOs, job("other", "x")])
        const ids = (os: string | null, d: string | null) =>
          store.jobsFor(os, d).pipe(Effect.map((jobs) => jobs.map((j) => j.job_id).sort()))
        assert.deepStrictEqual(yield* ids("linux", distro), ["any-linux", "any-os", "anywhere", "exact"])
        assert.deepStrictEqual(yield* ids("linux", "other"), ["any-linux", "anywhere"])
        assert.deepStrictEqual(yield* ids("windows", distro), ["any-os", "anywhere"])
        assert.deepStrictEqual(yield* ids("linux", null), ["any-linux", "anywhere"])
        assert.deepStrictEqual(yield* ids(null, null), ["anywhere"])
      }),
    )
  })
}
