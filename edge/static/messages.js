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

const ELECTRONIC = new Set(["upi", "sandbox"]);

export function isElectronic(order) {
  return ELECTRONIC.has(order.payment_method);
}

// Cash an order gave back to the machine credit: units that did not come out, or the coins a
// cancelled order had taken (there is no coin return: the gateway moves them to the machine
// credit and says how much in cancel_credit_amount).
function cashKept(order) {
  if (order.credit_amount > 0) return order.credit_amount;
  if (order.status !== "cancelled") return 0;
  return order.cancel_credit_amount || 0;
}

function keptAsCredit(amount, currency) {
  return `${formatMoney(amount, currency)} is kept as credit on this machine for your next purchase.`;
}

// The headline under the status. Every sentence about money says what happened to it; a refund
// is mentioned only when one exists (order.refunds), with where it stands (moneyNotes).
export function orderMessage(order) {
  const kept = cashKept(order);
  const refunds = order.refunds || [];
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
    case "failed":
    case "refund_pending": {
      const what =
        order.status === "failed"
          ? "Your items could not be dispensed."
          : "Some items could not be dispensed.";
      if (kept > 0) return `${what} ${keptAsCredit(kept, order.currency)}`;
      if (refunds.length > 0) return what; // each refund is listed below with its state
      return `${what} No refund has been recorded for them yet: please show the order number below to the operator.`;
    }
    case "cancelled":
      if (kept > 0) return `Order cancelled. ${keptAsCredit(kept, order.currency)}`;
      if (refunds.length > 0) return "Order cancelled.";
      if (isElectronic(order) && order.paid_amount > 0) {
        return "Order cancelled. Your payment has not been refunded yet: please show the order number below to the operator.";
      }
      return "Order cancelled. Nothing was charged.";
    default:
      return "";
  }
}

// One line per refund, in words that match its status.
export function refundNote(refund, currency) {
  const amount = formatMoney(refund.amount, currency);
  switch (refund.status) {
    case "pending":
      return { text: `${amount} is being refunded to your UPI account (refund requested).`, tone: "info" };
    case "refunded":
      return { text: `${amount} has been refunded to your UPI account.`, tone: "info" };
    case "failed":
    case "manual_review":
      return {
        text: `The refund of ${amount} to your UPI account needs review by the operator; it has not been paid yet.`,
        tone: "warn",
      };
    case "voided":
      return { text: `The operator closed the ${amount} refund: no UPI refund was made.`, tone: "warn" };
    default:
      return { text: `Refund of ${amount}: ${refund.status}.`, tone: "warn" };
  }
}

// Every other true fact about this order's money, each a line: refunds, overpayment.
export function moneyNotes(order) {
  const notes = (order.refunds || []).map((refund) => refundNote(refund, order.currency));
  if (order.overpaid_amount > 0) {
    const extra = formatMoney(order.overpaid_amount, order.currency);
    notes.push({
      text: `You paid ${extra} more than the total: it is kept as credit on this machine for your next purchase.`,
      tone: "info",
    });
  }
  return notes;
}

export function creditMessage(amount, currency) {
  return `Credit on this machine: ${formatMoney(amount, currency)}. It is used for your next cash purchase here.`;
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
    case "payment_unavailable": {
      const reason = err.details && err.details.reason;
      if (reason === "not_enabled") {
        return "UPI is not offered at this machine. Nothing was charged. Please pay with cash.";
      }
      if (reason === "offline") {
        return "UPI payment is not available right now: this machine has no connection to the payment service. Nothing was charged. Please pay with cash.";
      }
      return "UPI payment is not available right now. Nothing was charged. Please pay with cash.";
    }
    case "slot_disabled": {
      const id = err.details && err.details.id;
      const name = (id && names.get(id)) || "One of the products";
      return `${name} is out of service at this machine. Nothing was charged. The menu has been refreshed.`;
    }
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
