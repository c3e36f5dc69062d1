export * from "./Agent.ts"
export * from "./executor.ts"
export * from "./osInfo.ts"
export * from "./state.ts"
