export * from "./eventually.ts"
export * from "./privateRedis.ts"
export * from "./redis.ts"
export * from "./storeContract/index.ts"
