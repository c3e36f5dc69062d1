export * from "./redis.ts"
export * from "./storeContract.ts"
