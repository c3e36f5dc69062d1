export { type GatewayConfig, gatewayConfigFrom } from "./config.ts"
export { type Gateway, makeGateway } from "./Gateway.ts"
