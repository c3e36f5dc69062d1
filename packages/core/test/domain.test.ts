import { assert, describe, it } from "@effect/vitest"
import {
  canMove,
  holds,
  isTerminal,
  OPEN_TICKET_STATES,
  TERMINAL_TICKET_STATES,
  TicketState,
} from "../src/index.ts"

describe("ticket states", () => {
  const all = TicketState.literals
  it("terminal states never move again", () => {
    for (const from of TERMINAL_TICKET_STATES)
      for (const to of all) assert.isFalse(canMove(from, to), `${from} -> ${to}`)
  })
  it("every open state can reach a terminal state, and open and terminal states cover all states", () => {
    for (const from of OPEN_TICKET_STATES)
      assert.isTrue(TERMINAL_TICKET_STATES.some((to) => canMove(from, to)))
    assert.sameMembers([...OPEN_TICKET_STATES, ...TERMINAL_TICKET_STATES], [...all])
    for (const s of all) assert.strictEqual(isTerminal(s), TERMINAL_TICKET_STATES.includes(s))
  })
  it("a ticket is never delivered again once it has ended, nor queued again (only a pending one is)", () => {
    for (const from of all) assert.strictEqual(canMove(from, "queued"), from === "pending", from)
    for (const from of all) assert.isFalse(canMove(from, "pending"), from)
    assert.isTrue(canMove("delivered", "delivered"), "sent again")
  })
})

describe("the fencing rule", () => {
  it("a write lands only at the session's current epoch", () => {
    assert.isTrue(holds({ sessionId: "s", epoch: 2 }, { sessionId: "s", epoch: 2 }))
    assert.isFalse(holds({ sessionId: "s", epoch: 1 }, { sessionId: "s", epoch: 2 }))
    assert.isFalse(holds({ sessionId: "s", epoch: 2 }, { sessionId: "t", epoch: 2 }))
  })
})
