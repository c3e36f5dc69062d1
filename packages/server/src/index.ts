// What other packages (the load generator, the benchmark) use of the server.
export { PgStore } from "./db/PgStore.ts"
export { InvalidJob, type Submission, submitJobs, validateSubmission } from "./submit.ts"
