// The gateway's kiosk API: unwraps {"success": true, "data": ...} and turns the error envelope
// into an ApiError. A request that got no answer at all becomes a NetworkError, the only case in
// which a checkout may be retried with the same Idempotency-Key.

const API = "/api/v1";
const REQUEST_TIMEOUT_MS = 10000;

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export class NetworkError extends Error {
  constructor(message) {
    super(message);
    this.name = "NetworkError";
  }
}

async function request(method, path, { body, headers = {} } = {}) {
  let response;
  try {
    response = await fetch(API + path, {
      method,
      headers: body === undefined ? headers : { "Content-Type": "application/json", ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
  } catch (err) {
    throw new NetworkError(`no answer from the gateway (${err.name})`);
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    // A proxy page or a cut-off body: no envelope to read.
  }
  if (response.ok && payload && payload.success) return payload.data;
  const error = payload && payload.error;
  if (error) throw new ApiError(response.status, error.code, error.message, error.details);
  if (response.status >= 502) {
    throw new NetworkError(`the gateway answered ${response.status}`);
  }
  throw new ApiError(response.status, "http_error", `unexpected answer (${response.status})`, null);
}

export const api = {
  machines: () => request("GET", "/machines"),
  catalog: (machineId) => request("GET", `/machines/${encodeURIComponent(machineId)}/catalog`),
  // replacesToken: the order_token of this kiosk's own unpaid cash order on the machine, which
  // the new cash order then replaces (without it the gateway answers 409 machine_busy).
  createOrder: (body, idempotencyKey, replacesToken) =>
    request("POST", "/orders", {
      body,
      headers: {
        "Idempotency-Key": idempotencyKey,
        ...(replacesToken ? { "X-Order-Token": replacesToken } : {}),
      },
    }),
  order: (orderId) => request("GET", `/orders/${encodeURIComponent(orderId)}`),
  cancelOrder: (orderId, orderToken) =>
    request("POST", `/orders/${encodeURIComponent(orderId)}/cancel`, {
      headers: { "X-Order-Token": orderToken },
    }),
  orderEventsUrl: (orderId) => `${API}/orders/${encodeURIComponent(orderId)}/events`,
  qrUrl: (orderId) => `/kiosk/orders/${encodeURIComponent(orderId)}/qr.svg`,
};

// crypto.randomUUID needs a secure context, which a kiosk on a plain-HTTP LAN address is not;
// getRandomValues works everywhere.
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "kiosk-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
