import { setTimeout as sleepMs } from "node:timers/promises"

/** Wall-clock time in ms (fractional), comparable across processes on one machine. */
export const wallNow = (): number => performance.timeOrigin + performance.now()

export const sleep = (ms: number): Promise<void> => sleepMs(ms)
