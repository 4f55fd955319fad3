// Amounts arrive as integer minor units (paise). BigInt keeps every step integer: a float never
// touches money, so ₹0.10 + ₹0.20 cannot turn into ₹0.30000000000000004.

const SYMBOLS = { INR: "₹" };

export function formatMoney(minor, currency = "INR") {
  const value = BigInt(minor);
  const sign = value < 0n ? "-" : "";
  const abs = value < 0n ? -value : value;
  const major = (abs / 100n).toLocaleString("en-IN");
  const cents = (abs % 100n).toString().padStart(2, "0");
  const symbol = SYMBOLS[currency];
  return symbol ? `${sign}${symbol}${major}.${cents}` : `${sign}${major}.${cents} ${currency}`;
}

export function sumMinor(amounts) {
  let total = 0n;
  for (const amount of amounts) total += BigInt(amount);
  return total;
}
