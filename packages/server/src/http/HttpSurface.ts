/**
 * The instance's HTTP side (`--http host:port`): `GET /healthz` (the process is up), `GET /readyz`
 * (PostgreSQL and Redis answer, the uplink is read, not shutting down: 200 or 503 with why) and
 * `GET /metrics` (Prometheus text; gauges set when scraped). Built on Effect's HTTP server.
 */
import { createServer } from "node:http"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { MAX_DEAD_LETTERS, Metrics, Transport } from "@picus/core"
import { Clock, Effect, Layer, Metric } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import type { HttpAddress } from "./address.ts"
import { type GatewayStatus, readinessOf } from "./health.ts"

export interface HttpSurfaceOptions {
  readonly status: Effect.Effect<GatewayStatus>
  readonly leaseMs: number
  /** How long without a read of the uplink makes the instance not ready. */
  readonly readWithinMs: number
}

const routes = (options: HttpSurfaceOptions) =>
  HttpRouter.use((router) =>
    Effect.gen(function* () {
      const transport = yield* Transport
      yield* router.add("GET", "/healthz", Effect.succeed(HttpServerResponse.text("ok\n")))
      yield* router.add(
        "GET",
        "/readyz",
        Effect.gen(function* () {
          const readiness = readinessOf(yield* options.status, yield* Clock.currentTimeMillis, options)
          return HttpServerResponse.text(
            readiness.ready ? "ready\n" : `not ready: ${readiness.failing.join("; ")}\n`,
            {
              status: readiness.ready ? 200 : 503,
            },
          )
        }),
      )
      yield* router.add(
        "GET",
        "/metrics",
        Effect.gen(function* () {
          const status = yield* options.status
          yield* Metric.update(Metrics.sessionsOpen, status.sessions)
          yield* Metric.update(Metrics.uplinkPending, status.retrying)
          yield* Metric.update(Metrics.uplinkLagSeconds, status.lagMs / 1000)
          const letters = yield* transport.deadLetters(MAX_DEAD_LETTERS).pipe(Effect.option)
          if (letters._tag === "Some") yield* Metric.update(Metrics.deadLetters, letters.value.length)
          return HttpServerResponse.text(yield* PrometheusMetrics.format(), {
            contentType: "text/plain; version=0.0.4; charset=utf-8",
          })
        }),
      )
    }),
  )

/** Serves the routes at `address` while the layer lives. */
export const layerHttpSurface = (address: HttpAddress, options: HttpSurfaceOptions) =>
  HttpRouter.serve(routes(options), { disableLogger: true, disableListenLog: true }).pipe(
    Layer.provide(NodeHttpServer.layer(createServer, { host: address.host, port: address.port })),
  )
