// Follows one order until it reaches a terminal state: Server-Sent Events first; if the stream
// drops before the end, polling GET /orders/{id} with a capped backoff.

import { api } from "/static/api.js";

export const TERMINAL = new Set([
  "completed",
  "partially_completed",
  "failed",
  "refund_pending",
  "cancelled",
]);

const POLL_MS = 1000;
const POLL_MAX_MS = 5000;

export function watchOrder(orderId, { onOrder, onConnection }) {
  let stopped = false;
  let source = null;
  let timer = null;
  let lastVersion = -1;

  const deliver = (order) => {
    if (stopped || order.version < lastVersion) return;
    lastVersion = order.version;
    onOrder(order);
    if (TERMINAL.has(order.status)) stop();
  };

  const poll = async (delay) => {
    if (stopped) return;
    try {
      deliver(await api.order(orderId));
      onConnection(stopped ? "" : "Live updates paused; checking every second.");
      delay = POLL_MS;
    } catch (err) {
      onConnection("Reconnecting to the gateway…");
      delay = Math.min(delay * 2, POLL_MAX_MS);
    }
    if (!stopped) timer = setTimeout(() => poll(delay), delay);
  };

  const stop = () => {
    stopped = true;
    if (source) source.close();
    if (timer) clearTimeout(timer);
    source = null;
    timer = null;
  };

  source = new EventSource(api.orderEventsUrl(orderId));
  source.addEventListener("order", (event) => {
    onConnection("");
    deliver(JSON.parse(event.data));
  });
  source.onerror = () => {
    // The server closes the stream after the terminal state, which we have already seen and
    // stopped on; anything else is a drop. EventSource would reconnect by itself, but polling
    // also covers a gateway that answers plain requests while streams fail.
    if (stopped) return;
    source.close();
    source = null;
    poll(POLL_MS);
  };

  return stop;
}
