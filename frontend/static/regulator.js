// The regulator dashboard: providers, programmes, vouchers, trades, analytics.
import {
  api, el, showError, showOk, clearMsg, timeEl, fillTable, loadCatalog, classLabel,
  fillSelect, tokenBox, busy, getToken, localToRFC3339, splitList,
} from "./api.js";
import { initAnalytics } from "./analytics.js";

const $ = (id) => document.getElementById(id);
const ROLE = "regulator";
const PROGRAMS_KEY = "computebroker.regulator.programs"; // programmes opened here, for the voucher form

const badge = (s) => el("span", { class: "badge " + s }, s);
const id = (s) => el("span", { class: "id" }, s);
const noToken = (tbody, what) => fillTable(tbody, [], [], `Save your regulator token to see ${what}.`);

// ---------- providers ----------

async function loadProviders() {
  const msg = $("providers-msg");
  if (!getToken(ROLE)) return noToken($("providers"), "providers");
  try {
    const { providers } = await api("/api/v1/providers", { role: ROLE });
    clearMsg(msg);
    fillTable($("providers"), [
      { value: (p) => p.name },
      { value: (p) => id(p.id) },
      { value: (p) => badge(p.status || "pending") },
      { value: (p) => p.region },
      { value: (p) => [p.size, p.startup ? "startup" : ""].filter(Boolean).join(", ") },
      { value: (p) => p.certifications.join(", ") },
      { value: (p) => p.related_party_keys.join(", ") },
      { value: (p) => timeEl(p.created_at) },
      { value: (p) => el("div", { class: "buttons" },
        el("button", { type: "button", class: "small", disabled: p.status === "approved", onclick: (ev) => setStatus(p, "approve", ev.target) }, "Approve"),
        el("button", { type: "button", class: "small danger", disabled: p.status === "suspended", onclick: (ev) => setStatus(p, "suspend", ev.target) }, "Suspend")) },
    ], providers, "No providers yet.");
  } catch (e) {
    showError(msg, e);
  }
}

async function setStatus(p, action, button) {
  if (action === "suspend" && !confirm(`Suspend ${p.name} (${p.id})? Its offers stop being listed and matched.`)) return;
  const msg = $("providers-msg");
  button.disabled = true;
  try {
    const r = await api(`/api/v1/providers/${encodeURIComponent(p.id)}/${action}`, { method: "POST", role: ROLE });
    showOk(msg, `${p.name} (${r.id}) is now ${r.status}.`);
    await loadProviders();
  } catch (e) {
    showError(msg, e);
    button.disabled = false;
  }
}

// ---------- programmes ----------

function programs() {
  try {
    return JSON.parse(localStorage.getItem(PROGRAMS_KEY) || "[]");
  } catch {
    return [];
  }
}

function renderPrograms() {
  $("programs").replaceChildren(...programs().map((p) => el("option", { value: p.id }, `${p.name} (${p.rate}, to ${p.valid_to})`)));
}

function rememberProgram(p) {
  const list = programs().filter((x) => x.id !== p.id);
  list.unshift({ id: p.id, name: p.name, rate: p.rate, valid_to: p.valid_to });
  try {
    localStorage.setItem(PROGRAMS_KEY, JSON.stringify(list.slice(0, 50)));
  } catch {
    /* not remembered */
  }
  renderPrograms();
}

async function onNewProgram(ev) {
  ev.preventDefault();
  const form = ev.target;
  if (!form.reportValidity()) return;
  const f = form.elements;
  const msg = $("program-msg");
  const body = {
    name: f.name.value.trim(),
    rate: f.rate.value.trim(),
    annual_cap_per_company: f.annual_cap_per_company.value.trim(),
    budget: f.budget.value.trim(),
    valid_from: localToRFC3339(f.valid_from.value),
    valid_to: localToRFC3339(f.valid_to.value),
    resource_classes: [...$("program-classes").querySelectorAll("input:checked")].map((i) => i.value),
    regions: [...$("program-regions").querySelectorAll("input:checked")].map((i) => i.value),
    providers: splitList(f.providers.value),
  };
  for (const k of ["domestic_rate", "startup_rate", "per_order_cap"]) {
    const v = f[k].value.trim();
    if (v) body[k] = v;
  }
  await busy(form, async () => {
    try {
      const p = await api("/api/v1/programs", { method: "POST", role: ROLE, body });
      rememberProgram(p);
      $("new-voucher").elements.program_id.value = p.id;
      const extras = [
        p.domestic_rate && `domestic ${p.domestic_rate}`,
        p.startup_rate && `startup ${p.startup_rate}`,
        p.per_order_cap && `per-order cap ${p.per_order_cap}`,
      ].filter(Boolean);
      showOk(msg, el("strong", {}, `Programme ${p.id} opened.`),
        ` Rate ${p.rate}${extras.length ? " (" + extras.join(", ") + ")" : ""}; budget ${p.budget} CNY; annual cap per company ${p.annual_cap_per_company} CNY; valid ${p.valid_from} to ${p.valid_to}.`);
    } catch (e) {
      showError(msg, e);
    }
  });
}

// ---------- vouchers ----------

async function onNewVoucher(ev) {
  ev.preventDefault();
  const form = ev.target;
  if (!form.reportValidity()) return;
  const f = form.elements;
  const msg = $("voucher-msg");
  const body = { program_id: f.program_id.value.trim(), holder_id: f.holder_id.value.trim(), amount: f.amount.value.trim() };
  const exp = localToRFC3339(f.expires_at.value);
  if (exp) body.expires_at = exp;
  await busy(form, async () => {
    try {
      const v = await api("/api/v1/vouchers", { method: "POST", role: ROLE, body });
      showOk(msg, el("strong", {}, `Voucher ${v.id} issued`), ` to ${v.holder_id}: ${v.amount} CNY of programme ${v.program_id}, expires ${v.expires_at}.`);
      f.holder_id.value = "";
      loadVouchers();
    } catch (e) {
      showError(msg, e);
    }
  });
}

async function loadVouchers() {
  const msg = $("vouchers-msg");
  if (!getToken(ROLE)) return noToken($("vouchers"), "vouchers");
  try {
    const { vouchers } = await api("/api/v1/vouchers", { role: ROLE });
    clearMsg(msg);
    fillTable($("vouchers"), [
      { value: (v) => id(v.id) },
      { value: (v) => id(v.program_id) },
      { value: (v) => id(v.holder_id) },
      { value: (v) => v.amount, num: true },
      { value: (v) => el("strong", {}, v.balance), num: true },
      { value: (v) => timeEl(v.expires_at) },
      { value: (v) => timeEl(v.created_at) },
    ], vouchers, "No vouchers issued.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- trades ----------

const tradeColumns = [
  { value: (t) => timeEl(t.ts) },
  { value: (t) => id(t.id) },
  { value: (t) => id(t.provider_id) },
  { value: (t) => id(t.sme_id) },
  { value: (t) => `${t.resource_class} · ${t.region}` },
  { value: (t) => `${t.units} × ${t.hours}`, num: true },
  { value: (t) => t.unit_price, num: true },
  { value: (t) => t.gross, num: true },
  { value: (t) => t.discount, num: true },
  { value: (t) => el("strong", {}, t.net), num: true },
  { value: (t) => (t.program_id ? id(t.program_id) : "") },
];

let trades = [];
let nextCursor = "";

function tradeQuery() {
  const f = $("trade-filters").elements;
  return {
    from: localToRFC3339(f.from.value),
    to: localToRFC3339(f.to.value),
    resource_class: f.resource_class.value,
    region: f.region.value,
    limit: f.limit.value,
  };
}

function updateCSVLink() {
  const url = new URL("/api/v1/analytics/trades", location.origin);
  for (const [k, v] of Object.entries({ ...tradeQuery(), format: "csv" })) if (v) url.searchParams.set(k, v);
  $("csv").href = url.pathname + url.search;
}

async function loadTrades(more = false) {
  const msg = $("trades-msg");
  if (!getToken(ROLE)) {
    $("trades-more").hidden = true;
    return noToken($("trades"), "trades");
  }
  const button = more ? $("trades-more") : $("trade-filters").querySelector("button");
  button.disabled = true;
  try {
    const page = await api("/api/v1/analytics/trades", { role: ROLE, query: { ...tradeQuery(), cursor: more ? nextCursor : "" } });
    clearMsg(msg);
    trades = more ? trades.concat(page.trades) : page.trades;
    nextCursor = page.next_cursor || "";
    fillTable($("trades"), tradeColumns, trades, "No trades match.");
    $("trades-more").hidden = !nextCursor;
  } catch (e) {
    showError(msg, e);
  } finally {
    button.disabled = false;
  }
}

// The CSV link carries the filters; clicking it fetches with the bearer
// token (a plain link could not send it) and saves the file.
async function downloadCSV(ev) {
  ev.preventDefault();
  const msg = $("trades-msg");
  updateCSVLink();
  try {
    const res = await api($("csv").getAttribute("href"), { role: ROLE, raw: true, headers: { Accept: "text/csv" } });
    const blob = await res.blob();
    const href = URL.createObjectURL(blob);
    const a = el("a", { href, download: "trades.csv", hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(href), 10000);
    const next = res.headers.get("X-Next-Cursor");
    if (next) showOk(msg, "Downloaded one page of trades; raise the page size (up to 1000) or narrow the time range for the rest.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- start ----------

function pad(n) {
  return String(n).padStart(2, "0");
}
function localInput(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function init() {
  tokenBox($("token-form"), ROLE);
  const refreshAll = () => {
    loadProviders();
    loadVouchers();
    loadTrades();
  };
  document.addEventListener("tokenchange", refreshAll);
  $("providers-refresh").addEventListener("click", loadProviders);
  $("vouchers-refresh").addEventListener("click", loadVouchers);
  $("new-program").addEventListener("submit", onNewProgram);
  $("new-voucher").addEventListener("submit", onNewVoucher);
  $("trade-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    updateCSVLink();
    loadTrades();
  });
  $("trade-filters").addEventListener("change", updateCSVLink);
  $("trades-more").addEventListener("click", () => loadTrades(true));
  $("csv").addEventListener("click", downloadCSV);
  const now = new Date();
  const f = $("new-program").elements;
  f.valid_from.value = localInput(now);
  f.valid_to.value = localInput(new Date(now.getFullYear() + 1, now.getMonth(), now.getDate(), now.getHours(), now.getMinutes()));
  renderPrograms();
  updateCSVLink();
  refreshAll();
  initAnalytics();
  try {
    const cat = await loadCatalog();
    const tf = $("trade-filters").elements;
    fillSelect(tf.resource_class, cat.classes.map((c) => ({ value: c.id, label: classLabel(c) })), ["", "All classes"]);
    fillSelect(tf.region, cat.regions.map((r) => ({ value: r.id, label: r.name || r.id })), ["", "All regions"]);
    const box = (name) => (x, label) => el("label", {}, el("input", { type: "checkbox", name, value: x.id }), label);
    $("program-classes").append(...cat.classes.map((c) => box("resource_classes")(c, c.id)));
    $("program-regions").append(...cat.regions.map((r) => box("regions")(r, r.id)));
  } catch (e) {
    showError($("program-msg"), e);
  }
}

init();
