// The Reelay console: a small single-page app over the API. Every page is a URL
// (a hash route, e.g. #/accounts/acme/subscriptions/ID), shareable as it is; the bearer
// token is kept in this tab's session storage and sent as `Authorization: Bearer`, never
// put in a URL. No framework, no build step.
"use strict";

const TOKEN = "reelay.token";
const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let me = null; // GET /v1/whoami
let tail = null; // the live tail's AbortController
let refresh = null; // a page's refresh timer

// ---- small helpers ---------------------------------------------------------------

function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function time(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function toast(message) {
  const box = document.getElementById("toast");
  const line = h("div", {}, message);
  box.append(line);
  setTimeout(() => line.remove(), 5000);
}

function table(headers, rows, empty, caption) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing yet.");
  return h("table", { "aria-label": caption },
    h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
    h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell) => cell instanceof Node && cell.tagName === "TD" ? cell : h("td", {}, cell))))));
}

function status(text) {
  return h("span", { class: `status status-${text}` }, text);
}

function may(scope) {
  return me && me.scopes.includes(scope);
}

function enc(part) {
  return encodeURIComponent(part);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let value = null;
  try { value = text ? JSON.parse(text) : null; } catch { value = text; }
  if (!response.ok) throw new ApiError(response.status, value);
  return value;
}

function accountPath(account) {
  return `/v1/accounts/${enc(account)}`;
}

// ---- routing --------------------------------------------------------------------

function parseRoute() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, query] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query || "") };
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function accountHome(account) {
  return `#/accounts/${enc(account)}`;
}

function renderNav(account) {
  nav.replaceChildren();
  who.replaceChildren();
  if (!me) return;
  const current = location.hash;
  const link = (label, hash, exact) => h("a", { href: hash, "aria-current": current === hash || (!exact && (current.startsWith(hash + "/") || current.startsWith(hash + "?"))) ? "page" : null }, label);
  if (me.admin) nav.append(link("Accounts", "#/accounts", true));
  if (account) {
    const base = accountHome(account);
    nav.append(
      link("Overview", base, true),
      link("Subscriptions", `${base}/subscriptions`),
      link("Events", `${base}/events`),
      link("Live tail", `${base}/tail`),
      link("Catalog", `${base}/catalog`),
      link("Jobs", `${base}/jobs`),
    );
  }
  who.append(
    h("span", {}, me.admin ? "Admin" : `Account ${me.account}`),
    h("button", { class: "secondary", type: "button", onclick: signOut }, "Sign out"),
  );
}

function signOut() {
  sessionStorage.removeItem(TOKEN);
  me = null;
  go("#/signin");
}

async function render() {
  if (tail) { tail.abort(); tail = null; }
  if (refresh) { clearInterval(refresh); refresh = null; }
  const { parts, query } = parseRoute();
  try {
    if (parts[0] === "portal" && parts[1]) return await portal(parts[1]);
    if (!sessionStorage.getItem(TOKEN)) return signIn();
    if (!me) me = await api("GET", "/v1/whoami");
    if (parts[0] === "signin") return signIn();
    if (parts[0] !== "accounts" || (!parts[1] && !me.admin)) {
      return go(me.admin ? "#/accounts" : accountHome(me.account));
    }
    const account = parts[1];
    if (!account) { renderNav(null); return await accounts(); }
    if (!me.admin && account !== me.account) {
      renderNav(me.account);
      return page("Not your account", h("p", { class: "error" }, `This token reaches account ${me.account} only.`));
    }
    renderNav(account);
    const section = parts[2];
    if (!section) return await overview(account);
    if (section === "subscriptions" && parts[3]) return await subscription(account, parts[3]);
    if (section === "subscriptions") return await subscriptions(account);
    if (section === "events" && parts[3]) return await eventPage(account, parts[3]);
    if (section === "events") return await events(account, query);
    if (section === "tail") return liveTail(account, query);
    if (section === "catalog") return await catalog(account, query);
    if (section === "jobs") return await jobs(account, query);
    return page("Not found", h("p", {}, "No such page."));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      sessionStorage.removeItem(TOKEN);
      me = null;
      return signIn("The token was refused (unknown, revoked or expired). Sign in again.");
    }
    page("Error", h("p", { class: "error", role: "alert" }, error.message));
  }
}

function page(title, ...content) {
  document.title = `${title} · Reelay console`;
  main.replaceChildren(h("h1", {}, title), ...content);
}

window.addEventListener("hashchange", render);

// ---- sign in, portal links ------------------------------------------------------

function signIn(message) {
  me = null;
  renderNav(null);
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    const token = form.querySelector("input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN, token);
    try {
      me = await api("GET", "/v1/whoami");
      go(me.admin ? "#/accounts" : accountHome(me.account));
    } catch (error) {
      sessionStorage.removeItem(TOKEN);
      me = null;
      const alert = form.querySelector(".error");
      alert.textContent = error.status === 401 ? "This token is not valid." : error.message;
    }
  } },
    h("p", {}, "Sign in with the admin token (every account) or an account key (that account only)."),
    h("label", {}, "Token", h("input", { name: "token", type: "password", autocomplete: "off", required: true })),
    h("p", {}, h("button", { type: "submit" }, "Sign in")),
    h("p", { class: "error", role: "alert" }, message || ""),
  );
  page("Sign in", form);
}

async function portal(linkToken) {
  // The link's token leaves the address bar at once: it works once anyway.
  history.replaceState(null, "", "#/");
  try {
    const session = await api("POST", "/v1/portal-sessions", { token: linkToken });
    sessionStorage.setItem(TOKEN, session.token);
    me = null;
    go(accountHome(session.account));
  } catch (error) {
    sessionStorage.removeItem(TOKEN);
    me = null;
    renderNav(null);
    page("Portal link refused", h("p", { class: "error", role: "alert" },
      "This portal link is unknown, was used already, or has expired. Ask for a new one."));
  }
}

// ---- accounts and overview --------------------------------------------------------

async function accounts() {
  const { accounts } = await api("GET", "/v1/accounts");
  const form = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const name = form.querySelector("input").value.trim();
    if (name) go(accountHome(name));
  } }, h("label", {}, "Account", h("input", { name: "account" })), h("button", { type: "submit" }, "Open"));
  page("Accounts",
    h("p", { class: "muted" }, "Every account the server knows, from its keys, subscriptions and events."),
    table(["Account", "Keys", "Subscriptions", "Events"], accounts.map((a) => [
      h("a", { href: accountHome(a.account) }, a.account), a.keys, a.subscriptions, a.events,
    ]), "No accounts yet."),
    form,
    h("h2", {}, "The whole server"),
    await charts(null),
  );
}

function chart(title, points, series) {
  const width = 380, height = 140, pad = 4;
  const max = Math.max(1, ...points.flatMap((p) => series.map((s) => p[s.key] || 0)));
  const x = (i) => pad + (i * (width - 2 * pad)) / Math.max(1, points.length - 1);
  const y = (v) => height - pad - ((v || 0) * (height - 2 * pad)) / max;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: newest ${series.map((s) => `${s.label} ${points.length ? points[points.length - 1][s.key] ?? 0 : 0}`).join(", ")}`);
  for (const s of series) {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.map((p, i) => `${x(i)},${y(p[s.key])}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", s.color);
    line.setAttribute("stroke-width", "2");
    svg.append(line);
  }
  const totals = series.map((s) => `${s.label}: ${s.total ? points.reduce((n, p) => n + (p[s.key] || 0), 0) : (points.length ? points[points.length - 1][s.key] ?? "—" : "—")}`);
  return h("div", { class: "chart card" }, h("h3", {}, title), svg,
    h("div", { class: "legend" }, series.map((s, i) => {
      const swatch = h("span", { "aria-hidden": "true" }, "■ ");
      swatch.style.color = s.color; // CSSOM, which the page's CSP allows
      return h("span", {}, swatch, totals[i], "  ");
    })),
    h("div", { class: "legend" }, `max ${max}, last ${points.length} × 10 s`));
}

async function charts(account) {
  const query = account ? `?account=${enc(account)}&buckets=60` : "?buckets=60";
  const stats = await api("GET", `/v1/stats${query}`);
  const p = stats.points;
  return h("div", { class: "charts" },
    h("div", { class: "chart card" }, h("h3", {}, "Now"), h("dl", { class: "facts" },
      h("dt", {}, "Waiting for a retry"), h("dd", {}, stats.retrying),
      h("dt", {}, "Dead letters"), h("dd", {}, stats.deadLetters),
      h("dt", {}, "Log head"), h("dd", {}, stats.logHead))),
    chart("Events published", p, [{ key: "published", label: "published", color: "#2456d6", total: true }]),
    chart("Deliveries and failures", p, [
      { key: "delivered", label: "delivered", color: "#137a3a", total: true },
      { key: "failed", label: "failed", color: "#b3261e", total: true },
    ]),
    chart("Publish→arrival latency (ms)", p, [
      { key: "latencyP50Ms", label: "p50", color: "#2456d6" },
      { key: "latencyP95Ms", label: "p95", color: "#a86400" },
      { key: "latencyP99Ms", label: "p99", color: "#b3261e" },
    ]),
    chart("Retry depth (server)", p, [{ key: "retryDepth", label: "waiting retries", color: "#a86400" }]),
  );
}

async function overview(account) {
  page(`Account ${account}`, h("p", { class: "muted" }, "Counters of the last 10 minutes, in buckets of 10 seconds (since the server started)."), await charts(account));
}

// ---- subscriptions --------------------------------------------------------------

function destinationText(s) {
  const d = s.destination;
  if (!d) return s.endpoint || "—";
  return d.url || d.topicArn || d.queueUrl || d.streamName || d.type;
}

async function subscriptions(account) {
  const [list, stats] = await Promise.all([
    api("GET", `${accountPath(account)}/subscriptions`),
    api("GET", `/v1/stats?account=${enc(account)}&buckets=1`),
  ]);
  const standing = list.filter((s) => !s.job);
  const rows = standing.map((s) => [
    h("a", { href: `${accountHome(account)}/subscriptions/${enc(s.id)}` }, s.id),
    h("td", { class: "wrap" }, destinationText(s)),
    [...s.events, ...s.topics.map((t) => `topic ${t}`)].join(", "),
    status(s.status),
    Math.max(0, stats.logHead - s.cursor),
    time(s.lastSuccessAt),
    time(s.failingSince),
    s.disabledReason ? `${s.disabledReason.code}: ${s.disabledReason.message}` : "—",
  ]);
  const content = [table(["Subscription", "Destination", "Events", "Status", "Lag", "Last success", "Failing since", "Disabled reason"], rows, "No subscriptions yet.")];
  if (may("manage")) {
    const form = h("form", { class: "card inline", onsubmit: async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const list = (name) => String(data.get(name) || "").split(",").map((v) => v.trim()).filter(Boolean);
      const body = { endpoint: String(data.get("endpoint")).trim() };
      if (list("events").length) body.events = list("events");
      if (list("topics").length) body.topics = list("topics");
      try {
        const created = await api("POST", `${accountPath(account)}/subscriptions`, body);
        toast(`Created ${created.id}; its signing secret: ${created.secret || created.publicKey}`);
        go(`${accountHome(account)}/subscriptions/${enc(created.id)}`);
      } catch (error) { toast(error.message); }
    } },
      h("label", {}, "Endpoint URL", h("input", { name: "endpoint", type: "url", required: true, placeholder: "https://example.com/hooks" })),
      h("label", {}, "Events", h("input", { name: "events", placeholder: "asset-updated, asset-published" })),
      h("label", {}, "Topics", h("input", { name: "topics", placeholder: "assets" })),
      h("button", { type: "submit" }, "Create subscription"));
    content.push(h("h2", {}, "New subscription"), form);
  }
  page("Subscriptions", ...content);
}

async function subscription(account, id) {
  const base = `${accountPath(account)}/subscriptions/${enc(id)}`;
  const [s, log] = await Promise.all([api("GET", base), api("GET", `${base}/deliveries`)]);
  const act = (label, run, attrs) => h("button", Object.assign({ type: "button", onclick: async (event) => {
    event.target.disabled = true;
    try { await run(); } catch (error) { toast(error.message); }
    event.target.disabled = false;
  } }, attrs || {}), label);
  const manage = may("manage");
  const retryNow = (entry) => manage ? act("Retry now", async () => {
    const answer = await api("POST", `${base}/redeliver`, { sequence: entry.sequence });
    toast(`Retrying ${answer.redelivered} now`);
    setTimeout(render, 800);
  }, { class: "secondary", "aria-label": `Retry now ${entry.eventId}` }) : "";
  const facts = h("dl", { class: "facts" },
    h("dt", {}, "Destination"), h("dd", {}, destinationText(s)),
    h("dt", {}, "Events"), h("dd", {}, [...s.events, ...s.topics.map((t) => `topic ${t}`)].join(", ") || "—"),
    h("dt", {}, "Format"), h("dd", {}, s.format),
    h("dt", {}, "Status"), h("dd", {}, status(s.status)),
    h("dt", {}, "Disabled reason"), h("dd", {}, s.disabledReason ? `${s.disabledReason.code}: ${s.disabledReason.message}` : "—"),
    h("dt", {}, "Cursor"), h("dd", {}, s.cursor),
    h("dt", {}, "Last success"), h("dd", {}, time(s.lastSuccessAt)),
    h("dt", {}, "Failing since"), h("dd", {}, time(s.failingSince)),
    h("dt", {}, "Delivered at once"), h("dd", {}, log.delivered),
  );
  const content = [h("div", { class: "card" }, facts)];
  if (s.resync) {
    const r = s.resync;
    content.push(h("div", { class: "card" }, h("label", {}, `Full resync ${r.state}: ${r.sent} of ${r.total}`,
      h("progress", { max: Math.max(1, r.total), value: r.sent, "aria-label": "Resync progress" }))));
    if (r.state === "running") refresh = setInterval(render, 2000);
  }
  if (manage) {
    const since = h("input", { name: "since", type: "datetime-local", step: "1" });
    content.push(h("div", { class: "actions card" },
      h("label", {}, "Replay from", since),
      act("Replay", async () => {
        const body = since.value ? { since: new Date(since.value).toISOString() } : { fromSequence: 1 };
        const answer = await api("POST", `${base}/replay`, body);
        toast(`Replaying the events after sequence ${answer.after}`);
      }),
      act("Full resync", async () => { await api("POST", `${base}/resync`); render(); }, { class: "secondary" }),
      act("Send test event", async () => {
        const answer = await api("POST", `${base}/test`);
        toast(answer.delivered ? `Test event delivered (${answer.statusCode})` : `Test event failed: ${answer.statusCode || ""} ${answer.error || ""}`);
      }, { class: "secondary" }),
      act("Redeliver dead letters", async () => {
        const answer = await api("POST", `${base}/redeliver`);
        toast(`Redelivering ${answer.redelivered} dead letters`);
        setTimeout(render, 1000);
      }, { class: "secondary" }),
      s.disabledReason ? act("Enable", async () => { await api("POST", `${base}/enable`); render(); }) : "",
      act("Delete", async () => {
        if (!confirm(`Delete subscription ${id}?`)) return;
        await api("DELETE", base);
        go(`${accountHome(account)}/subscriptions`);
      }, { class: "danger" }),
    ));
  }
  const eventLink = (eventId) => h("a", { href: `${accountHome(account)}/events/${enc(eventId.split(".")[0])}` }, eventId);
  content.push(
    h("h2", {}, "Attempts"),
    table(["At", "Event", "Attempt", "Outcome", "Status code", "Latency", "Response", "Next attempt"], log.attempts.map((a) => [
      time(a.at), eventLink(a.eventId), a.attempt, status(a.outcome), a.statusCode ?? (a.error || "—"), `${a.latencyMs} ms`,
      h("td", { class: "wrap" }, a.response || ""), time(a.nextAttemptAt),
    ]), "No failed attempts: every delivery succeeded at once.", "Attempts"),
    h("h2", {}, "Retrying"),
    table(["Event", "Sequence", "Attempts", "Next attempt", "Last error", ""], log.retrying.map((r) => [
      eventLink(r.eventId), r.sequence, r.attempts, time(r.nextAttemptAt), h("td", { class: "wrap" }, r.lastError), retryNow(r),
    ]), "No delivery waits for a retry.", "Retrying"),
    h("h2", {}, "Dead letters"),
    table(["Event", "Sequence", "Attempts", "Dead since", "Last error", ""], log.deadLetters.map((r) => [
      eventLink(r.eventId), r.sequence, r.attempts, time(r.deadAt), h("td", { class: "wrap" }, r.lastError), retryNow(r),
    ]), "No dead letters.", "Dead letters"),
  );
  page(`Subscription ${id}`, ...content);
}

// ---- events ---------------------------------------------------------------------

function filterForm(fields, query, onsubmit, button) {
  const form = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (String(value).trim()) params.set(name, String(value).trim());
    onsubmit(params);
  } }, fields.map(([name, label]) => h("label", {}, label, h("input", { name, value: query.get(name) || "" }))),
  h("button", { type: "submit" }, button));
  return form;
}

function eventRows(account, events) {
  return events.map((e) => [
    e.sequence,
    h("a", { href: `${accountHome(account)}/events/${enc(e.id)}` }, e.id),
    e.name, e.topic, e.entityKey || "—", time(e.receivedAt),
  ]);
}

const EVENT_FILTERS = [["topic", "Topic"], ["event", "Event name"], ["entity", "Entity"]];
const TAIL_FILTERS = [...EVENT_FILTERS, ["since", "Since (time)"]];

async function events(account, query) {
  const params = new URLSearchParams(query);
  params.set("limit", params.get("limit") || "100");
  const since = params.get("since");
  if (since && !Number.isNaN(Date.parse(since))) params.set("since", new Date(since).toISOString());
  const found = await api("GET", `${accountPath(account)}/events?${params}`);
  const form = filterForm([...EVENT_FILTERS, ["since", "Since (time)"], ["after", "After sequence"]], query,
    (params) => go(`${accountHome(account)}/events?${params}`), "Filter");
  let next = "";
  if (found.next) {
    const more = new URLSearchParams(query);
    more.set("after", found.next);
    next = h("p", {}, h("a", { href: `${accountHome(account)}/events?${more}` }, "Next page"));
  }
  page("Events", form,
    table(["Sequence", "Event", "Name", "Topic", "Entity", "Committed"], eventRows(account, found.events), "No events match.", "Events"), next);
}

async function eventPage(account, id) {
  const answer = await api("GET", `${accountPath(account)}/events/${enc(id)}/deliveries`);
  const e = answer.event;
  const rows = answer.deliveries.map((d) => {
    const last = d.attempts[d.attempts.length - 1];
    const detail = d.status === "pending" ? `${d.behind} behind${d.disabled ? ` (disabled: ${d.disabled})` : ""}`
      : d.status === "retrying" ? `next attempt ${time(d.nextAttemptAt)}: ${d.lastError}`
      : d.status === "dead" ? `dead since ${time(d.deadAt)}: ${d.lastError}`
      : last ? `after ${d.attempts.length} attempts` : "at once";
    return [
      h("a", { href: `${accountHome(account)}/subscriptions/${enc(d.subscriptionId)}` }, d.subscriptionId),
      h("td", { class: "wrap" }, destinationText(d)),
      status(d.status),
      last ? (last.statusCode ?? last.error ?? "—") : "—",
      h("td", { class: "wrap" }, detail),
    ];
  });
  page(`Event ${e.id}`,
    h("div", { class: "card" }, h("dl", { class: "facts" },
      h("dt", {}, "Name"), h("dd", {}, e.name), h("dt", {}, "Topic"), h("dd", {}, e.topic),
      h("dt", {}, "Entity"), h("dd", {}, e.entityKey || "—"), h("dt", {}, "Sequence"), h("dd", {}, e.sequence),
      h("dt", {}, "Committed"), h("dd", {}, time(e.receivedAt)))),
    h("h2", {}, "Delivery status"),
    table(["Subscription", "Destination", "Status", "Last status code", "Details"], rows, "No subscription wants this event.", "Delivery status"),
    h("h2", {}, "Document"),
    h("pre", {}, JSON.stringify(e.event, null, 2)));
}

// ---- live tail --------------------------------------------------------------------

function liveTail(account, query) {
  const body = h("tbody", {});
  const state = h("p", { class: "muted", role: "status" }, "Connecting…");
  const form = filterForm(TAIL_FILTERS, query, (params) => go(`${accountHome(account)}/tail?${params}`), "Apply filters");
  page("Live tail", h("p", { class: "muted" }, "Events as they are committed, newest first."), form, state,
    h("table", {}, h("thead", {}, h("tr", {}, ["Sequence", "Event", "Name", "Topic", "Entity", "Committed"].map((n) => h("th", { scope: "col" }, n)))), body));
  const controller = new AbortController();
  tail = controller;
  const params = new URLSearchParams();
  for (const [name] of TAIL_FILTERS) if (query.get(name)) params.set(name, query.get(name));
  if (params.get("since") && !Number.isNaN(Date.parse(params.get("since")))) params.set("since", new Date(params.get("since")).toISOString());
  let last = null;
  const connect = async () => {
    const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN)}`, Accept: "text/event-stream" };
    if (last !== null) headers["Last-Event-ID"] = String(last);
    const response = await fetch(`${accountPath(account)}/events/stream?${params}`, { headers, signal: controller.signal });
    if (!response.ok) throw new ApiError(response.status, null);
    state.textContent = "Live: waiting for events.";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let pending = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      pending += decoder.decode(value, { stream: true });
      let end;
      while ((end = pending.indexOf("\n\n")) >= 0) {
        const message = pending.slice(0, end);
        pending = pending.slice(end + 2);
        let data = "", id = null, kind = null;
        for (const line of message.split("\n")) {
          if (line.startsWith("data: ")) data += line.slice(6);
          else if (line.startsWith("id: ")) id = Number(line.slice(4));
          else if (line.startsWith("event: ")) kind = line.slice(7);
        }
        if (!data || kind === "cutoff") continue;
        const event = JSON.parse(data);
        if (id !== null) last = id;
        const [row] = eventRows(account, [event]);
        body.prepend(h("tr", {}, row.map((cell) => h("td", {}, cell))));
        while (body.children.length > 500) body.lastChild.remove();
        state.textContent = `Live: ${body.children.length} events shown.`;
      }
    }
  };
  (async () => {
    while (!controller.signal.aborted) {
      try { await connect(); } catch (error) {
        if (controller.signal.aborted) return;
        state.textContent = `Disconnected (${error.message}); connecting again…`;
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) return;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  })();
}

// ---- catalog, entities, jobs ------------------------------------------------------

async function catalog(account, query) {
  const cat = await api("GET", "/v1/catalog");
  const fields = (list) => (list || []).map((f) => f.name).join(", ");
  // An entity key names its type: assetId is an asset's.
  const types = [...new Set(cat.eventTypes.map((t) => t.entityKey && t.entityKey.replace(/Id$/, "")).filter(Boolean))];
  const content = [
    h("h2", {}, "Topics"),
    table(["Topic", "Description"], cat.topics.map((t) => [t.name, t.description || ""])),
    h("h2", {}, "Event types"),
    table(["Event", "Topic", "Required fields", "Optional fields", "Entity key"], cat.eventTypes.map((t) => [
      h("a", { href: `${accountHome(account)}/events?event=${enc(t.name)}` }, t.name), t.topic, fields(t.required), fields(t.optional), t.entityKey || "—",
    ])),
    h("h2", {}, "Entities"),
  ];
  const type = query.get("type");
  const form = filterForm([["type", "Entity type"]], query, (params) => go(`${accountHome(account)}/catalog?${params}`), "Show entities");
  content.push(form);
  if (types.length) content.push(h("p", { class: "muted" }, `Entity types: ${types.join(", ")}`));
  if (type) {
    const page_ = await api("GET", `${accountPath(account)}/entities?type=${enc(type)}&limit=100`);
    content.push(table(["Entity", "Latest event", "Name", "Committed"], page_.entities.map((e) => [
      e.id, h("a", { href: `${accountHome(account)}/events/${enc(e.event ? e.event.id : "")}` }, e.event ? e.event.id : "—"),
      e.event ? e.event.name : "—", e.event ? time(e.event.receivedAt) : "—",
    ]), "No entities of this type."));
  }
  page("Catalog", ...content);
}

async function jobs(account, query) {
  const job = query.get("job");
  const content = [
    h("p", { class: "muted" }, "The callback URLs of a Dynamic Ingest job and what each received."),
    filterForm([["job", "Job ID"]], query, (params) => go(`${accountHome(account)}/jobs?${params}`), "Show callbacks"),
  ];
  if (job) {
    const answer = await api("GET", `${accountPath(account)}/jobs/${enc(job)}/callbacks`);
    content.push(table(["Callback", "URL", "Status", "Expires"], answer.callbacks.map((c) => [
      h("a", { href: `${accountHome(account)}/subscriptions/${enc(c.id)}` }, c.id), h("td", { class: "wrap" }, c.url), status(c.status), time(c.expiresAt),
    ]), "No callbacks registered for this job."));
  }
  page("Jobs", ...content);
}

render();
