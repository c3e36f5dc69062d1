/**
 * The dashboard's static files, served at `/` by the same server as the API (same origin, so the
 * page calls the API with the operator token it asks for). Read once when the HTTP side starts; the
 * timeline library comes from node_modules as its authors built it.
 */
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { Effect } from "effect"
import { type HttpRouter, HttpServerResponse } from "effect/http"

const web = fileURLToPath(new URL("../../web/", import.meta.url))
const visTimeline = dirname(createRequire(import.meta.url).resolve("vis-timeline/package.json"))

/** Path served, file on disk, content type. */
const files: ReadonlyArray<readonly [`/${string}`, string, string]> = [
  ["/", join(web, "index.html"), "text/html; charset=utf-8"],
  ["/app.js", join(web, "app.js"), "text/javascript; charset=utf-8"],
  ["/app.css", join(web, "app.css"), "text/css; charset=utf-8"],
  [
    "/vendor/vis-timeline.min.js",
    join(visTimeline, "standalone/umd/vis-timeline-graph2d.min.js"),
    "text/javascript; charset=utf-8",
  ],
  [
    "/vendor/vis-timeline.min.css",
    join(visTimeline, "styles/vis-timeline-graph2d.min.css"),
    "text/css; charset=utf-8",
  ],
]

// The page loads only its own scripts and styles and talks only to its own origin.
const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "cache-control": "no-cache",
}

/** Adds the dashboard's routes (no token needed: the page holds no data, it asks for a token). */
export const addDashboardRoutes = (router: HttpRouter.HttpRouter) =>
  Effect.forEach(
    files,
    ([path, file, contentType]) => {
      const body = readFileSync(file)
      return router.add(
        "GET",
        path,
        Effect.sync(() => HttpServerResponse.uint8Array(body, { contentType, headers: SECURITY_HEADERS })),
      )
    },
    { discard: true },
  )
