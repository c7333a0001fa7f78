// The provider console: publish, change and withdraw offers; leases.
import {
  api, el, showError, showOk, clearMsg, timeEl, fillTable, loadCatalog, classLabel,
  fillSelect, tokenBox, busy, getToken,
} from "./api.js";

const $ = (id) => document.getElementById(id);
const ROLE = "provider";
const ME_KEY = "computebroker.provider.id";
const KNOWN_KEY = "computebroker.provider.offers"; // ids of offers published here
const PRICE_RE = /^\d{1,7}(\.\d{1,4})?$/;

function store(key, value) {
  try {
    if (value === undefined) return JSON.parse(localStorage.getItem(key) || "null");
    localStorage.setItem(key, JSON.stringify(value));
  } catch {
    return null;
  }
  return value;
}

const me = () => store(ME_KEY) || "";
function setMe(id) {
  if (!id || id === me()) return;
  store(ME_KEY, id);
  $("me-form").elements.provider_id.value = id;
}
const known = () => new Set(store(KNOWN_KEY) || []);
function remember(id, keep = true) {
  const k = known();
  if (keep) k.add(id);
  else k.delete(id);
  store(KNOWN_KEY, [...k]);
}

// ---------- offers ----------

// All listed offers of this provider, plus the offers published here.
async function myOffers() {
  const mine = new Map();
  const id = me();
  if (id) {
    let cursor = "";
    for (let page = 0; page < 20; page++) {
      const res = await api("/api/v1/offers", { query: { limit: 500, cursor } });
      for (const o of res.offers) if (o.provider_id === id) mine.set(o.id, o);
      cursor = res.next_cursor;
      if (!cursor) break;
    }
  }
  const extra = [...known()].filter((oid) => !mine.has(oid));
  const got = await Promise.allSettled(extra.map((oid) => api("/api/v1/offers/" + encodeURIComponent(oid))));
  got.forEach((r, i) => {
    if (r.status === "fulfilled") {
      if (id && r.value.provider_id !== id) return;
      mine.set(r.value.id, r.value);
      if (r.value.status === "deleted") remember(r.value.id, false); // shown once more, then forgotten
    } else if (r.reason && r.reason.status === 404) {
      remember(extra[i], false);
    }
  });
  return [...mine.values()].sort((a, b) =>
    a.resource_class.localeCompare(b.resource_class) || a.region.localeCompare(b.region) || a.id.localeCompare(b.id));
}

async function loadOffers() {
  const msg = $("offers-msg");
  try {
    const offers = await myOffers();
    clearMsg(msg);
    if (!offers.length) {
      fillTable($("offers"), [], [], me() ? "No offers yet." : "Publish an offer or enter your provider id to see your offers.");
      return;
    }
    $("offers").replaceChildren(...offers.map(offerRow));
  } catch (e) {
    showError(msg, e);
  }
}

function offerRow(o) {
  const live = o.status === "active";
  const price = el("input", { value: o.price, inputmode: "decimal", pattern: PRICE_RE.source, required: true, "aria-label": `New price of ${o.id}`, size: "9", disabled: !live });
  const units = el("input", { type: "number", value: String(o.units), min: "1", max: "1000000", step: "1", required: true, "aria-label": `New units of ${o.id}`, disabled: !live });
  const save = el("button", { type: "button", class: "small", disabled: !live, onclick: () => patchOffer(o, price, units, save) }, "Save");
  const del = el("button", { type: "button", class: "small danger", disabled: !live, onclick: () => deleteOffer(o, del) }, "Delete");
  return el("tr", {},
    el("td", {}, el("span", { class: "id" }, o.id)),
    el("td", {}, `${o.resource_class} · ${o.region}`),
    el("td", {}, el("span", { class: "badge " + o.status }, o.status)),
    el("td", { class: "num" }, price),
    el("td", { class: "num" }, units),
    el("td", { class: "num" }, String(o.units_free)),
    el("td", { class: "num" }, String(o.max_hours)),
    el("td", { class: "num" }, String(o.version)),
    el("td", {}, timeEl(o.updated_at)),
    el("td", {}, el("div", { class: "buttons" }, save, del)),
  );
}

async function patchOffer(o, priceInput, unitsInput, button) {
  const msg = $("offers-msg");
  const body = {};
  const p = priceInput.value.trim();
  if (p !== o.price) {
    if (!PRICE_RE.test(p)) {
      priceInput.focus();
      showError(msg, new Error(`Price must be a decimal like 21.50 with at most 4 decimal places.`));
      return;
    }
    body.price = p;
  }
  const u = Number.parseInt(unitsInput.value, 10);
  if (String(u) !== unitsInput.value.trim() || u < 1) {
    unitsInput.focus();
    showError(msg, new Error("Units must be a whole number of at least 1."));
    return;
  }
  if (u !== o.units) body.units = u;
  if (!Object.keys(body).length) {
    showOk(msg, `Nothing to change on ${o.id}.`);
    return;
  }
  button.disabled = true;
  try {
    const n = await api("/api/v1/offers/" + encodeURIComponent(o.id), { method: "PATCH", role: ROLE, body });
    showOk(msg, `Offer ${n.id} now at ${n.price} with ${n.units} units (version ${n.version}).`);
    await loadOffers();
  } catch (e) {
    showError(msg, e);
  } finally {
    button.disabled = false;
  }
}

async function deleteOffer(o, button) {
  if (!confirm(`Withdraw offer ${o.id} (${o.resource_class}, ${o.region})? Leases already made stand.`)) return;
  const msg = $("offers-msg");
  button.disabled = true;
  try {
    await api("/api/v1/offers/" + encodeURIComponent(o.id), { method: "DELETE", role: ROLE });
    remember(o.id, false);
    showOk(msg, `Offer ${o.id} withdrawn.`);
    await loadOffers();
  } catch (e) {
    showError(msg, e);
    button.disabled = false;
  }
}

async function onNewOffer(ev) {
  ev.preventDefault();
  const form = ev.target;
  if (!form.reportValidity()) return;
  const f = form.elements;
  const msg = $("new-msg");
  const body = {
    resource_class: f.resource_class.value,
    region: f.region.value,
    units: Number.parseInt(f.units.value, 10),
    price: f.price.value.trim(),
  };
  if (f.max_hours.value) body.max_hours = Number.parseInt(f.max_hours.value, 10);
  const specs = f.specs.value.trim();
  if (specs) {
    try {
      body.specs = JSON.parse(specs);
    } catch (e) {
      showError(msg, new Error("Specs must be a JSON object: " + e.message));
      return;
    }
    if (!body.specs || typeof body.specs !== "object" || Array.isArray(body.specs)) {
      showError(msg, new Error("Specs must be a JSON object."));
      return;
    }
  }
  await busy(form, async () => {
    try {
      const o = await api("/api/v1/offers", { method: "POST", role: ROLE, body });
      remember(o.id);
      setMe(o.provider_id);
      showOk(msg, `Published ${o.id}: ${o.units} × ${o.resource_class} in ${o.region} at ${o.price} CNY per unit-hour.`);
      await loadOffers();
    } catch (e) {
      showError(msg, e);
    }
  });
}

// ---------- leases ----------

async function loadLeases() {
  const msg = $("leases-msg");
  if (!getToken(ROLE)) {
    fillTable($("leases"), [], [], "Save your provider token to see your leases.");
    return;
  }
  try {
    const { leases } = await api("/api/v1/leases", { role: ROLE });
    clearMsg(msg);
    if (leases.length && !me()) {
      setMe(leases[0].provider_id);
      loadOffers();
    }
    fillTable($("leases"), [
      { value: (l) => el("span", { class: "id" }, l.id) },
      { value: (l) => el("span", { class: "id" }, l.order_id) },
      { value: (l) => el("span", { class: "id" }, l.offer_id) },
      { value: (l) => el("span", { class: "id" }, l.sme_id) },
      { value: (l) => `${l.resource_class} · ${l.region}` },
      { value: (l) => `${l.units} × ${l.hours}`, num: true },
      { value: (l) => l.unit_price, num: true },
      { value: (l) => el("span", { class: "badge " + l.status }, l.status) },
      { value: (l) => timeEl(l.created_at) },
    ], leases, "No leases yet.");
  } catch (e) {
    showError(msg, e);
  }
}

// ---------- start ----------

async function init() {
  tokenBox($("token-form"), ROLE);
  $("me-form").elements.provider_id.value = me();
  $("me-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    store(ME_KEY, ev.target.elements.provider_id.value.trim());
    loadOffers();
  });
  document.addEventListener("tokenchange", loadLeases);
  $("new-offer").addEventListener("submit", onNewOffer);
  $("offers-refresh").addEventListener("click", loadOffers);
  $("leases-refresh").addEventListener("click", loadLeases);
  loadOffers();
  loadLeases();
  try {
    const cat = await loadCatalog();
    fillSelect($("new-offer").elements.resource_class, cat.classes.map((c) => ({ value: c.id, label: classLabel(c) })));
    fillSelect($("new-offer").elements.region, cat.regions.map((r) => ({ value: r.id, label: r.name || r.id })));
  } catch (e) {
    showError($("new-msg"), e);
  }
}

init();
