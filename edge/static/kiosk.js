// The kiosk page: pick a machine, fill a cart from its catalog, pay, follow the order.

import { api, ApiError, NetworkError, newIdempotencyKey } from "/static/api.js";
import { Cart } from "/static/cart.js";
import {
  ITEM_LABELS,
  STATUS_LABELS,
  creditMessage,
  errorMessage,
  isElectronic,
  moneyNotes,
  orderMessage,
} from "/static/messages.js";
import { formatMoney } from "/static/money.js";
import { TERMINAL, watchOrder } from "/static/order_watch.js";

const CATALOG_REFRESH_MS = 15000;
// The current order's secret token (cancel, and replacing it with a new cash order), kept for
// this tab only: it survives a reload, so a reloaded kiosk can still start over at the machine.
const ORDER_KEY = "kiosk.order";
const IDLE_RETURN_MS = 90000; // back to the menu after a finished order nobody closes
// A finished order's refund still moving at the provider: asked again this often (the event
// stream ends with the order), so "being refunded" turns into "refunded" on screen.
const REFUND_POLL_MS = 3000;

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

const METHOD_LABELS = { cash: "Cash", upi: "UPI", sandbox: "UPI (sandbox)" };

const state = {
  machines: [],
  machine: null,
  catalog: [],
  cart: new Cart(),
  method: null,
  attempt: null, // {key, bodyJson}: reused only when the same checkout is retried
  busy: false,
  order: null,
  owned: loadOwned(), // {id, machineId, token} of the last order this kiosk created
  stopWatch: null,
  refreshTimer: null,
  idleTimer: null,
  refundTimer: null,
  retry: null,
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "testid") node.dataset.testid = value;
    else if (key === "className") node.className = value;
    else if (key === "onClick") node.addEventListener("click", value);
    else if (key === "disabled") node.disabled = Boolean(value);
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

function loadOwned() {
  try {
    const owned = JSON.parse(sessionStorage.getItem(ORDER_KEY) || "null");
    return owned && typeof owned.token === "string" ? owned : null;
  } catch {
    return null;
  }
}

function remember(order, token) {
  state.owned = { id: order.id, machineId: order.machine_id, token };
  try {
    sessionStorage.setItem(ORDER_KEY, JSON.stringify(state.owned));
  } catch {
    // Storage may be off (private mode): the token then lives as long as the page.
  }
}

function tokenFor(orderId) {
  return state.owned && state.owned.id === orderId ? state.owned.token : null;
}

function itemNames() {
  return new Map(state.catalog.map((item) => [item.id, item.name]));
}

// --- screens and notices -----------------------------------------------------------------------

const SCREENS = ["loading", "machines-screen", "shop-screen", "order-screen"];

function show(screen) {
  for (const id of SCREENS) $(id).hidden = id !== screen;
}

function showError(err, { retry = null } = {}) {
  showNotice(errorMessage(err, itemNames()), { retry });
}

function showNotice(message, { retry = null } = {}) {
  state.retry = retry;
  $("error-message").textContent = message;
  $("error-retry").hidden = retry === null;
  $("error").hidden = false;
}

function hideNotice() {
  state.retry = null;
  $("error").hidden = true;
}

// --- machines ----------------------------------------------------------------------------------

async function loadMachines() {
  hideNotice();
  show("loading");
  try {
    state.machines = await api.machines();
  } catch (err) {
    showError(err, { retry: loadMachines });
    return;
  }
  const wanted = new URLSearchParams(location.search).get("machine");
  if (wanted) {
    const machine = state.machines.find((m) => m.id === wanted);
    if (machine) return selectMachine(machine);
    showNotice(`Machine ${wanted} is not at this site. Choose one below.`);
  } else if (state.machines.length === 1) {
    return selectMachine(state.machines[0]);
  }
  renderMachines();
}

function renderMachines() {
  stopCatalogRefresh();
  const list = $("machine-list");
  list.replaceChildren(
    ...state.machines.map((m) =>
      el(
        "button",
        { type: "button", className: "machine", testid: `machine-${m.id}`, onClick: () => {
          hideNotice();
          selectMachine(m);
        } },
        el("span", { className: "machine-name" }, m.name),
        el("span", { className: "muted" }, m.location || ""),
        el("span", { className: `pill ${m.online ? "on" : "off"}` }, m.online ? "Online" : "Offline"),
      ),
    ),
  );
  if (state.machines.length === 0) {
    list.append(el("p", { className: "muted" }, "No machines are set up at this site yet."));
  }
  $("machine-name").textContent = "Vending";
  $("machine-online").hidden = true;
  $("change-machine").hidden = true;
  show("machines-screen");
}

function renderHeader() {
  const m = state.machine;
  $("machine-name").textContent = m.name;
  const pill = $("machine-online");
  pill.textContent = m.online ? "Online" : "Offline";
  pill.className = `pill ${m.online ? "on" : "off"}`;
  pill.hidden = false;
  $("change-machine").hidden = state.machines.length < 2 || state.order !== null;
}

async function selectMachine(machine) {
  state.machine = machine;
  state.cart.clear();
  state.method = null;
  state.attempt = null;
  const url = new URL(location.href);
  url.searchParams.set("machine", machine.id);
  history.replaceState(null, "", url);
  renderHeader();
  show("loading");
  await loadCatalog();
  show("shop-screen");
  startCatalogRefresh();
}

// --- catalog and cart --------------------------------------------------------------------------

async function loadCatalog({ quiet = false } = {}) {
  try {
    const [catalog, machines] = await Promise.all([api.catalog(state.machine.id), api.machines()]);
    state.catalog = catalog;
    state.machines = machines;
    state.machine = machines.find((m) => m.id === state.machine.id) || state.machine;
  } catch (err) {
    if (!quiet) showError(err, { retry: () => loadCatalog() });
    return;
  }
  const lowered = state.cart.reconcile(state.catalog);
  if (lowered.length > 0 && !quiet) {
    showNotice(`Updated to what is left: ${lowered.join(", ")}.`);
  }
  if (state.method !== null && !offered(state.method)) state.method = null;
  renderHeader();
  renderShop();
}

// --- payment methods ---------------------------------------------------------------------------

function methodState(method) {
  const methods = (state.machine && state.machine.payment_methods) || [];
  return methods.find((m) => m.method === method) || null;
}

// Which buttons the cart shows: cash always; UPI while the gateway says it works (the tenant has
// it, the cloud link is up, the payments breaker is closed); the sandbox only at sites without
// real UPI (tests, the sandbox demo).
function offered(method) {
  if (method === "cash") return true;
  const entry = methodState(method);
  if (!entry || !entry.available) return false;
  if (method === "sandbox") {
    const upi = methodState("upi");
    return !upi || upi.reason === "not_enabled";
  }
  return true;
}

// Why no UPI button: said when the machine would take UPI but cannot now (not when the tenant
// simply has no UPI).
function upiUnavailableText() {
  if (offered("upi") || offered("sandbox")) return null;
  const upi = methodState("upi");
  const sandbox = methodState("sandbox");
  const down = [upi, sandbox].find((m) => m && !m.available && m.reason !== "not_enabled");
  return down ? down.message || "UPI is unavailable right now. Please pay with cash." : null;
}

function startCatalogRefresh() {
  stopCatalogRefresh();
  state.refreshTimer = setInterval(() => loadCatalog({ quiet: true }), CATALOG_REFRESH_MS);
}

function stopCatalogRefresh() {
  if (state.refreshTimer) clearInterval(state.refreshTimer);
  state.refreshTimer = null;
}

function tile(item) {
  const inCart = state.cart.quantity(item.id);
  const limit = state.cart.limit(item);
  const outOfService = item.enabled === false;
  const soldOut = !outOfService && item.quantity <= 0;
  const atLimit = !soldOut && !outOfService && inCart >= limit;
  let stateClass = soldOut ? " sold-out" : "";
  if (outOfService) stateClass = " out-of-service";
  let qtyText = soldOut ? "Sold out" : `${item.quantity} left`;
  if (outOfService) qtyText = "Out of service";
  return el(
    "button",
    {
      type: "button",
      className: `tile${stateClass}${inCart ? " in-cart" : ""}`,
      testid: `tile-${item.id}`,
      disabled: soldOut || outOfService || atLimit,
      onClick: () => {
        if (state.cart.add(item)) renderShop();
      },
    },
    item.image_url && item.image_url.startsWith("/")
      ? el("img", { className: "tile-img", src: item.image_url, alt: "" })
      : null,
    el("span", { className: "tile-name" }, item.name),
    el("span", { className: "tile-cat" }, item.category || ""),
    el("span", { className: "tile-price" }, formatMoney(item.price, item.currency)),
    el(
      "span",
      { className: "tile-qty", testid: `tile-qty-${item.id}` },
      qtyText,
    ),
    inCart ? el("span", { className: "tile-badge" }, atLimit ? `${inCart} · max` : `${inCart}`) : null,
  );
}

function cartLine({ item, quantity }) {
  const limit = state.cart.limit(item);
  return el(
    "li",
    { testid: `cart-line-${item.id}` },
    el("span", { className: "line-name" }, item.name),
    el(
      "span",
      { className: "stepper" },
      el(
        "button",
        {
          type: "button",
          testid: `cart-dec-${item.id}`,
          "aria-label": `One less ${item.name}`,
          disabled: quantity <= 1,
          onClick: () => {
            if (state.cart.decrement(item.id)) renderShop();
          },
        },
        "−",
      ),
      el("span", { className: "qty", testid: `cart-qty-${item.id}` }, String(quantity)),
      el(
        "button",
        {
          type: "button",
          testid: `cart-inc-${item.id}`,
          "aria-label": `One more ${item.name}`,
          disabled: quantity >= limit,
          onClick: () => {
            if (state.cart.add(item)) renderShop();
          },
        },
        "+",
      ),
    ),
    el(
      "span",
      { className: "line-total" },
      formatMoney(BigInt(item.price) * BigInt(quantity), item.currency),
    ),
    el(
      "button",
      {
        type: "button",
        className: "link",
        testid: `cart-remove-${item.id}`,
        onClick: () => {
          state.cart.remove(item.id);
          renderShop();
        },
      },
      "Remove",
    ),
  );
}

function renderShop() {
  const catalog = $("catalog");
  catalog.replaceChildren(...state.catalog.map(tile));
  if (state.catalog.length === 0) {
    catalog.append(el("p", { className: "muted" }, "Nothing is on sale at this machine."));
  }
  const cart = state.cart;
  $("cart-lines").replaceChildren(...Array.from(cart.lines.values(), cartLine));
  $("cart-empty").hidden = cart.size > 0;
  const total = formatMoney(cart.total(), cart.currency());
  $("cart-total").textContent = total;
  for (const button of document.querySelectorAll(".pay [data-method]")) {
    button.hidden = !offered(button.dataset.method);
    button.setAttribute("aria-pressed", String(button.dataset.method === state.method));
  }
  const unavailable = upiUnavailableText();
  $("upi-unavailable").textContent = unavailable || "";
  $("upi-unavailable").hidden = unavailable === null;
  const credit = state.machine ? state.machine.machine_credit || 0 : 0;
  $("shop-credit").hidden = !(credit > 0);
  if (credit > 0) $("shop-credit").textContent = creditMessage(credit, state.machine.currency);
  const checkout = $("checkout");
  checkout.disabled = state.busy || cart.size === 0 || state.method === null;
  if (state.busy) checkout.textContent = "Placing order…";
  else if (cart.size === 0) checkout.textContent = "Checkout";
  else if (state.method === null) checkout.textContent = "Choose how to pay";
  else checkout.textContent = `Checkout · ${total}`;
}

async function checkout() {
  if (state.busy || state.method === null || state.cart.size === 0) return;
  const body = state.cart.orderBody(state.machine.id, state.method);
  const bodyJson = JSON.stringify(body);
  if (!state.attempt || state.attempt.bodyJson !== bodyJson) {
    state.attempt = { key: newIdempotencyKey(), bodyJson };
  }
  state.busy = true;
  renderShop();
  hideNotice();
  try {
    // A cash order replaces this kiosk's own unpaid cash order on the machine (e.g. one left
    // open before a reload); the gateway ignores the token otherwise.
    const owned = state.owned && state.owned.machineId === body.machine_id ? state.owned : null;
    const { order_token: token, ...order } = await api.createOrder(
      body,
      state.attempt.key,
      owned ? owned.token : null,
    );
    state.attempt = null;
    remember(order, token);
    startOrder(order);
  } catch (err) {
    const retryable = err instanceof NetworkError;
    if (!retryable) state.attempt = null;
    showError(err, { retry: retryable ? checkout : null });
    if (
      err instanceof ApiError &&
      ["insufficient_stock", "unknown_item", "slot_disabled", "payment_unavailable"].includes(
        err.code,
      )
    ) {
      // Stock, slots or payment methods changed: show what works now (UPI hidden, cash kept).
      await loadCatalog({ quiet: true });
    }
  } finally {
    state.busy = false;
    if (state.order === null) renderShop();
  }
}

// --- order -------------------------------------------------------------------------------------

function startOrder(order) {
  stopCatalogRefresh();
  state.cart.clear();
  state.method = null;
  state.order = order;
  $("upi-qr").removeAttribute("src");
  renderHeader();
  renderOrder(order);
  show("order-screen");
  if (!TERMINAL.has(order.status)) {
    state.stopWatch = watchOrder(order.id, {
      onOrder: (next) => {
        if (state.order && state.order.id === next.id) renderOrder(next);
      },
      onConnection: (text) => {
        $("connection").textContent = text;
      },
    });
  }
}

function orderItem(item, terminal) {
  let progress = `${item.dispensed} of ${item.quantity} dispensed`;
  if (terminal && item.failed + item.unknown > 0) {
    progress += ` · ${item.failed + item.unknown} not dispensed`;
  }
  return el(
    "li",
    { testid: `order-item-${item.catalog_item_id}`, className: `item-${item.dispense_status}` },
    el("span", { className: "line-name" }, `${item.name} × ${item.quantity}`),
    el("span", { className: "muted" }, progress),
    el("span", { className: "item-state" }, ITEM_LABELS[item.dispense_status] || item.dispense_status),
  );
}

function renderOrder(order) {
  state.order = order;
  const terminal = TERMINAL.has(order.status);
  const awaiting = order.status === "awaiting_payment";
  const status = $("order-status");
  status.textContent = STATUS_LABELS[order.status] || order.status;
  status.dataset.status = order.status;
  status.className = `status status-${order.status}`;
  $("order-message").textContent = orderMessage(order);

  const total = BigInt(order.total_amount);
  const paid = BigInt(order.paid_amount);
  const remaining = paid >= total ? 0n : total - paid;
  $("cash-panel").hidden = !(awaiting && order.payment_method === "cash");
  $("cash-prompt").textContent = `Insert ${formatMoney(remaining, order.currency)}`;
  $("cash-paid").textContent = formatMoney(paid, order.currency);
  $("cash-remaining").textContent = formatMoney(remaining, order.currency);

  const upi = awaiting && isElectronic(order);
  $("upi-panel").hidden = !upi;
  if (upi) {
    $("upi-amount").textContent = formatMoney(total, order.currency);
    const payment = order.payment || {};
    // The gateway draws the UPI URI as a QR code; only without one is the provider's hosted QR
    // image shown.
    const payload = payment.upi_uri || payment.qr_payload || null;
    const image = payload ? api.qrUrl(order.id) : payment.image_url || null;
    $("upi-payload").textContent = payload || (image ? "" : "Preparing payment…");
    const qr = $("upi-qr");
    qr.hidden = !image;
    if (image && qr.getAttribute("src") !== image) qr.src = image;
  }

  $("money-notes").replaceChildren(
    ...moneyNotes(order).map((note) =>
      el("li", { className: note.tone === "warn" ? "warn" : "", testid: "money-note" }, note.text),
    ),
  );
  const credit = order.machine_credit || 0;
  $("order-credit").hidden = !(terminal && credit > 0);
  $("order-credit").textContent = credit > 0 ? creditMessage(credit, order.currency) : "";

  $("order-items").replaceChildren(...order.items.map((item) => orderItem(item, terminal)));
  const method = METHOD_LABELS[order.payment_method] || order.payment_method;
  $("order-ref").textContent =
    `Order ${order.id} · ${formatMoney(total, order.currency)} · ${method}`;
  $("cancel-order").hidden = !awaiting;
  $("new-order").hidden = !terminal;
  if (terminal) {
    $("connection").textContent = "";
    if (!state.idleTimer) state.idleTimer = setTimeout(newOrder, IDLE_RETURN_MS);
    followRefunds(order);
  }
}

function followRefunds(order) {
  if (state.refundTimer) clearTimeout(state.refundTimer);
  state.refundTimer = null;
  if (!(order.refunds || []).some((refund) => refund.status === "pending")) return;
  state.refundTimer = setTimeout(async () => {
    state.refundTimer = null;
    try {
      const next = await api.order(order.id);
      if (state.order && state.order.id === next.id) renderOrder(next);
    } catch {
      if (state.order && state.order.id === order.id) followRefunds(order);
    }
  }, REFUND_POLL_MS);
}

async function cancelOrder() {
  const order = state.order;
  if (!order) return;
  const button = $("cancel-order");
  button.disabled = true;
  try {
    renderOrder(await api.cancelOrder(order.id, tokenFor(order.id)));
    hideNotice();
  } catch (err) {
    showError(err, { retry: err instanceof NetworkError ? cancelOrder : null });
  } finally {
    button.disabled = false;
  }
}

async function newOrder() {
  if (state.stopWatch) state.stopWatch();
  if (state.idleTimer) clearTimeout(state.idleTimer);
  if (state.refundTimer) clearTimeout(state.refundTimer);
  state.stopWatch = null;
  state.idleTimer = null;
  state.refundTimer = null;
  state.order = null;
  hideNotice();
  show("loading");
  await loadCatalog();
  show("shop-screen");
  startCatalogRefresh();
}

// --- wiring ------------------------------------------------------------------------------------

function bind() {
  for (const button of document.querySelectorAll(".pay [data-method]")) {
    button.addEventListener("click", () => {
      if (!offered(button.dataset.method)) return;
      state.method = button.dataset.method;
      renderShop();
    });
  }
  $("checkout").addEventListener("click", checkout);
  $("cancel-order").addEventListener("click", cancelOrder);
  $("new-order").addEventListener("click", newOrder);
  $("change-machine").addEventListener("click", () => {
    hideNotice();
    renderMachines();
  });
  $("error-dismiss").addEventListener("click", hideNotice);
  $("error-retry").addEventListener("click", () => {
    const retry = state.retry;
    hideNotice();
    if (retry) retry();
  });
}

bind();
loadMachines();
