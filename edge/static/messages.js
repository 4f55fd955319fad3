// What the kiosk user reads: order states and API errors in plain words.

import { ApiError, NetworkError } from "/static/api.js";
import { formatMoney } from "/static/money.js";

export const STATUS_LABELS = {
  awaiting_payment: "Waiting for payment",
  paid: "Paid",
  dispensing: "Dispensing",
  completed: "Completed",
  partially_completed: "Partly completed",
  failed: "Failed",
  refund_pending: "Refund pending",
  cancelled: "Cancelled",
};

export const ITEM_LABELS = {
  pending: "waiting",
  dispensing: "dispensing…",
  dispensed: "done",
  partial: "partly dispensed",
  failed: "not dispensed",
  unknown: "not confirmed",
  not_dispensed: "not dispensed",
};

export function orderMessage(order) {
  const paid = formatMoney(order.paid_amount, order.currency);
  switch (order.status) {
    case "awaiting_payment":
      return order.payment_method === "cash"
        ? "Insert coins or notes in the machine."
        : "Scan the QR code with any UPI app.";
    case "paid":
      return "Payment received. Your items are coming.";
    case "dispensing":
      return "Your items are coming. Please wait.";
    case "completed":
      return "Enjoy!";
    case "partially_completed":
    case "refund_pending":
      return "Some items could not be dispensed; a refund is on its way.";
    case "failed":
      return "Your items could not be dispensed; a refund is on its way.";
    case "cancelled":
      if (order.payment_method === "cash" && order.paid_amount > 0) {
        return `Order cancelled. The ${paid} you inserted stays as credit for your next order.`;
      }
      return "Order cancelled. Nothing was charged.";
    default:
      return "";
  }
}

function stockMessage(details, names) {
  if (!Array.isArray(details) || details.length === 0) {
    return "Not enough stock for this order.";
  }
  const parts = details.map((d) => {
    const name = names.get(d.id) || d.id;
    return d.available > 0
      ? `${name}: only ${d.available} left (you asked for ${d.requested})`
      : `${name}: sold out`;
  });
  return `Not enough stock. ${parts.join("; ")}.`;
}

// names: Map of catalog item id -> display name, to name items in stock errors.
export function errorMessage(err, names = new Map()) {
  if (err instanceof NetworkError) {
    return "Cannot reach the machine's gateway. Check the connection and try again.";
  }
  if (!(err instanceof ApiError)) {
    return "Something went wrong. Please try again.";
  }
  switch (err.code) {
    case "insufficient_stock":
      return stockMessage(err.details, names);
    case "payment_unavailable":
      return "UPI payment is not available right now. Please pay with cash.";
    case "machine_not_found":
      return "This machine is not available right now.";
    case "unknown_item":
      return "One of the products is no longer sold here. The menu has been refreshed.";
    case "machine_busy":
      return "Someone is paying with cash at this machine right now. Please wait until they finish.";
    case "too_many_orders":
      return "This kiosk has too many unpaid orders right now. Pay for or cancel one, or try again in a few minutes.";
    case "order_too_large":
      return "That is more items than one order can hold. Please take fewer.";
    case "order_token_required":
    case "order_token_invalid":
      return "This order was started on another screen and can only be cancelled there.";
    case "order_conflict":
      return `This order can no longer be changed: ${err.message}.`;
    case "store_unavailable":
      return "The machine cannot take orders right now. Please try again later.";
    case "validation_error": {
      const first = Array.isArray(err.details) && err.details[0];
      return first ? `The order was not accepted: ${first.msg}.` : "The order was not accepted.";
    }
    default:
      return err.message || "Something went wrong. Please try again.";
  }
}
