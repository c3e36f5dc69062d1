import { defineProject } from "vitest/config"

// Real processes started with the commands a user types; each test has its own database and
// Redis key prefix.
export default defineProject({
  test: { name: "e2e", include: ["**/*.e2e.test.ts"], testTimeout: 90_000, hookTimeout: 60_000 },
})
