// warmroute operations dashboard: polls GET /v1/admin/dashboard with the admin key kept in this
// tab's sessionStorage, and draws everything itself (inline SVG; no library, no CDN). Every name
// it shows goes in as text (textContent), never as markup.
"use strict";

(() => {
  const KEY = "warmroute-admin-key";
  const POLL_MS = 2000;
  const WINDOW_S = 300;
  const STEP_S = 5;
  const SVG = "http://www.w3.org/2000/svg";
  const REASONS = [
    ["sticky", "#2dd4bf"], ["prefix", "#60a5fa"], ["keyed", "#34d399"],
    ["keyless-affinity", "#a78bfa"], ["least-loaded", "#94a3b8"], ["round-robin", "#64748b"],
    ["spilled", "#fbbf24"], ["rehomed", "#fb923c"], ["failover", "#f87171"],
  ];
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let busy = false;

  // -- formatting -------------------------------------------------------------------------
  const intFmt = new Intl.NumberFormat("en-US");
  const compactFmt = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
  const int = (n) => (n == null ? "–" : intFmt.format(Math.round(n)));
  const compact = (n) => (n == null ? "–" : n < 10000 ? intFmt.format(n) : compactFmt.format(n));
  const pct = (x, digits = 1) => (x == null ? "–" : `${(100 * x).toFixed(digits)}%`);
  const ms = (v) => (v == null ? "–" : v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(2)} s`);
  function usd(ticks) {
    const dollars = (ticks || 0) / 1e10;
    if (dollars === 0) return "$0.00";
    return dollars < 0.01 ? `$${dollars.toFixed(6)}` : `$${dollars.toFixed(2)}`;
  }
  function duration(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    return m ? `${m}m ${sec}s` : `${sec}s`;
  }

  // -- DOM helpers ------------------------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text != null) node.textContent = String(text);
    return node;
  }
  function set(id, text) { $(id).textContent = text; }
  function bar(parts) {
    const outer = el("div", "bar");
    for (const [className, fraction] of parts) {
      const inner = el("span", className);
      inner.style.width = `${Math.max(0, Math.min(1, fraction || 0)) * 100}%`;
      outer.append(inner);
    }
    return outer;
  }

  // -- session ----------------------------------------------------------------------------
  function showLogin(message) {
    stop();
    $("board").hidden = true;
    $("sign-out").hidden = true;
    $("login").hidden = false;
    set("login-error", message || "");
    setStatus("idle", "not connected");
    $("key").focus();
  }
  function signOut(message) {
    sessionStorage.removeItem(KEY);
    showLogin(message);
  }
  function start() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = false;
    stop();
    poll();
    timer = setInterval(poll, POLL_MS);
  }
  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
  }
  function setStatus(state, text) {
    $("status").dataset.state = state;
    set("status-text", text);
  }

  async function poll() {
    const key = sessionStorage.getItem(KEY);
    if (!key || busy) return;
    busy = true;
    try {
      const response = await fetch(`/v1/admin/dashboard?window=${WINDOW_S}&step=${STEP_S}`, {
        headers: { authorization: `Bearer ${key}` }, cache: "no-store", credentials: "omit",
      });
      if (response.status === 401 || response.status === 403 || response.status === 400) {
        const body = await response.json().catch(() => ({}));
        signOut(response.status === 403 ? "That key is not an admin key." : body.error || "That key was refused.");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
    } catch (error) {
      setStatus("down", `gateway unreachable (${error.message})`);
    } finally {
      busy = false;
    }
  }

  // -- rendering --------------------------------------------------------------------------
  function render(data) {
    const g = data.gateway;
    const state = g.healthy_engines === 0 ? "down" : g.healthy_engines < g.engines ? "degraded" : "ok";
    const word = state === "ok" ? "serving" : state === "degraded" ? "degraded" : "no engine healthy";
    setStatus(state, `${word} · ${g.healthy_engines}/${g.engines} engines healthy`);
    const policy = $("policy");
    policy.hidden = false;
    policy.textContent = g.policy;
    set("uptime", `up ${duration(g.uptime_s)}`);
    set("updated", `updated ${new Date(data.generated_at * 1000).toLocaleTimeString()}`);
    renderKpis(data.activity.window, data.tenants, Math.min(WINDOW_S, Math.max(1, g.uptime_s)));
    renderEngines(data.engines);
    const a = recent(data.activity, data.generated_at - g.uptime_s);
    lineChart($("chart-hit"), a.t, a.hit_rate, { max: 1, color: "#2dd4bf", format: (v) => pct(v, 0) });
    lineChart($("chart-ttft"), a.t, a.ttft_ms, { color: "#fbbf24", format: ms });
    set("now-hit", latest(a.hit_rate, (v) => pct(v)));
    set("now-ttft", latest(a.ttft_ms, ms));
    decisionsChart($("chart-decisions"), a);
    renderTenants(data.tenants);
  }

  // The steps since the gateway started (at least a minute's worth): a young gateway's plots
  // are not squeezed into the right edge of an empty five minutes.
  function recent(a, startedAt) {
    const n = a.t.length;
    let first = a.t.findIndex((t) => t >= startedAt);
    if (first < 0) first = n;
    first = Math.max(0, Math.min(first, n - Math.round(60 / STEP_S)));
    const cut = (values) => values.slice(first);
    const decisions = {};
    for (const [reason, values] of Object.entries(a.decisions)) decisions[reason] = cut(values);
    return { ...a, t: cut(a.t), hit_rate: cut(a.hit_rate), ttft_ms: cut(a.ttft_ms), requests: cut(a.requests), decisions };
  }

  function renderKpis(w, tenants, seconds) {
    set("kpi-requests", int(w.requests));
    set("kpi-rate", `${(w.requests / seconds).toFixed(2)} req/s · ${int(w.errors)} not 2xx`);
    set("kpi-hit", pct(w.hit_rate));
    set("kpi-hit-note", `${compact(w.cached_tokens)} / ${compact(w.prompt_tokens)} tokens cached`);
    set("kpi-ttft", w.ttft_p50_ms == null ? "–" : ms(w.ttft_p50_ms));
    set("kpi-ttft-note", w.ttft_ms == null ? "no requests yet" : `p95 ${ms(w.ttft_p95_ms)} · mean ${ms(w.ttft_ms)}`);
    set("kpi-failover", `${int(w.failovers)} · ${int(w.resumed)}`);
    set("kpi-failover-note", w.resume_failed ? `${int(w.resume_failed)} streams could not resume` : "5 min · no stream lost");
    const t = tenants.total;
    set("today-cached-share", pct(t.cached_share));
    set("today-tokens", `${compact(t.cached_tokens)} / ${compact(t.prompt_tokens)} tokens cached`);
    set("today-cost", usd(t.cost_in_usd_ticks));
    set("today-saved", `caching saved ${usd(t.saved_by_caching_in_usd_ticks)}`);
  }

  function stat(label, value, field) {
    const box = el("div", "stat");
    box.append(el("div", "label", label));
    const v = el("div", "v", value);
    v.dataset.field = field;
    box.append(v);
    return box;
  }

  function meter(label, value, detail, parts, field) {
    const box = el("div", "meter");
    const row = el("div", "row");
    const left = el("span", null, `${label} `);
    const b = el("b", null, value);
    b.dataset.field = field;
    left.append(b);
    row.append(left, el("span", null, detail));
    box.append(row, bar(parts));
    return box;
  }

  function engineCard(e) {
    const card = el("article", "engine");
    card.dataset.engine = e.id;
    card.dataset.healthy = String(e.healthy);
    const head = el("div", "engine-head");
    head.append(el("span", "dot"), el("span", "id", e.id));
    if (e.model) head.append(el("span", "chip", e.model));
    head.append(el("span", "badge", e.healthy ? "healthy" : "ejected"));
    card.append(head, el("div", "where", e.url));
    const stats = el("div", "stats");
    stats.append(stat("in flight", int(e.in_flight), "in_flight"),
      stat("queued prefill", e.queued_prefill ? e.queued_prefill.toFixed(1) : "0", "queued"),
      stat("waiting", int(e.waiting), "waiting"),
      stat("requests", int(e.requests), "requests"),
      stat("conversations", int(e.conversations), "conversations"));
    card.append(stats);
    card.append(meter("hit rate", pct(e.hit_rate), `${compact(e.cached_tokens)} / ${compact(e.prompt_tokens)} tokens`,
      [["fill-hit", e.hit_rate]], "hit_rate"));
    const c = e.cache;
    if (c && c.blocks_total) {
      const detail = `${int(c.blocks_cached)} of ${int(c.blocks_total)} blocks · ${int(c.blocks_used)} in use · ${compact(c.capacity_tokens)} tokens`;
      card.append(meter("cache", pct(c.use, c.use < 0.1 ? 1 : 0), detail,
        [["fill-used", c.blocks_used / c.blocks_total], ["fill-cached", Math.max(0, c.blocks_cached - c.blocks_used) / c.blocks_total]],
        "cache_use"));
    } else {
      card.append(meter("cache", "–", "no cache statistics from this engine", [], "cache_use"));
    }
    return card;
  }

  function renderEngines(engines) {
    const box = $("engines");
    box.replaceChildren(...engines.map(engineCard));
    const conversations = engines.reduce((n, e) => n + e.conversations, 0);
    const inFlight = engines.reduce((n, e) => n + e.in_flight, 0);
    set("engines-summary", `${engines.length} engines · ${int(inFlight)} requests in flight · ${int(conversations)} conversations homed`);
  }

  function renderTenants(tenants) {
    const body = $("tenants");
    const rows = tenants.groups.map((r) => tenantRow(r.group, r, false));
    if (tenants.groups.length > 1) rows.push(tenantRow("all teams", tenants.total, true));
    body.replaceChildren(...rows);
    $("tenants-empty").hidden = tenants.groups.length > 0;
    set("tenants-since", `since ${new Date(tenants.since * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`);
  }

  function tenantRow(name, r, total) {
    const tr = el("tr", total ? "total" : null);
    const shareCell = el("td");
    const share = el("div", "share");
    share.append(bar([["fill-hit", r.cached_share]]), el("span", "pct", pct(r.cached_share)));
    shareCell.append(share);
    tr.append(el("td", "team", name), el("td", "num", int(r.requests)), el("td", "num", int(r.prompt_tokens)),
      shareCell, el("td", "num", int(r.completion_tokens)), el("td", "num", usd(r.cost_in_usd_ticks)));
    return tr;
  }

  // -- plots ------------------------------------------------------------------------------
  function frame(node) {
    const width = Math.max(200, node.clientWidth || 600);
    const height = Math.max(100, node.clientHeight || 180);
    node.setAttribute("viewBox", `0 0 ${width} ${height}`);
    node.replaceChildren();
    return { width, height, left: 48, right: 12, top: 10, bottom: 22 };
  }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 4, 8, 10]) if (m * p >= v) return m * p;  // whole quarter ticks
    return 10 * p;
  }
  function axes(node, f, n, max, format) {
    const plotH = f.height - f.top - f.bottom;
    for (let k = 0; k <= 4; k++) {
      const y = f.top + plotH - (k / 4) * plotH;
      node.append(svg("line", { class: "grid", x1: f.left, x2: f.width - f.right, y1: y, y2: y }));
      node.append(svg("text", { class: "axis", x: f.left - 8, y: y + 3.5, "text-anchor": "end" }, format((k / 4) * max)));
    }
    const plotW = f.width - f.left - f.right;
    const span = (n - 1) * STEP_S;
    const every = span > 180 ? 60 : span > 90 ? 30 : 15;
    for (let i = 0; i < n; i++) {
      const ago = (n - 1 - i) * STEP_S;
      if (ago % every !== 0) continue;
      const x = f.left + (n > 1 ? (i / (n - 1)) * plotW : plotW / 2);
      const label = ago === 0 ? "now" : ago % 60 === 0 ? `−${ago / 60}m` : `−${ago}s`;
      node.append(svg("text", { class: "axis", x, y: f.height - 6, "text-anchor": i === n - 1 ? "end" : "middle" }, label));
    }
  }

  function lineChart(node, times, values, opts) {
    const f = frame(node);
    const n = times.length;
    const known = values.filter((v) => v != null);
    const max = opts.max || niceMax(Math.max(...known, 0) * 1.15);
    axes(node, f, n, max, opts.format);
    if (!known.length) {
      node.append(svg("text", { class: "nodata", x: f.width / 2, y: f.height / 2, "text-anchor": "middle" }, "no traffic in the last 5 minutes"));
      return;
    }
    const plotW = f.width - f.left - f.right, plotH = f.height - f.top - f.bottom;
    const x = (i) => f.left + (n > 1 ? (i / (n - 1)) * plotW : plotW / 2);
    const y = (v) => f.top + plotH - (Math.min(v, max) / max) * plotH;
    const id = `fade-${node.id}`;
    const defs = svg("defs");
    const gradient = svg("linearGradient", { id, x1: 0, x2: 0, y1: 0, y2: 1 });
    gradient.append(svg("stop", { offset: "0%", "stop-color": opts.color, "stop-opacity": 0.28 }),
      svg("stop", { offset: "100%", "stop-color": opts.color, "stop-opacity": 0 }));
    defs.append(gradient);
    node.append(defs);
    for (const run of runs(values)) {
      const points = run.map((i) => `${x(i).toFixed(1)},${y(values[i]).toFixed(1)}`);
      const base = (f.top + plotH).toFixed(1);
      node.append(svg("path", { d: `M${x(run[0]).toFixed(1)},${base}L${points.join("L")}L${x(run[run.length - 1]).toFixed(1)},${base}Z`, fill: `url(#${id})` }));
      node.append(svg("path", { class: "line", d: `M${points.join("L")}`, stroke: opts.color }));
      for (const i of run) node.append(svg("circle", { class: "dot", cx: x(i), cy: y(values[i]), r: run.length === 1 ? 3.5 : 2.2, fill: opts.color }));
    }
  }
  function latest(values, format) {
    const known = values.filter((v) => v != null);
    return known.length ? `latest ${format(known[known.length - 1])}` : "";
  }
  function runs(values) {
    const found = [];
    let current = [];
    values.forEach((v, i) => {
      if (v == null) { if (current.length) found.push(current); current = []; } else current.push(i);
    });
    if (current.length) found.push(current);
    return found;
  }

  function decisionsChart(node, a) {
    const f = frame(node);
    const n = a.t.length;
    const totals = a.t.map((_, i) => REASONS.reduce((s, [r]) => s + ((a.decisions[r] || [])[i] || 0), 0));
    const top = Math.max(...totals, 0);
    const max = top <= 40 ? Math.max(4, Math.ceil(top / 4) * 4) : niceMax(top);  // whole ticks
    axes(node, f, n, max, (v) => int(v));
    const plotW = f.width - f.left - f.right, plotH = f.height - f.top - f.bottom;
    const slot = plotW / Math.max(1, n);
    const width = Math.max(1.5, slot * 0.72);
    for (let i = 0; i < n; i++) {
      let top = f.top + plotH;
      for (const [reason, color] of REASONS) {
        const count = (a.decisions[reason] || [])[i] || 0;
        if (!count) continue;
        const h = (count / max) * plotH;
        top -= h;
        node.append(svg("rect", { x: f.left + i * slot + (slot - width) / 2, y: top, width, height: Math.max(h, 1), rx: 1.5, fill: color }));
      }
    }
    if (!totals.some((t) => t > 0)) {
      node.append(svg("text", { class: "nodata", x: f.width / 2, y: f.height / 2, "text-anchor": "middle" }, "no requests routed in the last 5 minutes"));
    }
    const legend = $("legend-decisions");
    const keys = REASONS.filter(([r]) => a.window.decisions[r] > 0).map(([reason, color]) => {
      const key = el("span", "key");
      const swatch = el("span", "swatch");
      swatch.style.background = color;
      key.append(swatch, el("span", null, reason), el("span", "count", int(a.window.decisions[reason])));
      return key;
    });
    legend.replaceChildren(...(keys.length ? keys : [el("span", null, "by reason, per 5 s")]));
  }

  // -- start ------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      $("key").value = "";
      start();
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    if (sessionStorage.getItem(KEY)) start(); else showLogin("");
  });
})();
