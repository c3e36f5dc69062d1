// The dashboard: reads the JSON API with the operator token kept in this tab (sessionStorage),
// and follows the event stream to refresh what changed. No framework; the timeline is vis-timeline.

const TOKEN_KEY = "picus.operatorToken"
const REASONS = ["open", "peer_shutdown", "server_shutdown", "timeout", "replaced", "revoked", "server_lost"]
const $ = (selector) => document.querySelector(selector)

let token = sessionStorage.getItem(TOKEN_KEY)
let timeline
const groups = new vis.DataSet()
const items = new vis.DataSet()
let openSessions = []
let shownRun
let scope = "read"

const api = async (path, init = {}) => {
  const response = await fetch(path, { ...init, headers: { authorization: `Bearer ${token}` } })
  if (response.status === 401) {
    signOut("That token is unknown or revoked.")
    throw new Error("unauthorized")
  }
  if (!response.ok) throw new Error(`${path}: ${response.status}`)
  return response.json()
}

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(props)) {
    if (key === "className") node.className = value
    else if (key === "title") node.title = value
    else node.setAttribute(key, value)
  }
  for (const child of children)
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")))
  return node
}
const time = (ms) => (ms === null || ms === undefined ? "" : new Date(ms).toLocaleString())
const ago = (ms) => {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000))
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`
}
const duration = (ms) => {
  const s = Math.round(ms / 1000)
  return s < 60
    ? `${s}s`
    : s < 3600
      ? `${Math.floor(s / 60)}m ${s % 60}s`
      : `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`
}
const reasonClass = (reason) => (reason === null ? "open" : REASONS.includes(reason) ? reason : "other")

const signOut = (why = "") => {
  sessionStorage.removeItem(TOKEN_KEY)
  token = null
  $("#board").hidden = true
  $("#sign-out").hidden = true
  $("#who").textContent = ""
  $("#login").hidden = false
  $("#login-error").textContent = why
}

const renderFleet = (peers) => {
  $("#fleet-count").textContent = `${peers.filter((p) => p.online).length} of ${peers.length} online`
  $("#fleet tbody").replaceChildren(
    ...peers.map((p) =>
      el(
        "tr",
        {},
        el("td", {}, p.peer_id),
        el("td", {}, p.online ? "online" : "offline"),
        el("td", {}, p.os ?? ""),
        el("td", {}, p.distro ?? ""),
        el(
          "td",
          {},
          Object.entries(p.labels)
            .map(([k, v]) => `${k}=${v}`)
            .join(", "),
        ),
        el("td", {}, p.held_by ?? ""),
        el("td", { title: time(p.last_seen_at) }, ago(p.last_seen_at)),
      ),
    ),
  )
}

const renderTimeline = (peers, sessions, log) => {
  const ids = new Set([...peers.map((p) => p.peer_id), ...sessions.map((s) => s.peer_id)])
  const wanted = [
    { id: "__shutdowns", content: "server shutdowns", order: "" },
    ...[...ids].sort().map((id) => ({ id, content: id, order: id })),
  ]
  groups.update(wanted)
  groups.remove(groups.getIds().filter((id) => !wanted.some((g) => g.id === id)))
  const now = Date.now()
  openSessions = sessions.filter((s) => s.logout_at === null).map((s) => s.session_id)
  const next = [
    ...sessions.map((s) => ({
      id: `s:${s.session_id}`,
      group: s.peer_id,
      type: "range",
      start: s.login_at,
      end: s.logout_at ?? now,
      className: `session reason-${reasonClass(s.logout_reason)}`,
      content: s.logout_reason ?? "online",
      title: `${s.peer_id}\nlogin ${time(s.login_at)}\n${s.logout_at === null ? "still logged in" : `logout ${time(s.logout_at)} (${s.logout_reason})`}\n${duration(s.duration_ms)} on ${s.server_id}`,
    })),
    ...log
      .filter((r) => r.event === "shutdown")
      .map((r) => ({
        id: `l:${r.id}`,
        group: "__shutdowns",
        type: "point",
        start: r.at,
        className: "shutdown",
        content: `${r.server_id}: ${r.reason ?? "shutdown"}`,
        title: `shutdown of ${r.server_id} at ${time(r.at)}: ${r.reason ?? ""}`,
      })),
  ]
  items.update(next)
  items.remove(items.getIds().filter((id) => !next.some((i) => i.id === id)))
  if (timeline === undefined) {
    // At first, what there is to see: from the oldest login to now, at least a few minutes.
    const first = Math.min(now - 5 * 60_000, ...sessions.map((s) => s.login_at))
    const span = now - first
    timeline = new vis.Timeline($("#timeline"), items, groups, {
      stack: false,
      start: first - span * 0.05,
      end: now + span * 0.1,
      zoomMin: 10_000,
      zoomMax: 31 * 24 * 3_600_000,
      orientation: "top",
      margin: { item: 2 },
      tooltip: { followMouse: true },
      groupOrder: "order",
    })
  }
}

const renderRuns = (runs) => {
  $("#runs tbody").replaceChildren(
    ...runs.map((r) => {
      const counts = r.counts
      const total = Object.values(counts).reduce((a, b) => a + b, 0)
      const open = (counts.pending ?? 0) + (counts.queued ?? 0) + (counts.delivered ?? 0)
      const bad =
        (counts.failed ?? 0) + (counts.timed_out ?? 0) + (counts.undeliverable ?? 0) + (counts.cancelled ?? 0)
      const done = total - open
      const row = el(
        "tr",
        { "data-run": r.run_id },
        el("td", {}, r.run_id),
        el("td", { title: r.command }, r.name),
        el(
          "td",
          {},
          el(
            "span",
            { className: "bar" },
            el("span", {
              className: bad > 0 ? "bad" : "",
              style: `width:${total === 0 ? 0 : (100 * done) / total}%`,
            }),
          ),
          ` ${done}/${total} done, ${counts.succeeded ?? 0} ok${bad > 0 ? `, ${bad} not` : ""}`,
        ),
        el("td", {}, time(r.created_at)),
        el("td", {}, r.created_by),
      )
      row.addEventListener("click", () => showRun(r.run_id))
      return row
    }),
  )
}

const showRun = async (runId) => {
  shownRun = runId
  const { run, tickets } = await api(`/api/runs/${encodeURIComponent(runId)}`)
  $("#run-detail").hidden = false
  $("#run-title").textContent = `${run.run_id}: ${run.command}`
  $("#cancel-run").hidden = scope !== "admin" || run.closed_at !== null
  $("#tickets tbody").replaceChildren(
    ...tickets.map((t) =>
      el(
        "tr",
        { "data-ticket": t.ticket },
        el("td", {}, t.ticket),
        el("td", {}, t.peer_id),
        el("td", {}, t.state),
        el("td", {}, t.exit_code ?? ""),
        el("td", {}, el("pre", {}, t.output ?? t.close_reason ?? "")),
      ),
    ),
  )
}

const refresh = async () => {
  const [{ peers }, { sessions }, { log }, { runs }] = await Promise.all([
    api("/api/peers"),
    api("/api/sessions?limit=5000"),
    api("/api/log?limit=5000"),
    api("/api/runs?limit=20"),
  ])
  renderFleet(peers)
  renderTimeline(peers, sessions, log)
  renderRuns(runs)
  if (shownRun !== undefined) await showRun(shownRun)
}

let pending
const refreshSoon = () => {
  clearTimeout(pending)
  pending = setTimeout(() => refresh().catch(() => {}), 300)
}

const describe = (e) => {
  switch (e.event) {
    case "registered":
      return `${e.peer_id} logged in (${e.os ?? "?"}/${e.distro ?? "?"})`
    case "rejected":
      return `${e.peer_id} refused: ${e.reason}`
    case "taken_over":
      return `${e.peer_id} moved from ${e.from_server_id}`
    case "job_sent":
      return `${e.peer_id} #${e.ticket} ${e.name} sent`
    case "result":
      return `${e.peer_id} #${e.ticket} ${e.name}: ${e.status}${e.exit_code === null ? "" : ` exit ${e.exit_code}`} ${e.first_line}`
    case "logged_out":
      return `${e.peer_id} logged out: ${e.reason}`
    case "cancelled":
      return `${e.peer_id} #${e.ticket} ${e.requested ? "asked to stop" : "cancelled"}: ${e.reason}`
    case "shutdown":
      return `${e.server_id} shutting down: ${e.reason}`
    default:
      return e.event
  }
}

// The event stream read with fetch (EventSource cannot send the Authorization header), again after a pause when it ends.
const follow = async () => {
  for (;;) {
    try {
      const response = await fetch("/api/events", { headers: { authorization: `Bearer ${token}` } })
      if (!response.ok) throw new Error(String(response.status))
      $("#live").textContent = "live"
      $("#live").classList.add("on")
      const reader = response.body.getReader()
      const decoder = new TextDecoder()
      let buffer = ""
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        buffer += decoder.decode(value, { stream: true })
        const frames = buffer.split("\n\n")
        buffer = frames.pop()
        for (const frame of frames) {
          const data = frame.split("\n").find((line) => line.startsWith("data: "))
          if (data === undefined) continue
          const event = JSON.parse(data.slice(6))
          if (event.event === "output") {
            // A running job's output, as it comes: onto its row of the run shown, not the list.
            const pre = document.querySelector(`#tickets tr[data-ticket="${CSS.escape(event.ticket)}"] pre`)
            if (pre !== null) pre.textContent += event.data
            continue
          }
          $("#events").prepend(el("li", {}, `${new Date(event.at).toLocaleTimeString()}  ${describe(event)}`))
          while ($("#events").childElementCount > 200) $("#events").lastChild.remove()
          refreshSoon()
        }
      }
    } catch {
      // Lost: say so and try again shortly.
    }
    $("#live").textContent = "offline"
    $("#live").classList.remove("on")
    if (token === null) return
    await new Promise((resolve) => setTimeout(resolve, 3000))
  }
}

const start = async () => {
  const me = await api("/api/me")
  $("#login").hidden = true
  $("#board").hidden = false
  $("#sign-out").hidden = false
  $("#who").textContent = `${me.name} (${me.scope})`
  scope = me.scope
  $("#legend").replaceChildren(
    ...[...REASONS, "other"].map((r) =>
      el("span", {}, el("i", { className: `reason-${r}` }), r === "open" ? "online" : r),
    ),
  )
  await refresh()
  follow()
  // Open sessions grow with the clock; the rest comes from the events.
  setInterval(() => {
    const now = Date.now()
    items.update(openSessions.map((id) => ({ id: `s:${id}`, end: now })))
  }, 10_000)
  setInterval(() => refresh().catch(() => {}), 60_000)
}

$("#login").addEventListener("submit", (event) => {
  event.preventDefault()
  token = $("#token").value.trim()
  sessionStorage.setItem(TOKEN_KEY, token)
  start().catch((error) => {
    if (String(error.message) !== "unauthorized")
      $("#login-error").textContent = `Could not open: ${error.message}`
  })
})
$("#sign-out").addEventListener("click", () => signOut())
$("#cancel-run").addEventListener("click", async () => {
  if (shownRun === undefined || !confirm(`Cancel run ${shownRun}?`)) return
  await api(`/api/runs/${encodeURIComponent(shownRun)}/cancel`, { method: "POST" }).catch(() => {})
  refreshSoon()
})

if (token === null) signOut()
else start().catch(() => {})
