export { type GatewayConfig, gatewayConfigFrom } from "./config.ts"
export { type Gateway, GatewayFailed, makeGateway, untilSignal } from "./Gateway.ts"
