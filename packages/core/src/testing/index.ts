export * from "./redis.ts"
