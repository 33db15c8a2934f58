// The web view: polls ./cluster and redraws. Plain script, no build step, nothing fetched elsewhere.
"use strict";

const POLL_MS = 250;
// Events are fetched again from a little before the newest one seen: one committed late
// (its time is taken before its commit) is still picked up; duplicates are dropped.
const OVERLAP_MS = 10000;

const base = location.pathname.endsWith("/") ? location.pathname : location.pathname + "/";
const state = { events: new Map(), newest: null, windowS: 0 };

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// One colour per instance, in the order the page first meets them.
const PALETTE = ["#2f6fde", "#d9534f", "#2a9d8f", "#e9a23b", "#8e5ccf", "#c2417d", "#5b8c2a", "#1f9bbf"];
const colours = new Map();

function colour(instance) {
  if (!colours.has(instance)) {
    const n = colours.size;
    colours.set(instance, n < PALETTE.length ? PALETTE[n] : `hsl(${(n * 137) % 360} 55% 45%)`);
  }
  return colours.get(instance);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return seconds < 60 ? `${seconds.toFixed(2)} s` : `${(seconds / 60).toFixed(1)} min`;
}

function cell(text, className) {
  return el("td", className ? { class: className } : {}, String(text));
}

function drawGroups(groups) {
  const rows = groups.map((g) => {
    const leader = g.leader
      ? [el("span", { class: "swatch", style: `background:${colour(g.leader)}` }), g.leader]
      : ["no leader"];
    return el(
      "tr",
      { "data-group": g.group, class: g.leader ? "" : "vacant" },
      cell(g.group),
      el("td", { class: "leader" }, ...leader),
      cell(g.term, "number term"),
      cell(age(g.heartbeat_age_s), "number"),
      cell(g.lock_held ? "yes" : "no", g.lock_held ? "" : "no"),
    );
  });
  document.querySelector("#groups tbody").replaceChildren(...rows);
}

function drawMembers(members) {
  const rows = members.map((m) =>
    el(
      "tr",
      { "data-group": m.group, "data-instance": m.instance_id, class: m.live ? "" : "gone" },
      cell(m.group),
      cell(m.instance_id),
      cell(m.role, "role"),
      cell(m.term ?? "-", "number"),
      cell(age(m.heartbeat_age_s), "number"),
      cell(m.live ? "yes" : "no", m.live ? "" : "no"),
      cell(m.candidate ? "yes" : "no"),
      cell(m.host ?? "-"),
      cell(m.pid ?? "-", "number"),
    ),
  );
  document.querySelector("#members tbody").replaceChildren(...rows);
}

// Leaderships of each group from its events: elected opens one, any other kind ends it.
function leaderships(events, now) {
  const byGroup = new Map();
  for (const e of events) {
    if (!byGroup.has(e.group)) byGroup.set(e.group, []);
    const spans = byGroup.get(e.group);
    const open = spans.length && spans[spans.length - 1].end === null ? spans[spans.length - 1] : null;
    const at = Date.parse(e.at);
    if (open) open.end = at;
    if (e.kind === "elected") spans.push({ instance: e.instance_id, term: e.term, start: at, end: null });
  }
  for (const spans of byGroup.values()) for (const s of spans) if (s.end === null) s.end = now;
  return byGroup;
}

// A leadership whose election is older than the retained history still shows, from acquired_at.
function withCurrent(spans, groups, now) {
  for (const g of groups) {
    if (!g.leader || !g.acquired_at) continue;
    const lane = spans.get(g.group) || [];
    if (!lane.some((s) => s.term === g.term && s.end === now)) {
      lane.push({ instance: g.leader, term: g.term, start: Date.parse(g.acquired_at), end: now });
      spans.set(g.group, lane);
    }
  }
  return spans;
}

function drawTimeline(groups, now) {
  const events = [...state.events.values()].sort((a, b) => Date.parse(a.at) - Date.parse(b.at));
  const spans = withCurrent(leaderships(events, now), groups, now);
  const earliest = events.length ? Date.parse(events[0].at) : now;
  // The whole retained history, with a little room before the first event; at least 10 s.
  const from = state.windowS
    ? now - state.windowS * 1000
    : Math.min(earliest - (now - earliest) * 0.02, now - 10000);
  const width = Math.max(now - from, 1);
  const names = [...new Set([...groups.map((g) => g.group), ...spans.keys()])].sort();
  const lanes = names.map((name) => {
    const bar = el("div", { class: "bar", "data-group": name });
    for (const s of spans.get(name) || []) {
      if (s.end < from) continue;
      const left = (Math.max(s.start, from) - from) / width;
      const span = (s.end - Math.max(s.start, from)) / width;
      const label = `${s.instance} · term ${s.term}`;
      bar.append(
        el(
          "span",
          {
            style: `left:${(left * 100).toFixed(3)}%;width:${Math.max(span * 100, 0.2).toFixed(3)}%;background:${colour(s.instance)}`,
            title: `${label}: ${new Date(s.start).toLocaleString()} – ${s.end === now ? "now" : new Date(s.end).toLocaleString()}`,
            "data-instance": s.instance,
            "data-term": String(s.term),
          },
          label,
        ),
      );
    }
    return el("div", { class: "lane" }, el("div", { class: "name" }, name), bar);
  });
  const axis = el(
    "div",
    { class: "axis" },
    el("span"),
    el("div", {}, el("span", {}, new Date(from).toLocaleString()), el("span", {}, "now")),
  );
  const timeline = document.getElementById("timeline");
  if (!lanes.length) timeline.replaceChildren(el("p", { class: "empty" }, "no groups yet"));
  else timeline.replaceChildren(...lanes, axis);
}

async function poll() {
  const since = state.newest === null ? "" : new Date(state.newest - OVERLAP_MS).toISOString();
  try {
    const response = await fetch(`${base}cluster${since ? `?since=${encodeURIComponent(since)}` : ""}`, {
      cache: "no-store",
    });
    const view = await response.json();
    const problem = document.getElementById("problem");
    problem.hidden = !view.database_error;
    problem.textContent = view.database_error ? `database: ${view.database_error}` : "";
    if (!view.database_error) {
      for (const e of view.events) {
        state.events.set(`${e.at}|${e.group}|${e.kind}|${e.term}|${e.instance_id}`, e);
        state.newest = Math.max(state.newest ?? 0, Date.parse(e.at));
      }
      drawGroups(view.groups);
      drawMembers(view.members);
      drawTimeline(view.groups, Date.parse(view.now));
    }
    document.getElementById("served").textContent =
      `served by ${view.instance_id} · updated ${new Date(view.now).toLocaleTimeString()}`;
  } catch (error) {
    const problem = document.getElementById("problem");
    problem.hidden = false;
    problem.textContent = `cannot reach the coordinator: ${error}`;
  }
  setTimeout(poll, POLL_MS);
}

for (const button of document.querySelectorAll("[data-window]")) {
  button.addEventListener("click", () => {
    state.windowS = Number(button.dataset.window);
    for (const other of document.querySelectorAll("[data-window]")) other.classList.toggle("chosen", other === button);
  });
}
poll();
