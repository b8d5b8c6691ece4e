// spendgate dashboard: reads /dashboard/api/<view> (JSON) and draws tables and
// Chart.js charts. No build step. Money arrives as exact decimal strings:
// tables show them as they are, cards and charts round to cents.
"use strict";

const API = "/dashboard/api/";
const FILTER_DIMS = ["team", "feature", "environment", "user", "tenant"];
const OTHER_DIMS = ["session_id", "prompt_template", "prompt_version", "experiment", "priority", "model", "provider", "key_id"];
const UNTAGGED = "(untagged)";
const charts = {};

// ---- money and numbers ---------------------------------------------------

// Round a decimal string to cents without floats ("12.345" -> "12.35").
function cents(text) {
  if (text === null || text === undefined || text === "") return "";
  let s = String(text).trim();
  const neg = s.startsWith("-");
  if (neg) s = s.slice(1);
  let [whole, frac = ""] = s.split(".");
  frac = (frac + "000").slice(0, 3);
  let n = BigInt(whole || "0") * 100n + BigInt(frac.slice(0, 2));
  if (Number(frac[2]) >= 5) n += 1n;
  const w = (n / 100n).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const c = (n % 100n).toString().padStart(2, "0");
  return (neg && n !== 0n ? "-$" : "$") + w + "." + c;
}

// Cents, except for amounts under a cent (a cost per request): two significant
// digits then, so $0.0028 does not read as $0.00. The exact value stays in the title.
function unitMoney(text) {
  const shown = cents(text);
  if (shown !== "$0.00" && shown !== "-$0.00") return shown;
  const n = Number(text);
  if (!n) return shown;
  return (n < 0 ? "-$" : "$") + Math.abs(n).toPrecision(2);
}

function count(value) {
  if (value === null || value === undefined || value === "") return "–";
  return BigInt(value).toString().replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function percent(ratio) {
  if (ratio === null || ratio === undefined || ratio === "") return "–";
  return (Number(ratio) * 100).toFixed(1) + "%";
}

function cell(value, type) {
  if (value === null || value === undefined) return type === "text" ? UNTAGGED : "–";
  if (type === "ratio") return percent(value);
  if (type === "bool") return value ? "yes" : "no";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value); // money stays exact in tables
}

// ---- the query: range + filters, kept in the page URL ----------------------

function currentParams() {
  return new URLSearchParams(location.search);
}

function apiUrl(view, extra, csv) {
  const p = currentParams();
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return API + view + (csv ? ".csv" : "") + "?" + p.toString();
}

async function fetchView(view, extra) {
  const r = await fetch(apiUrl(view, extra), { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (r.status === 401) { location.href = "/dashboard/login"; throw new Error("signed out"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  return body;
}

// ---- tables --------------------------------------------------------------

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderTable(section, data, extra) {
  const box = section.querySelector(".table");
  box.replaceChildren();
  const h2 = section.querySelector("h2");
  let link = h2.querySelector("a.csv");
  if (!link) { link = el("a", { class: "csv", download: "" }, "CSV"); h2.appendChild(link); }
  link.href = apiUrl(data.view, extra, true);
  if (data.status === "not_configured") {
    box.appendChild(el("p", { class: "notice" }, data.message || "not configured"));
    return;
  }
  if (!data.rows.length) { box.appendChild(el("p", { class: "muted" }, "No data in this range.")); return; }
  const table = el("table", { "data-view": data.view });
  const head = table.createTHead().insertRow();
  for (const c of data.columns) head.appendChild(el("th", { class: c.type === "text" || c.type === "time" ? "" : "num" }, c.label));
  const body = table.createTBody();
  for (const row of data.rows) {
    const tr = body.insertRow();
    for (const c of data.columns) {
      const td = tr.insertCell();
      td.dataset.col = c.key;
      if (c.type !== "text" && c.type !== "time") td.className = "num";
      if (c.key === "ok") td.className = row.ok === null ? "muted" : row.ok ? "ok" : "bad";
      td.textContent = cell(row[c.key], c.type);
    }
  }
  box.appendChild(table);
}

// ---- panels with more than a table --------------------------------------

function renderSummary(data) {
  const box = document.getElementById("summary");
  box.replaceChildren();
  const row = data.rows[0] || {};
  for (const c of data.columns) {
    const card = el("div", { class: "card", "data-key": c.key });
    card.appendChild(el("div", { class: "label" }, c.label));
    const shown = c.type === "money" ? unitMoney(row[c.key]) : c.type === "ratio" ? percent(row[c.key]) : c.type === "int" ? count(row[c.key]) : cell(row[c.key], c.type);
    const v = el("div", { class: "value", title: String(row[c.key] ?? "") }, shown);
    v.dataset.exact = row[c.key] ?? "";
    card.appendChild(v);
    box.appendChild(card);
  }
}

const PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];

function drawChart(id, config) {
  if (!window.Chart) return;
  if (charts[id]) charts[id].destroy();
  const canvas = document.getElementById(id);
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
  charts[id] = new Chart(canvas, config);
  canvas.dataset.rendered = "1";
}

const moneyTicks = { callback: (v) => "$" + Number(v).toLocaleString(undefined, { maximumFractionDigits: 2 }) };
const moneyTooltip = { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${cents(String(ctx.raw))}` } };

function renderSpendOverTime(data) {
  const dim = data.stack_by;
  const labels = [...new Set(data.rows.map((r) => r.bucket))].sort();
  const groups = [...new Set(data.rows.map((r) => r[dim] ?? UNTAGGED))];
  const datasets = groups.map((g, i) => ({
    label: g,
    backgroundColor: PALETTE[i % PALETTE.length],
    data: labels.map((b) => {
      const row = data.rows.find((r) => r.bucket === b && (r[dim] ?? UNTAGGED) === g);
      return row ? Number(row.cost) : 0;
    }),
  }));
  drawChart("chart-spend", {
    type: "bar",
    data: { labels: labels.map((b) => b.replace("T00:00:00Z", "").replace(":00:00Z", "h").replace("T", " ")), datasets },
    options: { scales: { x: { stacked: true }, y: { stacked: true, ticks: moneyTicks } }, plugins: { tooltip: moneyTooltip } },
  });
}

function renderDaily(section, data) {
  const f = data.forecast;
  const p = section.querySelector(".forecast");
  p.replaceChildren();
  if (f) {
    p.append("Month to date ", el("b", { "data-exact": f.spent_to_date, class: "mtd" }, cents(f.spent_to_date)),
      " · forecast for the month ", el("b", { "data-exact": f.forecast, class: "forecast-value" }, cents(f.forecast)),
      ` (${f.month})`);
  }
  drawChart("chart-daily", {
    data: {
      labels: data.rows.map((r) => r.day),
      datasets: [
        { type: "bar", label: "daily spend", data: data.rows.map((r) => Number(r.cost)), backgroundColor: PALETTE[0] },
        { type: "line", label: "trailing 7-day average", data: data.rows.map((r) => (r.avg_7d === null ? null : Number(r.avg_7d))), borderColor: PALETTE[1], backgroundColor: PALETTE[1], tension: 0.2 },
      ],
    },
    options: { scales: { y: { ticks: moneyTicks } }, plugins: { tooltip: moneyTooltip } },
  });
}

function renderTierMix(section, data) {
  if (data.status === "not_configured") { section.querySelector(".chart").hidden = true; return; }
  section.querySelector(".chart").hidden = false;
  section.querySelector(".headline").textContent = data.headline || "";
  drawChart("chart-tiers", {
    type: "doughnut",
    data: { labels: data.rows.map((r) => r.tier), datasets: [{ data: data.rows.map((r) => Number(r.cost)), backgroundColor: PALETTE }] },
    options: { plugins: { tooltip: { callbacks: { label: (ctx) => `${ctx.label}: ${cents(String(ctx.raw))}` } } } },
  });
}

// ---- filters ---------------------------------------------------------------

function toLocalInput(iso) { return iso ? iso.replace("Z", "").slice(0, 16) : ""; }

async function setupFilters(meta) {
  const form = document.getElementById("filters");
  const p = currentParams();
  const range = p.get("since") || p.get("until") ? "custom" : p.get("range") || meta.default_range;
  form.range.value = range;
  form.classList.toggle("show-custom", range === "custom");
  form.since.value = toLocalInput(p.get("since"));
  form.until.value = toLocalInput(p.get("until"));
  const dims = await fetchView("dimensions");
  const box = document.getElementById("tag-filters");
  box.replaceChildren();
  for (const dim of FILTER_DIMS) {
    const label = el("label", {}, dim + " ");
    const select = el("select", { name: dim, id: "f-" + dim });
    select.appendChild(el("option", { value: "" }, "any"));
    for (const v of dims.values[dim] || []) select.appendChild(el("option", { value: v === null ? UNTAGGED : v }, v === null ? UNTAGGED : v));
    const chosen = p.get(dim);
    if (chosen && ![...select.options].some((o) => o.value === chosen)) select.appendChild(el("option", { value: chosen }, chosen));
    select.value = chosen || "";
    label.appendChild(select);
    box.appendChild(label);
  }
  // any other dimension, or a free-form tag as tag:NAME (typed; the list only suggests)
  document.getElementById("extra-dims").replaceChildren(...OTHER_DIMS.map((d) => el("option", { value: d })));
  const extra = document.getElementById("f-extra-dim");
  const setExtra = [...p.keys()].find((d) => OTHER_DIMS.includes(d) || d.startsWith("tag:"));
  extra.value = setExtra || "";
  if (setExtra) document.getElementById("f-extra-value").value = p.get(setExtra);
}

function readFilters() {
  const form = document.getElementById("filters");
  const p = new URLSearchParams();
  for (const k of ["stack_by", "dim"]) if (currentParams().get(k)) p.set(k, currentParams().get(k));
  if (form.range.value === "custom") {
    if (form.since.value) p.set("since", form.since.value + ":00Z");
    if (form.until.value) p.set("until", form.until.value + ":00Z");
  } else {
    p.set("range", form.range.value);
  }
  for (const dim of FILTER_DIMS) if (form[dim] && form[dim].value) p.set(dim, form[dim].value);
  const extraValue = document.getElementById("f-extra-value").value.trim();
  const extraDim = document.getElementById("f-extra-dim").value.trim();
  if (extraValue && extraDim) p.set(extraDim, extraValue);
  return p;
}

function navigate(params) {
  history.replaceState(null, "", "/dashboard?" + params.toString());
  refresh();
}

// ---- loading -------------------------------------------------------------

async function loadPanel(section) {
  const view = section.dataset.view;
  const extra = {};
  if (view === "spend_over_time") extra.stack_by = document.getElementById("stack-by").value;
  if (view === "top_drivers") extra.dim = document.getElementById("driver-dim").value;
  const data = await fetchView(view, extra);
  if (view === "summary") return renderSummary(data);
  renderTable(section, data, extra);
  if (view === "spend_over_time") renderSpendOverTime(data);
  if (view === "daily_spend") renderDaily(section, data);
  if (view === "tier_mix") renderTierMix(section, data);
  const headline = section.querySelector(".headline");
  if (headline && data.headline !== undefined) headline.textContent = data.headline;
}

async function refresh() {
  const status = document.getElementById("status");
  status.className = "status";
  status.textContent = "loading…";
  document.body.dataset.loaded = "";
  const panels = [...document.querySelectorAll("[data-view]")].filter((s) => s.tagName === "SECTION");
  const results = await Promise.allSettled(panels.map(loadPanel));
  const failed = results.filter((r) => r.status === "rejected");
  if (failed.length) {
    status.className = "status error";
    status.textContent = failed[0].reason.message;
  } else {
    const p = currentParams();
    status.textContent = "updated " + new Date().toLocaleTimeString() + (p.get("range") ? " · " + p.get("range") : "");
  }
  document.body.dataset.loaded = String(Date.now());
}

async function main() {
  const meta = await fetchView("meta");
  const p = currentParams();
  if (p.get("stack_by")) document.getElementById("stack-by").value = p.get("stack_by");
  if (p.get("dim")) document.getElementById("driver-dim").value = p.get("dim");
  await setupFilters(meta);
  const form = document.getElementById("filters");
  form.range.addEventListener("change", () => {
    form.classList.toggle("show-custom", form.range.value === "custom");
    if (form.range.value !== "custom") navigate(readFilters());
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); navigate(readFilters()); });
  form.addEventListener("change", (e) => { if (FILTER_DIMS.includes(e.target.name)) navigate(readFilters()); });
  document.getElementById("f-clear").addEventListener("click", () => {
    document.getElementById("f-extra-value").value = "";
    for (const dim of FILTER_DIMS) form[dim].value = "";
    navigate(readFilters());
  });
  for (const [id, key] of [["stack-by", "stack_by"], ["driver-dim", "dim"]]) {
    document.getElementById(id).addEventListener("change", (e) => {
      const q = currentParams();
      q.set(key, e.target.value);
      history.replaceState(null, "", "/dashboard?" + q.toString());
      loadPanel(e.target.closest("section")).catch((err) => { document.getElementById("status").textContent = err.message; });
    });
  }
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  main().catch((err) => {
    const status = document.getElementById("status");
    status.className = "status error";
    status.textContent = err.message;
  });
});
