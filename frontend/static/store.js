// The SME storefront: live offers (WebSocket, else polling), quote, order,
// my orders and vouchers.
import {
  api, el, showError, showOk, clearMsg, cmpDecimal, timeEl, fmtTime, uuid, fillTable,
  loadCatalog, classLabel, fillSelect, tokenBox, busy, getToken, ApiError,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const ROLE = "sme";
const POLL_MS = 2000;
const MAX_ROWS = 200;

let classes = new Map(); // id → resource class

// ---------- live offers ----------

const feed = {
  gen: 0, // bumped on every restart; stale callbacks compare against it
  offers: new Map(),
  ws: null,
  pollTimer: 0,
  retryTimer: 0,
  retryDelay: 5000,
  polling: false,
  fetching: new Set(),
};

function filters() {
  const f = $("filters").elements;
  return { resource_class: f.resource_class.value, region: f.region.value };
}

function setFeedState(kind, text) {
  $("feed-dot").className = "dot " + kind;
  $("feed-state").textContent = text;
}

function restartFeed() {
  feed.gen++;
  if (feed.ws) feed.ws.close();
  feed.ws = null;
  stopPolling();
  clearTimeout(feed.retryTimer);
  feed.offers.clear();
  feed.retryDelay = 5000;
  render();
  connect();
}

function connect() {
  const gen = feed.gen;
  const url = new URL("/api/v1/stream/market", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(filters())) if (v) url.searchParams.set(k, v);
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    fallBack(gen);
    return;
  }
  feed.ws = ws;
  const giveUp = setTimeout(() => ws.readyState !== WebSocket.OPEN && ws.close(), 5000);
  ws.onmessage = (ev) => {
    if (gen !== feed.gen) return;
    let m;
    try {
      m = JSON.parse(ev.data);
    } catch {
      return;
    }
    onMessage(m);
  };
  ws.onclose = () => {
    clearTimeout(giveUp);
    if (gen !== feed.gen || feed.ws !== ws) return;
    feed.ws = null;
    fallBack(gen);
  };
}

// fallBack polls until a reconnect attempt succeeds.
function fallBack(gen) {
  startPolling();
  clearTimeout(feed.retryTimer);
  feed.retryTimer = setTimeout(() => gen === feed.gen && connect(), feed.retryDelay);
  feed.retryDelay = Math.min(feed.retryDelay * 2, 60000);
}

function onMessage(m) {
  switch (m.type) {
    case "snapshot":
      stopPolling();
      feed.retryDelay = 5000;
      feed.offers = new Map((m.offers || []).map((o) => [o.id, o]));
      setFeedState("live", "Live");
      clearMsg($("market-error"));
      break;
    case "tick": {
      const o = feed.offers.get(m.offer_id);
      if (!o) {
        fetchNewOffer(m.offer_id);
        return;
      }
      if (m.version && o.version && m.version < o.version) return;
      const dir = cmpDecimal(m.price, o.price);
      if (dir) {
        o._dir = dir > 0 ? "up" : "down";
        o._dirAt = Date.now();
        setTimeout(scheduleRender, 1600);
      }
      o.price = m.price;
      o.units_free = m.units_free;
      if (m.version) o.version = m.version;
      if (m.ts) o.updated_at = m.ts;
      break;
    }
    case "remove":
      feed.offers.delete(m.offer_id);
      break;
    case "trade":
      addTrade(m);
      return;
    default:
      return;
  }
  scheduleRender();
}

// A tick may name an offer listed after the snapshot: fetch its details.
async function fetchNewOffer(id) {
  if (feed.fetching.has(id)) return;
  feed.fetching.add(id);
  const gen = feed.gen;
  try {
    const o = await api("/api/v1/offers/" + encodeURIComponent(id));
    const f = filters();
    if (gen !== feed.gen || o.status !== "active") return;
    if ((f.resource_class && o.resource_class !== f.resource_class) || (f.region && o.region !== f.region)) return;
    if (!feed.offers.has(o.id)) feed.offers.set(o.id, o);
    scheduleRender();
  } catch {
    /* the next snapshot or tick will tell */
  } finally {
    feed.fetching.delete(id);
  }
}

function addTrade(t) {
  const list = $("trades");
  if (list.firstElementChild && list.firstElementChild.classList.contains("muted")) list.replaceChildren();
  const time = timeEl(t.ts);
  list.prepend(el("li", {}, time, ` · ${t.resource_class} ${t.region} · ${t.units} × ${t.hours} h at `, el("strong", {}, t.price)));
  while (list.children.length > 15) list.lastElementChild.remove();
}

function startPolling() {
  if (feed.polling) return;
  feed.polling = true;
  setFeedState("poll", `Polling every ${POLL_MS / 1000} s`);
  poll();
}

function stopPolling() {
  feed.polling = false;
  clearTimeout(feed.pollTimer);
}

async function poll() {
  const gen = feed.gen;
  if (!document.hidden) {
    try {
      const page = await api("/api/v1/offers", { query: { ...filters(), limit: MAX_ROWS } });
      if (gen !== feed.gen || !feed.polling) return;
      const old = feed.offers;
      feed.offers = new Map(page.offers.map((o) => {
        const prev = old.get(o.id);
        if (prev) {
          const dir = cmpDecimal(o.price, prev.price);
          if (dir) Object.assign(o, { _dir: dir > 0 ? "up" : "down", _dirAt: Date.now() });
          else Object.assign(o, { _dir: prev._dir, _dirAt: prev._dirAt });
        }
        return [o.id, o];
      }));
      setFeedState("poll", `Polling every ${POLL_MS / 1000} s · updated ${new Date().toLocaleTimeString()}`);
      clearMsg($("market-error"));
      scheduleRender();
    } catch (e) {
      if (gen !== feed.gen || !feed.polling) return;
      setFeedState("down", "Offline, retrying");
      showError($("market-error"), e);
    }
  }
  if (gen === feed.gen && feed.polling) feed.pollTimer = setTimeout(poll, POLL_MS);
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

function render() {
  const all = [...feed.offers.values()].sort((a, b) => cmpDecimal(a.price, b.price) || (a.id < b.id ? -1 : 1));
  const shown = all.slice(0, MAX_ROWS);
  const now = Date.now();
  const rows = shown.map((o) => {
    const rc = classes.get(o.resource_class);
    const flash = o._dir && now - o._dirAt < 1500 ? "flash-" + o._dir : null;
    return el("tr", { class: flash },
      el("td", { class: "nowrap", title: o.resource_class }, rc ? rc.name || rc.id : o.resource_class,
        rc && rc.domestic ? el("span", { class: "badge small", title: "domestic accelerator" }, "domestic") : ""),
      el("td", { class: "nowrap" }, o.region),
      el("td", { class: "num price", title: `CNY per ${rc ? rc.unit : "unit-hour"}, updated ${fmtTime(o.updated_at)}` }, el("strong", {}, o.price)),
      el("td", { class: "num" }, `${o.units_free} / ${o.units}`),
      el("td", {}, el("span", { class: "id" }, o.provider_id)),
      el("td", { class: "num" }, String(o.max_hours)),
    );
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "empty" }, "No offers for this choice right now.")));
  $("offers").replaceChildren(...rows);
  $("offers-caption").textContent = `${all.length} offer${all.length === 1 ? "" : "s"}, cheapest first, in CNY per unit-hour` +
    (all.length > shown.length ? ` (showing ${shown.length})` : "") + ".";
}

// ---------- quote and order ----------

function jobFromForm() {
  const f = $("job").elements;
  const job = {
    resource_class: f.resource_class.value,
    regions: [...$("regions").querySelectorAll("input:checked")].map((i) => i.value),
    units: Number.parseInt(f.units.value, 10),
    hours: Number.parseInt(f.hours.value, 10),
    use_vouchers: f.use_vouchers.checked,
  };
  const max = f.max_price.value.trim();
  if (max) job.max_price = max; // sent as typed: a decimal string
  return job;
}

// The key of an order whose outcome is unknown (network error, 5xx): a
// retry of the same job reuses it, so the broker charges at most once.
let pending = null;

async function order(job) {
  const fp = JSON.stringify(job);
  const key = pending && pending.fp === fp ? pending.key : uuid();
  pending = { fp, key };
  try {
    const o = await api("/api/v1/orders", { method: "POST", role: ROLE, body: job, headers: { "Idempotency-Key": key } });
    pending = null;
    return o;
  } catch (e) {
    const unknown = e instanceof ApiError && (e.code === "network" || e.code === "conflict" || e.status >= 500);
    if (!unknown) pending = null;
    throw e;
  }
}

function money(v) {
  return v === undefined || v === null ? "—" : v;
}

function showQuote(q) {
  const box = $("quote");
  const rc = classes.get(q.resource_class);
  const unit = rc ? rc.unit : "unit-hour";
  box.replaceChildren(
    el("h3", {}, "Best offer"),
    el("dl", {},
      el("dt", {}, "Offer"), el("dd", {}, el("span", { class: "id" }, q.offer_id), ` from `, el("span", { class: "id" }, q.provider_id), ` in ${q.region}`),
      el("dt", {}, "Unit price"), el("dd", {}, `${q.unit_price} CNY per ${unit}`),
      el("dt", {}, "Quantity"), el("dd", {}, `${q.units} × ${q.hours} h`),
      el("dt", {}, "Gross"), el("dd", {}, `${money(q.gross)} CNY`),
      el("dt", {}, "Voucher discount"), el("dd", {}, `− ${money(q.discount)} CNY`, q.voucher_id ? el("span", { class: "muted small" }, ` (voucher ${q.voucher_id})`) : el("span", { class: "muted small" }, " (no voucher applies)")),
      el("dt", {}, "You pay"), el("dd", { class: "net" }, `${money(q.net)} CNY`),
    ),
    el("p", { class: "small muted" }, "Nothing is reserved by a quote. An order takes the best eligible offer at checkout."),
  );
  const alts = q.alternatives || [];
  if (alts.length) {
    const tbody = el("tbody");
    fillTable(tbody, [
      { value: (a) => el("span", { class: "id" }, a.provider_id) },
      { value: (a) => a.region },
      { value: (a) => a.unit_price, num: true },
      { value: (a) => a.gross, num: true },
      { value: (a) => a.discount, num: true },
      { value: (a) => el("strong", {}, a.net), num: true },
    ], alts);
    box.append(el("h3", {}, "Alternatives"), el("div", { class: "table-wrap" }, el("table", {},
      el("thead", {}, el("tr", {}, ["Provider", "Region", "Unit price", "Gross", "Discount", "Net"].map((h, i) =>
        el("th", { scope: "col", class: i >= 2 ? "num" : null }, h)))),
      tbody)));
  }
}

function showOrder(o) {
  const box = $("quote");
  box.replaceChildren();
  showOk($("job-msg"),
    el("strong", {}, `Order ${o.id}: ${o.status}.`),
    o.status === "filled"
      ? ` ${o.units} × ${o.hours} h of ${o.resource_class} in ${o.region} at ${o.unit_price}; gross ${o.gross}, discount ${o.discount}, you pay ${o.net} CNY. Lease ${o.lease_id}.`
      : "",
  );
  loadOrders();
  loadVouchers();
}

async function onJobSubmit(ev) {
  ev.preventDefault();
  const form = ev.target;
  const action = ev.submitter ? ev.submitter.value : "quote";
  if (!form.reportValidity()) return;
  const msg = $("job-msg");
  clearMsg(msg);
  const job = jobFromForm();
  await busy(form, async () => {
    try {
      if (action === "order") showOrder(await order(job));
      else showQuote(await api("/api/v1/quotes", { method: "POST", role: ROLE, body: job }));
    } catch (e) {
      if (action === "quote") $("quote").replaceChildren();
      showError(msg, e);
      if (pending && action === "order") msg.append(el("p", {}, "The outcome is unknown; ordering the same job again is safe (same Idempotency-Key)."));
    }
  });
}

// ---------- my orders and vouchers ----------

const badge = (s) => el("span", { class: "badge " + s }, s);

async function loadOrders() {
  const msg = $("orders-msg");
  if (!getToken(ROLE)) {
    fillTable($("orders"), [], [], "Save your SME token to see your orders.");
    return;
  }
  try {
    const { orders } = await api("/api/v1/orders", { role: ROLE });
    clearMsg(msg);
    fillTable($("orders"), [
      { value: (o) => el("span", { class: "id", title: o.voucher_id ? "voucher " + o.voucher_id : "" }, o.id) },
      { value: (o) => badge(o.status) },
      { value: (o) => `${o.resource_class}${o.region ? " · " + o.region : ""}` },
      { value: (o) => `${o.units} × ${o.hours}`, num: true },
      { value: (o) => o.unit_price, num: true },
      { value: (o) => o.gross, num: true },
      { value: (o) => o.discount, num: true },
      { value: (o) => el("strong", {}, o.net), num: true },
      { value: (o) => timeEl(o.created_at) },
    ], orders, "No orders yet.");
  } catch (e) {
    showError(msg, e);
  }
}

async function loadVouchers() {
  const msg = $("vouchers-msg");
  if (!getToken(ROLE)) {
    fillTable($("vouchers"), [], [], "Save your SME token to see your vouchers.");
    return;
  }
  try {
    const { vouchers } = await api("/api/v1/vouchers", { role: ROLE });
    clearMsg(msg);
    fillTable($("vouchers"), [
      { value: (v) => el("span", { class: "id", title: "programme " + v.program_id }, v.id) },
      { value: (v) => [el("strong", {}, v.balance), el("span", { class: "muted" }, ` / ${v.amount}`)], num: true },
      { value: (v) => el("time", { datetime: v.expires_at, title: v.expires_at }, new Date(v.expires_at).toLocaleDateString()) },
    ], vouchers, "No vouchers.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- start ----------

async function init() {
  tokenBox($("token-form"), ROLE);
  document.addEventListener("tokenchange", () => {
    loadOrders();
    loadVouchers();
  });
  $("filters").addEventListener("change", restartFeed);
  $("job").addEventListener("submit", onJobSubmit);
  $("orders-refresh").addEventListener("click", loadOrders);
  $("vouchers-refresh").addEventListener("click", loadVouchers);
  loadOrders();
  loadVouchers();
  render();
  try {
    const cat = await loadCatalog();
    classes = new Map(cat.classes.map((c) => [c.id, c]));
    const classOpts = cat.classes.map((c) => ({ value: c.id, label: classLabel(c) }));
    fillSelect($("filters").elements.resource_class, classOpts, ["", "All classes"]);
    fillSelect($("filters").elements.region, cat.regions.map((r) => ({ value: r.id, label: r.name || r.id })), ["", "All regions"]);
    fillSelect($("job").elements.resource_class, classOpts);
    $("regions").replaceChildren($("regions").querySelector("legend"),
      ...cat.regions.map((r) => el("label", {}, el("input", { type: "checkbox", value: r.id }), r.name || r.id)));
  } catch (e) {
    showError($("market-error"), e);
  }
  restartFeed();
}

init();
