import { defineConfig } from "vitest/config"

// One project per package; tests that touch the shared PostgreSQL and Redis isolate themselves
// with their own database and key prefix, so files may run in parallel.
export default defineConfig({
  test: {
    projects: ["packages/*", "e2e", "bench"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
})
