import { Context, Layer } from "effect"
import { CatalogStore, type CatalogStoreService } from "./CatalogStore.ts"
import { ReportStore, type ReportStoreService } from "./ReportStore.ts"
import { ResultStore, type ResultStoreService } from "./ResultStore.ts"
import { RetentionStore, type RetentionStoreService } from "./RetentionStore.ts"
import { RunStore, type RunStoreService } from "./RunStore.ts"
import { SessionStore, type SessionStoreService } from "./SessionStore.ts"
import { TicketStore, type TicketStoreService } from "./TicketStore.ts"
import { TokenStore, type TokenStoreService } from "./TokenStore.ts"

export { holds, LeaseLost, type SessionLease } from "../domain/lease.ts"
export {
  canMove,
  isTerminal,
  OPEN_TICKET_STATES,
  ResultStatus,
  TERMINAL_TICKET_STATES,
  TicketState,
  ticketStateOf,
} from "../domain/ticket.ts"
export * from "./CatalogStore.ts"
export * from "./ReportStore.ts"
export * from "./ResultStore.ts"
export * from "./RetentionStore.ts"
export * from "./RunStore.ts"
export * from "./SessionStore.ts"
export * from "./StoreError.ts"
export * from "./TicketStore.ts"
export * from "./TokenStore.ts"

/** Every domain of the store in one service. */
export interface StoreService
  extends TokenStoreService,
    CatalogStoreService,
    SessionStoreService,
    TicketStoreService,
    ResultStoreService,
    ReportStoreService,
    RetentionStoreService,
    RunStoreService {}

/**
 * The system of record. Every decision the server makes is written here before it is acted on
 * or acknowledged; Redis only carries messages. Times are epoch milliseconds from the database.
 * It is the narrow stores together: code that needs one domain asks for that store instead.
 */
export class Store extends Context.Service<Store, StoreService>()("@picus/core/Store") {}

/** Every store service a store layer provides: the whole Store and each narrow one. */
export type Stores =
  | Store
  | TokenStore
  | CatalogStore
  | SessionStore
  | TicketStore
  | ResultStore
  | ReportStore
  | RetentionStore
  | RunStore

/** One implementation per domain, as a store layer is built from. */
export interface StoreParts {
  readonly tokens: TokenStoreService
  readonly catalog: CatalogStoreService
  readonly sessions: SessionStoreService
  readonly tickets: TicketStoreService
  readonly results: ResultStoreService
  readonly reports: ReportStoreService
  readonly retention: RetentionStoreService
  readonly runs: RunStoreService
}

/** The Store made of its domain parts. */
export const composeStore = (parts: StoreParts): StoreService =>
  Store.of({
    ...parts.tokens,
    ...parts.catalog,
    ...parts.sessions,
    ...parts.tickets,
    ...parts.results,
    ...parts.reports,
    ...parts.retention,
    ...parts.runs,
  })

/** The Store and each narrow store, all over the same parts. */
export const storesContext = (parts: StoreParts): Context.Context<Stores> =>
  Context.make(Store, composeStore(parts)).pipe(
    Context.add(TokenStore, parts.tokens),
    Context.add(CatalogStore, parts.catalog),
    Context.add(SessionStore, parts.sessions),
    Context.add(TicketStore, parts.tickets),
    Context.add(ResultStore, parts.results),
    Context.add(ReportStore, parts.reports),
    Context.add(RetentionStore, parts.retention),
    Context.add(RunStore, parts.runs),
  )

/** A layer providing the Store and each narrow store over the same parts. */
export const layerStores = (parts: StoreParts): Layer.Layer<Stores> =>
  Layer.succeedContext(storesContext(parts))
