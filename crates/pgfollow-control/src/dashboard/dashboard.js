// The pgfollow dashboard: reads /dashboard/data every 2 s (with the
// session cookie the login set) and redraws the page. No library; the
// charts are SVG drawn here. Every value shown comes from that document:
// each database field carries data-field, each chart point its values as
// data attributes, so what is on screen can be checked against pg:info.
"use strict";

const REFRESH_MS = 2000;
const WINDOW_MS = 3600 * 1000;
const SVG = "http://www.w3.org/2000/svg";

function $(id) {
  return document.getElementById(id);
}

// An element with attributes and children (strings become text).
function el(tag, attrs, ...children) {
  const e = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

// Bytes as pg:info writes them: 1024-based, PostgreSQL's unit names.
function humanBytes(n) {
  const units = ["kB", "MB", "GB", "TB", "PB"];
  if (n < 1024) return n + " bytes";
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u + 1 < units.length) {
    v /= 1024;
    u += 1;
  }
  const num = v < 100 ? v.toFixed(1).replace(/\.0$/, "") : v.toFixed(0);
  return num + " " + units[u];
}

function utcMinute(iso) {
  const d = new Date(iso);
  const p = (x) => String(x).padStart(2, "0");
  return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())} UTC`;
}

function statusLabel(db) {
  if (db.state === "failed" && db.status_detail) return "failed: " + db.status_detail;
  if (db.state === "available" || db.progress_percent == null) return db.state;
  return `${db.state} (${db.progress_percent}%)`;
}

function commitsLabel(lag) {
  const unit = lag.commits === 1 && !lag.more_than ? "commit" : "commits";
  return (lag.more_than ? "more than " : "") + lag.commits + " " + unit;
}

function colorName(c) {
  return /^[A-Z]+$/.test(c) ? "PGFOLLOW_POSTGRESQL_" + c : c;
}

// The rows of pg:info, in its order and with its labels.
function infoRows(db) {
  const unknown = (v, f) => (v === null || v === undefined ? "?" : f ? f(v) : String(v));
  const rows = [
    ["Plan", db.plan],
    ["Status", statusLabel(db)],
    ["Connections", `${unknown(db.connections_used)}/${db.connection_limit}`],
    ["PG Version", db.pg_version],
    ["Created", utcMinute(db.created_at)],
    ["Data Size", `${unknown(db.data_size_bytes, humanBytes)} / ${humanBytes(db.storage_limit_gb * 1024 ** 3)}`],
    ["Tables", unknown(db.tables)],
    ["Fork/Follow", db.fork_follow],
  ];
  if (db.ha_status) rows.push(["HA Status", db.ha_status]);
  if (db.following) {
    rows.push(["Following", colorName(db.following)]);
    const lag = db.behind_by;
    rows.push([
      "Behind By",
      lag
        ? `${commitsLabel(lag)} (${humanBytes(lag.bytes)} of WAL, ${lag.seconds.toFixed(1)} s)${lag.streaming ? "" : ", not streaming"}`
        : "?",
    ]);
  }
  if (db.followers.length) rows.push(["Followers", db.followers.map(colorName).join(", ")]);
  if (db.last_backup) {
    const b = db.last_backup;
    rows.push(["Last Backup", `${b.name} (${utcMinute(b.finished_at)}, ${humanBytes(b.size_bytes)})`]);
  }
  rows.push(["Host", db.host]);
  rows.push(["Add-on", db.name]);
  return rows;
}

// A copy's bytes are fresher than the recorded percentage.
function percentOf(recorded, copy) {
  if (copy && copy.total_bytes > 0) return Math.floor((100 * Math.min(copy.done_bytes, copy.total_bytes)) / copy.total_bytes);
  return recorded;
}

function copyText(copy) {
  return copy ? ` ${humanBytes(copy.done_bytes)} of ${humanBytes(copy.total_bytes)}` : "";
}

function databaseCard(db) {
  const heading = db.attachments.length ? db.attachments.join(", ") : db.name;
  const rows = infoRows(db).map(([label, value]) =>
    el("tr", { "data-field": label }, el("th", {}, label + ":"), el("td", {}, value)),
  );
  const card = el(
    "div",
    { class: "card db", "data-app": db.app, "data-color": db.color, "data-name": db.name },
    el("h3", {}, "=== " + heading),
    el("table", { class: "fields" }, rows),
  );
  const status = card.querySelector('[data-field="Status"] td');
  status.className = "status-" + db.state;
  const pct = percentOf(db.progress_percent, db.copy);
  if (db.state === "preparing" && pct != null) {
    status.append(" ", el("progress", { max: 100, value: pct }), copyText(db.copy));
  }
  return card;
}

function renderApps(apps) {
  if (!apps.length) return el("p", { class: "muted" }, "No apps yet: `pgfollow apps:create NAME`.");
  return apps.map((a) =>
    el(
      "div",
      { class: "app", "data-app": a.name },
      el("h3", {}, a.name + (a.maintenance ? " (maintenance on)" : "")),
      a.databases.length
        ? el("div", { class: "cards" }, a.databases.map(databaseCard))
        : el("p", { class: "muted" }, a.name + " has no databases."),
    ),
  );
}

function renderHosts(hosts) {
  const rows = hosts.map((h) =>
    el(
      "tr",
      { "data-host": h.name },
      el("td", {}, h.name),
      el("td", {}, h.zone || "-"),
      el("td", {}, h.reachable ? "up" : "down"),
      el("td", {}, (h.pg_versions.length ? h.pg_versions : [h.pg_version]).join(", ")),
      el("td", {}, h.databases.join(", ") || "-"),
    ),
  );
  const head = ["NAME", "ZONE", "AGENT", "PG", "DATABASES"].map((t) => el("th", {}, t));
  return el("table", { class: "list" }, el("tr", {}, head), rows);
}

function renderOperations(ops) {
  if (!ops.length) return el("p", { class: "muted" }, "Nothing under way.");
  const rows = ops.map((o) => {
    const pct = percentOf(o.progress_percent, o.copy);
    return el(
      "tr",
      { "data-operation": o.id, "data-kind": o.kind },
      el("td", {}, o.kind),
      el("td", {}, o.app ? `${o.app} ${o.color}` : o.database),
      el("td", {}, o.state + (o.step !== "pending" ? `, ${o.step} done` : "")),
      el(
        "td",
        {},
        pct != null ? [el("progress", { max: 100, value: pct }), ` ${pct}%`, copyText(o.copy)] : "",
      ),
      el("td", { class: "error" }, o.error || ""),
    );
  });
  const head = ["KIND", "DATABASE", "STATE", "PROGRESS", "LAST ERROR"].map((t) => el("th", {}, t));
  return el("table", { class: "list" }, el("tr", {}, head), rows);
}

// A scale's top: the largest value rounded up to 1, 2 or 5 times a power of ten.
function niceTop(max) {
  if (!(max > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

// The time axis: the last hour, or less when the samples cover less
// (at least MIN_SPAN_MS), so a young chart is not a line at its right edge.
const MIN_SPAN_MS = 2 * 60 * 1000;
function timeSpan(points, now) {
  const oldest = points.length ? Date.parse(points[0].at) : now;
  return Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - oldest));
}

function ago(ms) {
  const s = Math.round(ms / 1000);
  if (s === 0) return "now";
  if (s < 60) return `-${s}s`;
  const m = Math.floor(s / 60), r = s % 60;
  return r ? `-${m}m ${String(r).padStart(2, "0")}s` : `-${m} min`;
}

function chart(f, markers, now) {
  const W = 900, H = 180, L = 46, R = 46, T = 12, B = 22;
  const inWindow = f.points.filter((p) => Date.parse(p.at) >= now - WINDOW_MS);
  const span = timeSpan(inWindow, now);
  const x0 = now - span;
  const x = (t) => L + ((t - x0) / span) * (W - L - R);
  const pts = inWindow.filter((p) => Date.parse(p.at) >= x0);
  const topC = niceTop(Math.max(0, ...pts.map((p) => p.commits)));
  const topS = niceTop(Math.max(0, ...pts.map((p) => p.seconds)));
  const yC = (v) => T + (1 - v / topC) * (H - T - B);
  const yS = (v) => T + (1 - v / topS) * (H - T - B);
  const svg = el("svg:svg", {
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": `Behind By of ${f.color}`,
    "data-top-commits": topC,
    "data-top-seconds": topS,
  });
  for (const frac of [0, 0.5, 1]) {
    const y = T + frac * (H - T - B);
    svg.append(el("svg:line", { class: frac === 1 ? "axis" : "grid", x1: L, x2: W - R, y1: y, y2: y }));
    svg.append(el("svg:text", { x: L - 4, y: y + 3, "text-anchor": "end" }, String(+(topC * (1 - frac)).toPrecision(3))));
    svg.append(el("svg:text", { x: W - R + 4, y: y + 3 }, (topS * (1 - frac)).toPrecision(2) + " s"));
  }
  for (const frac of [1, 0.75, 0.5, 0.25, 0]) {
    const t = now - frac * span;
    svg.append(el("svg:text", { x: x(t), y: H - 6, "text-anchor": "middle" }, ago(frac * span)));
  }
  const line = (cls, y, key) =>
    el("svg:polyline", {
      class: cls,
      points: pts.map((p) => `${x(Date.parse(p.at)).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "),
    });
  svg.append(line("seconds", yS, "seconds"), line("commits", yC, "commits"));
  const dots = el("svg:g", { class: "points" });
  for (const p of pts) {
    dots.append(
      el("svg:circle", {
        class: "commits point",
        cx: x(Date.parse(p.at)).toFixed(1),
        cy: yC(p.commits).toFixed(1),
        r: 1.6,
        "data-at": p.at,
        "data-commits": p.commits,
        "data-seconds": p.seconds,
        "data-bytes": p.bytes,
      }),
    );
  }
  svg.append(dots);
  for (const m of markers.filter((m) => m.app === f.app && Date.parse(m.at) >= x0)) {
    const mx = x(Date.parse(m.at));
    // The label on the side with room for it.
    const left = mx > W / 2;
    svg.append(
      el("svg:line", { class: "marker", x1: mx, x2: mx, y1: T, y2: H - B, "data-kind": m.kind, "data-at": m.at, "data-database": m.database }),
      el(
        "svg:text",
        { class: "marker", x: left ? mx - 4 : mx + 4, y: T + 9, "text-anchor": left ? "end" : "start" },
        `${m.kind} ${m.database}${m.state === "failed" ? " (failed)" : ""}`,
      ),
    );
  }
  const last = pts[pts.length - 1];
  const caption = last
    ? `now ${commitsLabel(last)}, ${last.seconds.toFixed(1)} s (${pts.length} samples, every ${f.interval}s)`
    : "no sample yet";
  const title = f.leader ? `${f.app} ${f.color}, following ${f.leader}` : `${f.app} ${f.color} (no longer a follower)`;
  return el(
    "div",
    { class: "chart", "data-app": f.app, "data-color": f.color },
    el("h3", {}, title, " ", el("span", { class: "muted" }, caption)),
    svg,
  );
}

function renderCharts(lag, now) {
  if (!lag.followers.length) return el("p", { class: "muted" }, "No followers.");
  return lag.followers.map((f) => chart({ ...f, interval: lag.interval_secs }, lag.markers, now));
}

function render(data) {
  const now = Date.parse(data.generated_at);
  $("operations").replaceChildren(renderOperations(data.operations));
  $("charts").replaceChildren(...[renderCharts(data.lag, now)].flat());
  $("apps").replaceChildren(...[renderApps(data.apps)].flat());
  $("hosts").replaceChildren(renderHosts(data.hosts));
  $("updated").textContent = "updated " + new Date(now).toISOString().slice(11, 19) + " UTC";
  $("updated").setAttribute("data-generated-at", data.generated_at);
  document.body.setAttribute("data-state", "ready");
  // How many times the page redrew itself since it loaded.
  document.body.setAttribute("data-refreshes", Number(document.body.getAttribute("data-refreshes") || 0) + 1);
}

function showLogin() {
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").hidden = !new URLSearchParams(location.search).has("login");
  document.body.setAttribute("data-state", "login");
}

let timer = null;
async function refresh() {
  clearTimeout(timer);
  let answer;
  try {
    answer = await fetch("/dashboard/data", { credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    $("updated").textContent = "the control plane does not answer; retrying";
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  if (answer.status === 401) {
    showLogin();
    return;
  }
  if (!answer.ok) {
    $("updated").textContent = `the control plane answered ${answer.status}; retrying`;
    timer = setTimeout(refresh, REFRESH_MS);
    return;
  }
  const data = await answer.json();
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  render(data);
  timer = setTimeout(refresh, REFRESH_MS);
}

refresh();
