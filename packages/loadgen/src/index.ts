export * from "./rate.ts"
export * from "./SimulatedFleet.ts"
export * from "./Stats.ts"
