// The analytics section of the regulator dashboard: price index (chart and
// table), OHLC candles, provider concentration, subsidies, programme budgets,
// capacity listed and sold, and alerts.
// Prices, shares and money stay the decimal strings the API sends; the only
// float conversion is a vwap turned into a pixel position for the chart.
import {
  api, el, showError, clearMsg, timeEl, fillTable, loadCatalog, classLabel,
  fillSelect, getToken, localToRFC3339, cmpDecimal,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const ROLE = "regulator";
const id = (s) => el("span", { class: "id" }, s);
const badge = (s) => el("span", { class: "badge " + s }, s);

/** "0.2534" → "25.34 %", by moving the decimal point in the string. */
function percent(fraction) {
  const [i, f = ""] = String(fraction).split(".");
  const frac = f.padEnd(2, "0");
  const int = (i + frac.slice(0, 2)).replace(/^0+(?=\d)/, "");
  const rest = frac.slice(2);
  return `${int}${rest ? "." + rest : ""} %`;
}

/** The HHI band (US merger guidelines, 2010): compared as decimal strings. */
function hhiLevel(hhi) {
  if (cmpDecimal(hhi, "2500") > 0) return ["highly concentrated", "high"];
  if (cmpDecimal(hhi, "1500") >= 0) return ["moderately concentrated", "moderate"];
  return ["unconcentrated", "low"];
}

function query() {
  const f = $("analytics-filters").elements;
  return {
    from: localToRFC3339(f.from.value),
    to: localToRFC3339(f.to.value),
    resource_class: f.resource_class.value,
    region: f.region.value,
  };
}
const interval = () => $("analytics-filters").elements.interval.value;

function noToken() {
  const text = "Save your regulator token to see analytics.";
  for (const t of ["pi-rows", "ohlc-rows", "conc-rows", "sub-rows", "budget-rows", "cap-rows", "alerts-rows"]) fillTable($(t), [], [], text);
  drawChart([]);
  $("conc-hhi").textContent = $("conc-cr4").textContent = $("sub-gini").textContent = "—";
  $("conc-level").replaceChildren();
}

// ---------- price index ----------

const SVG_H = 220;
let SVG_W = 640; // follows the chart's width, so the labels stay readable on narrow screens
let lastPoints = [];
const PAD = { l: 64, r: 14, t: 14, b: 30 };

function svg(tag, attrs = {}, text) {
  const n = document.createElementNS($("pi-chart").namespaceURI, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

function bucketLabel(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const opts = interval() === "1d" ? { dateStyle: "short" } : { month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return d.toLocaleString(undefined, opts);
}

function drawChart(points) {
  const chart = $("pi-chart");
  lastPoints = points;
  chart.closest("figure").hidden = !points.length;
  SVG_W = Math.round(Math.min(900, Math.max(300, chart.clientWidth || chart.closest("section").clientWidth || 640)));
  chart.setAttribute("viewBox", `0 0 ${SVG_W} ${SVG_H}`);
  const keep = [$("pi-chart-title"), $("pi-chart-desc")];
  chart.replaceChildren(...keep);
  if (!points.length) {
    $("pi-chart-desc").textContent = "No trades in the selected range.";
    return;
  }
  // Lowest and highest vwap, picked as strings (exact), shown as given.
  let lo = points[0].vwap, hi = points[0].vwap;
  for (const p of points) {
    if (cmpDecimal(p.vwap, lo) < 0) lo = p.vwap;
    if (cmpDecimal(p.vwap, hi) > 0) hi = p.vwap;
  }
  const first = points[0], last = points[points.length - 1];
  $("pi-chart-desc").textContent =
    `${points.length} bucket${points.length === 1 ? "" : "s"} from ${first.bucket} to ${last.bucket}; ` +
    `VWAP from ${lo} to ${hi} CNY; first ${first.vwap}, last ${last.vwap}. The table below lists every bucket.`;

  // Pixel positions only: here a price string becomes a number.
  const t0 = Date.parse(first.bucket), t1 = Date.parse(last.bucket);
  let y0 = Number(lo), y1 = Number(hi);
  if (y1 === y0) { y0 -= 1; y1 += 1; }
  const span = y1 - y0;
  y0 -= span * 0.08; y1 += span * 0.08;
  const x = (p) => (t1 === t0 ? (PAD.l + SVG_W - PAD.r) / 2 : PAD.l + ((Date.parse(p.bucket) - t0) / (t1 - t0)) * (SVG_W - PAD.l - PAD.r));
  const y = (v) => PAD.t + (1 - (Number(v) - y0) / (y1 - y0)) * (SVG_H - PAD.t - PAD.b);

  const g = svg("g", { "aria-hidden": "true" });
  // axes, gridlines at the lowest and highest vwap
  g.append(svg("line", { x1: PAD.l, y1: SVG_H - PAD.b, x2: SVG_W - PAD.r, y2: SVG_H - PAD.b, class: "axis" }));
  g.append(svg("line", { x1: PAD.l, y1: PAD.t, x2: PAD.l, y2: SVG_H - PAD.b, class: "axis" }));
  for (const v of lo === hi ? [lo] : [lo, hi]) {
    g.append(svg("line", { x1: PAD.l, y1: y(v), x2: SVG_W - PAD.r, y2: y(v), class: "grid" }));
    g.append(svg("text", { x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, v));
  }
  g.append(svg("text", { x: PAD.l, y: SVG_H - 8, "text-anchor": "start", class: "tick" }, bucketLabel(first.bucket)));
  if (points.length > 1) g.append(svg("text", { x: SVG_W - PAD.r, y: SVG_H - 8, "text-anchor": "end", class: "tick" }, bucketLabel(last.bucket)));
  if (points.length > 1) {
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(p).toFixed(1)},${y(p.vwap).toFixed(1)}`).join(" ");
    g.append(svg("path", { d, class: "line" }));
  }
  for (const p of points) {
    const c = svg("circle", { cx: x(p).toFixed(1), cy: y(p.vwap).toFixed(1), r: points.length > 60 ? 2 : 3.5, class: "pt" });
    c.append(svg("title", {}, `${p.bucket}: VWAP ${p.vwap} CNY, ${p.units} unit-h, ${p.trades} trade${p.trades === 1 ? "" : "s"}`));
    g.append(c);
  }
  chart.append(g);
}

async function loadPriceIndex() {
  const msg = $("pi-msg");
  $("pi-note").hidden = !!query().resource_class;
  try {
    const { points } = await api("/api/v1/analytics/price-index", { role: ROLE, query: { ...query(), interval: interval() } });
    clearMsg(msg);
    drawChart(points || []);
    fillTable($("pi-rows"), [
      { value: (p) => timeEl(p.bucket) },
      { value: (p) => el("strong", {}, p.vwap), num: true },
      { value: (p) => String(p.units), num: true },
      { value: (p) => String(p.trades), num: true },
    ], (points || []).slice().reverse(), "No trades in the selected range.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- OHLC ----------

async function loadOHLC() {
  const msg = $("ohlc-msg");
  try {
    const { candles } = await api("/api/v1/analytics/ohlc", { role: ROLE, query: { ...query(), interval: interval() } });
    clearMsg(msg);
    const dir = (c) => { const k = cmpDecimal(c.close, c.open); return k > 0 ? "up" : k < 0 ? "down" : ""; };
    fillTable($("ohlc-rows"), [
      { value: (c) => timeEl(c.bucket) },
      { value: (c) => c.open, num: true },
      { value: (c) => c.high, num: true },
      { value: (c) => c.low, num: true },
      { value: (c) => {
        const d = dir(c);
        return el("span", { class: d ? "chg " + d : null, title: d ? (d === "up" ? "closed above open" : "closed below open") : "closed at open" },
          c.close, d ? el("span", { "aria-hidden": "true" }, d === "up" ? " ▲" : " ▼") : "");
      }, num: true },
      { value: (c) => String(c.units), num: true },
    ], (candles || []).slice().reverse(), "No trades in the selected range.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- concentration ----------

async function loadConcentration() {
  const msg = $("conc-msg");
  try {
    const r = await api("/api/v1/analytics/concentration", { role: ROLE, query: { ...query(), by: $("conc-by").value } });
    clearMsg(msg);
    const shares = r.shares || [];
    $("conc-hhi").textContent = r.hhi;
    $("conc-cr4").textContent = shares.length ? `${r.cr4} (${percent(r.cr4)})` : r.cr4;
    if (shares.length) {
      const [label, cls] = hhiLevel(r.hhi);
      $("conc-level").replaceChildren(el("span", { class: "badge hhi-" + cls }, label));
    } else {
      $("conc-level").replaceChildren(el("span", { class: "muted" }, "no trades"));
    }
    fillTable($("conc-rows"), [
      { value: (s) => id(s.provider_id) },
      { value: (s) => el("span", { title: s.share }, percent(s.share)), num: true },
      // the bar width is drawing only
      { value: (s) => el("span", { class: "bar", "aria-hidden": "true" }, el("span", { style: `width:${Math.min(100, Number(s.share) * 100).toFixed(1)}%` })) },
    ], shares, "No trades in the selected range.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- subsidies ----------

const GROUP_LABELS = { region: "Region", size: "Company size", provider: "Provider", program: "Programme" };

async function loadSubsidies() {
  const msg = $("sub-msg");
  const by = $("sub-by").value;
  try {
    const r = await api("/api/v1/analytics/subsidies", { role: ROLE, query: { ...query(), group_by: by } });
    clearMsg(msg);
    $("sub-key").textContent = GROUP_LABELS[by] || by;
    $("sub-gini").textContent = r.gini;
    fillTable($("sub-rows"), [
      { value: (g) => (by === "provider" || by === "program" ? id(g.key) : g.key) },
      { value: (g) => g.gross, num: true },
      { value: (g) => el("strong", {}, g.discount), num: true },
      { value: (g) => String(g.orders), num: true },
      { value: (g) => String(g.recipients), num: true },
    ], r.groups || [], "No subsidised trades in the selected range.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- alerts ----------

const KINDS = { related_party: "Related party", round_trip: "Round trip", price_hike: "Price hike", cap_gaming: "Cap gaming" };

async function loadAlerts() {
  const msg = $("alerts-msg");
  try {
    const { alerts } = await api("/api/v1/analytics/alerts", { role: ROLE, query: query() });
    clearMsg(msg);
    fillTable($("alerts-rows"), [
      { value: (a) => el("span", { title: a.kind }, KINDS[a.kind] || a.kind) },
      { value: (a) => badge(a.severity) },
      { value: (a) => id(a.subject) },
      { value: (a) => a.detail },
      { value: (a) => timeEl(a.ts) },
    ], (alerts || []).slice().reverse(), "No alerts in the selected range.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- programme budgets ----------

async function loadBudgets() {
  const msg = $("budget-msg");
  try {
    const r = await api("/api/v1/analytics/budgets", { role: ROLE, query: { days: $("budget-days").value } });
    clearMsg(msg);
    fillTable($("budget-rows"), [
      { value: (p) => el("span", { title: p.program_id }, p.name || p.program_id) },
      { value: (p) => el("strong", {}, p.left), num: true },
      { value: (p) => p.spent, num: true },
      { value: (p) => p.burn_per_day, num: true },
      { value: runsOut },
    ], r.programs || [], "No programmes yet.");
  } catch (e) {
    showError(msg, e);
  }
}

/** When a budget runs out at its burn rate: the UTC date and the days left,
 * flagged when that is before the programme ends; far futures in words. */
function runsOut(p) {
  if (!p.exhausts_at) return "not at this rate";
  if (cmpDecimal(p.days_left, "3650") >= 0) return el("span", { title: `${p.days_left} days` }, "not within 10 years");
  return el("span", { title: p.exhausts_at },
    p.exhausts_at.slice(0, 10), ` (${p.days_left} days)`,
    p.exhausts_before_end && " ", p.exhausts_before_end && el("span", { class: "badge high" }, "before its end"));
}

// ---------- capacity ----------

async function loadCapacity() {
  const msg = $("cap-msg");
  try {
    const { markets } = await api("/api/v1/analytics/capacity", { role: ROLE, query: query() });
    clearMsg(msg);
    fillTable($("cap-rows"), [
      { value: (m) => `${m.resource_class} · ${m.region}` },
      { value: (m) => String(m.units_listed), num: true },
      { value: (m) => String(m.units_leased), num: true },
      { value: (m) => percent(m.utilisation), num: true },
      { value: (m) => String(m.sold_unit_hours), num: true },
    ], markets || [], "No capacity listed or sold in the selected range.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- start ----------

export function loadAnalytics() {
  if (!getToken(ROLE)) return noToken();
  const form = $("analytics-filters");
  const button = form.querySelector("button");
  button.disabled = true;
  form.setAttribute("aria-busy", "true");
  return Promise.allSettled([loadPriceIndex(), loadOHLC(), loadConcentration(), loadSubsidies(), loadBudgets(), loadCapacity(), loadAlerts()]).finally(() => {
    button.disabled = false;
    form.removeAttribute("aria-busy");
  });
}

export async function initAnalytics() {
  const form = $("analytics-filters");
  const f = form.elements;
  // Filters may come in the page's query (?interval=1m&resource_class=…), so a view can be linked.
  const params = new URLSearchParams(location.search);
  const preset = (name) => {
    const v = params.get(name);
    if (v && (f[name].tagName !== "SELECT" || [...f[name].options].some((o) => o.value === v))) f[name].value = v;
  };
  ["interval", "from", "to"].forEach(preset);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (form.reportValidity()) loadAnalytics();
  });
  const onlyIf = (fn) => () => (getToken(ROLE) ? fn() : noToken());
  $("conc-by").addEventListener("change", onlyIf(loadConcentration));
  $("sub-by").addEventListener("change", onlyIf(loadSubsidies));
  $("budget-days").addEventListener("change", onlyIf(loadBudgets));
  document.addEventListener("tokenchange", () => loadAnalytics());
  let resizeTimer;
  addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => lastPoints.length && drawChart(lastPoints), 150);
  });
  try {
    const cat = await loadCatalog();
    fillSelect(f.resource_class, cat.classes.map((c) => ({ value: c.id, label: classLabel(c) })), ["", "All classes"]);
    fillSelect(f.region, cat.regions.map((r) => ({ value: r.id, label: r.name || r.id })), ["", "All regions"]);
    ["resource_class", "region"].forEach(preset);
  } catch (e) {
    showError($("pi-msg"), e);
  }
  loadAnalytics();
}
