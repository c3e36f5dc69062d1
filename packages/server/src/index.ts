// What other packages (the load generator, the benchmark) use of the server.
export { PgStore } from "./db/PgStore.ts"
export { type Submission, submitJobs } from "./submit.ts"
