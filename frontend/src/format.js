// format.js: how figures read on the page: counts with thousands separators (en-US), percents, dollars,
// durations ("2 h 46 min"), local clock times, and an em dash wherever a figure is missing; and the one way text
// enters the page (element: always as text, never as HTML).

export const DASH = "\u2014";

const INTEGER = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const DECIMAL = new Intl.NumberFormat("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 });
const TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const DAY_TIME = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

const missing = (value) => value === null || value === undefined || Number.isNaN(Number(value));

/** 2,208 */
export function count(value) {
  return missing(value) ? DASH : INTEGER.format(value);
}

/** 12.5 */
export function decimal(value) {
  return missing(value) ? DASH : DECIMAL.format(value);
}

/** A share 0..1 as "4.1 %". */
export function percent(share) {
  return missing(share) ? DASH : `${DECIMAL.format(share * 100)} %`;
}

/** $1,500 */
export function dollars(value) {
  return missing(value) ? DASH : `$${INTEGER.format(value)}`;
}

/** Seconds as "45 s", "12 min", "2 h 46 min", "3 d 4 h". */
export function duration(seconds) {
  if (missing(seconds)) return DASH;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** A time (POSIX seconds, or an ISO string) in local time: the clock alone today, with the day otherwise. */
export function when(value) {
  if (missing(value) && typeof value !== "string") return DASH;
  const date = typeof value === "string" ? new Date(value) : new Date(value * 1000);
  if (Number.isNaN(date.getTime())) return DASH;
  return (date.toDateString() === new Date().toDateString() ? TIME : DAY_TIME).format(date);
}

/** A new element with an optional class and text (set as text, never as HTML). */
export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}
