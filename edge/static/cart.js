// The cart: one line per catalog item, quantity 1..10 and never above what is available.

import { sumMinor } from "/static/money.js";

export const MAX_PER_ITEM = 10;

export class Cart {
  constructor() {
    this.lines = new Map(); // item id -> {item, quantity}
  }

  get size() {
    return this.lines.size;
  }

  limit(item) {
    if (item.enabled === false) return 0; // out of service: not sold until re-enabled
    return Math.max(0, Math.min(MAX_PER_ITEM, item.quantity));
  }

  quantity(itemId) {
    const line = this.lines.get(itemId);
    return line ? line.quantity : 0;
  }

  add(item) {
    const next = this.quantity(item.id) + 1;
    if (next > this.limit(item)) return false;
    this.lines.set(item.id, { item, quantity: next });
    return true;
  }

  decrement(itemId) {
    const line = this.lines.get(itemId);
    if (!line || line.quantity <= 1) return false;
    line.quantity -= 1;
    return true;
  }

  remove(itemId) {
    this.lines.delete(itemId);
  }

  clear() {
    this.lines.clear();
  }

  // After the catalog is reloaded: follow new prices and cap lines at what is left.
  // Returns the names of items whose quantity had to be lowered or removed.
  reconcile(catalog) {
    const byId = new Map(catalog.map((item) => [item.id, item]));
    const changed = [];
    for (const [id, line] of this.lines) {
      const item = byId.get(id);
      const limit = item ? this.limit(item) : 0;
      if (limit === 0) {
        this.lines.delete(id);
        changed.push(line.item.name);
        continue;
      }
      if (line.quantity > limit) {
        line.quantity = limit;
        changed.push(item.name);
      }
      line.item = item;
    }
    return changed;
  }

  total() {
    return sumMinor(
      Array.from(this.lines.values(), (line) => BigInt(line.item.price) * BigInt(line.quantity)),
    );
  }

  currency() {
    const first = this.lines.values().next().value;
    return first ? first.item.currency : "INR";
  }

  orderBody(machineId, paymentMethod) {
    return {
      machine_id: machineId,
      items: Array.from(this.lines.values(), (line) => ({
        id: line.item.id,
        quantity: line.quantity,
      })),
      payment_method: paymentMethod,
    };
  }
}
