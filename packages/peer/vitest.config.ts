import { defineProject } from "vitest/config"

export default defineProject({
  test: { name: "peer", include: ["test/**/*.test.ts"] },
})
