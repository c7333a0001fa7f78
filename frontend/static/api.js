// Shared helpers of the broker pages: the API client, the token box, small
// DOM builders. Money and prices stay the decimal strings the API sends;
// nothing here turns them into floats.

const TOKEN_PREFIX = "computebroker.token.";
const ROLE_NAMES = { sme: "SME", provider: "provider", regulator: "regulator" };

/** An error answered by the API ({"error":{"code","message","reasons"}}) or the network. */
export class ApiError extends Error {
  constructor(status, code, message, reasons) {
    super(message);
    this.status = status;
    this.code = code;
    this.reasons = reasons || null;
  }
}

export function getToken(role) {
  try {
    return localStorage.getItem(TOKEN_PREFIX + role) || "";
  } catch {
    return "";
  }
}

export function setToken(role, token) {
  try {
    if (token) localStorage.setItem(TOKEN_PREFIX + role, token);
    else localStorage.removeItem(TOKEN_PREFIX + role);
  } catch {
    /* storage disabled: the token lives for this page only */
  }
  document.dispatchEvent(new CustomEvent("tokenchange", { detail: { role } }));
}

/**
 * Calls the API. opts: method, query (object; empty values skipped), body
 * (sent as JSON), headers, role (whose stored bearer token to send), raw
 * (return the Response instead of parsed JSON). Throws ApiError.
 */
export async function api(path, opts = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(opts.query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { Accept: "application/json", ...(opts.headers || {}) };
  if (opts.role) {
    const token = getToken(opts.role);
    if (!token) throw new ApiError(0, "unauthenticated", `No ${ROLE_NAMES[opts.role] || opts.role} token saved: enter one in the token box first.`);
    headers.Authorization = "Bearer " + token;
  }
  const init = { method: opts.method || "GET", headers };
  if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(opts.body);
  }
  let res;
  try {
    res = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, "network", "The broker could not be reached: " + (e.message || e));
  }
  if (!res.ok) throw await errorOf(res);
  if (opts.raw) return res;
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

async function errorOf(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  const e = body && body.error;
  if (e && e.message) return new ApiError(res.status, e.code || "error", e.message, e.reasons);
  let msg = `HTTP ${res.status} ${res.statusText}`.trim();
  if (res.status === 429) msg += ` — retry after ${res.headers.get("Retry-After") || "a moment"} s`;
  return new ApiError(res.status, "http_" + res.status, msg);
}

const REASONS = {
  invalid_price: "price not valid",
  provider_not_approved: "provider not approved",
  provider_suspended: "provider suspended",
  offer_inactive: "offer not active",
  wrong_class: "other resource class",
  wrong_region: "not in the chosen regions",
  too_few_units: "too few free units",
  too_few_hours: "max hours too short",
  over_max_price: "above your max price",
  missing_certifications: "missing required certifications",
};

/** Creates an element: el("td", {class: "num"}, "21.50", otherNode). */
export function el(tag, props = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") n.className = v;
    else if (k === "dataset") Object.assign(n.dataset, v);
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else if (k in n && typeof v !== "string") n[k] = v;
    else n.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    n.append(c instanceof Node ? c : String(c));
  }
  return n;
}

/** Shows err in target (an element with role="alert" or aria-live). */
export function showError(target, err) {
  target.replaceChildren();
  target.className = "msg error";
  target.hidden = false;
  const code = err && err.code && !String(err.code).startsWith("http_") ? ` (${err.code})` : "";
  target.append(el("strong", {}, (err && err.message) || String(err)), code);
  if (err && err.reasons && Object.keys(err.reasons).length) {
    const ul = el("ul", { class: "reasons" });
    for (const [k, n] of Object.entries(err.reasons).sort((a, b) => b[1] - a[1])) {
      ul.append(el("li", {}, `${REASONS[k] || k}: ${n} offer${n === 1 ? "" : "s"}`));
    }
    target.append(el("p", {}, "Why no offer matched:"), ul);
  }
}

export function showOk(target, ...content) {
  target.replaceChildren(...content);
  target.className = "msg ok";
  target.hidden = false;
}

export function clearMsg(target) {
  target.replaceChildren();
  target.hidden = true;
}

/** Compares two non-negative decimal strings exactly ("9.5" < "10.00"). */
export function cmpDecimal(a, b) {
  const [ai, af = ""] = String(a).split(".");
  const [bi, bf = ""] = String(b).split(".");
  const x = ai.replace(/^0+(?=\d)/, ""), y = bi.replace(/^0+(?=\d)/, "");
  if (x.length !== y.length) return x.length < y.length ? -1 : 1;
  if (x !== y) return x < y ? -1 : 1;
  const n = Math.max(af.length, bf.length);
  const p = af.padEnd(n, "0"), q = bf.padEnd(n, "0");
  return p === q ? 0 : p < q ? -1 : 1;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const today = d.toDateString() === new Date().toDateString();
  return d.toLocaleString(undefined, today ? { timeStyle: "medium" } : { dateStyle: "short", timeStyle: "short" });
}

/** A time element showing iso in local time, with the UTC value as its machine value. */
export function timeEl(iso) {
  return el("time", { datetime: iso || "", title: iso || "" }, fmtTime(iso));
}

/** A random UUID, also where crypto.randomUUID is missing (plain http). */
export function uuid() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * Fills tbody with one row per item. columns: [{value: item => string|Node,
 * num: bool}]. Shows empty (a string) in one cell when there are no items.
 */
export function fillTable(tbody, columns, items, empty = "Nothing yet.") {
  const rows = items.map((it) =>
    el("tr", {}, columns.map((c) => {
      const v = c.value(it);
      return el("td", { class: c.num ? "num" : null }, v === "" || v === undefined || v === null ? "—" : v);
    })),
  );
  if (!rows.length) {
    const span = (tbody.closest("table") && tbody.closest("table").querySelectorAll("thead th").length) || columns.length || 1;
    rows.push(el("tr", {}, el("td", { colspan: String(span), class: "empty" }, empty)));
  }
  tbody.replaceChildren(...rows);
}

let catalog;
/** The resource classes and regions, fetched once. */
export function loadCatalog() {
  catalog ??= Promise.all([api("/api/v1/resource-classes"), api("/api/v1/regions")]).then(([c, r]) => ({
    classes: c.resource_classes || [],
    regions: r.regions || [],
  }));
  catalog.catch(() => (catalog = undefined));
  return catalog;
}

export function classLabel(rc) {
  return `${rc.name || rc.id}${rc.domestic ? " (domestic)" : ""}`;
}

/** Replaces a select's options; first is an optional [value, label] put on top. */
export function fillSelect(select, items, first) {
  const keep = select.value;
  const opts = items.map((it) => el("option", { value: it.value }, it.label));
  if (first) opts.unshift(el("option", { value: first[0] }, first[1]));
  select.replaceChildren(...opts);
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

/**
 * Wires a token box: a form with an input[name=token], a "forget" button
 * and an output[name=state]. Returns nothing; listen for "tokenchange".
 */
export function tokenBox(form, role) {
  const input = form.elements.token;
  const state = form.querySelector("[data-state]");
  const render = () => {
    const has = !!getToken(role);
    state.textContent = has ? "Token saved in this browser." : "No token saved.";
    input.value = "";
    input.placeholder = has ? "•••••••• (saved)" : "paste your bearer token";
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const v = input.value.trim();
    if (v) setToken(role, v);
    render();
  });
  form.querySelector("[data-forget]").addEventListener("click", () => {
    setToken(role, "");
    render();
  });
  render();
}

/** Converts a datetime-local value to RFC 3339 UTC ("" stays ""). */
export function localToRFC3339(v) {
  if (!v) return "";
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** Splits "a, b c" into ["a","b","c"]. */
export function splitList(v) {
  return String(v || "").split(/[\s,]+/).filter(Boolean);
}

/** Disables a form's buttons while fn runs. */
export async function busy(form, fn) {
  const buttons = [...form.querySelectorAll("button")];
  buttons.forEach((b) => (b.disabled = true));
  form.setAttribute("aria-busy", "true");
  try {
    return await fn();
  } finally {
    buttons.forEach((b) => (b.disabled = false));
    form.removeAttribute("aria-busy");
  }
}
