// panels.js: everything on the page but the map: the header's "updated" time, the error banner, the summary
// cards, the legend's counts, the longest current outages, the pipeline's health and the audit figures. Text
// from the server is only ever set as text (never as HTML).

import { count, dollars, DASH, decimal, duration, element, percent, when } from "./format.js";
import { STATES } from "./map.js";

const $ = (id) => document.getElementById(id);
const STALE_FETCH_S = 300;

function row(cells, className) {
  const tr = element("tr", className);
  for (const cell of cells) tr.append(cell instanceof Node ? cell : element("td", null, cell));
  return tr;
}

function cell(text, className, title) {
  const td = element("td", className, text);
  if (title) td.title = title;
  return td;
}

/** The banner: one line, for a failure the next refresh retries. */
export function showError(message) {
  const banner = $("error");
  banner.className = "banner";
  banner.replaceChildren(element("span", null, `${message} (retrying every 5 s)`));
  banner.title = message;
  banner.hidden = false;
}

/** The banner: the Airflow login has expired, with a link to log in again and come back. */
export function showExpired(loginUrl) {
  const banner = $("error");
  banner.className = "banner expired";
  const link = element("a", null, "log in again");
  link.href = loginUrl;
  banner.replaceChildren(element("span", null, "Your Airflow session has expired: "), link);
  banner.title = "";
  banner.hidden = false;
}

export function clearError() {
  const banner = $("error");
  banner.hidden = true;
  banner.replaceChildren();
}

/** The system selector: hidden with a single system, else every system and "All systems". */
export function renderSystems(systems, chosen) {
  const select = $("system-select");
  const options = systems.map((s) => {
    const option = element("option", null, `${s.id} (${count(s.stations)} stations)`);
    option.value = s.id;
    return option;
  });
  if (systems.length > 1) {
    const all = element("option", null, "All systems");
    all.value = "*";
    options.push(all);
  }
  select.replaceChildren(...options);
  select.value = chosen ?? "";
  select.hidden = systems.length <= 1;
  $("system-label").hidden = systems.length <= 1;
}

export function renderAsOf(asOf) {
  const span = $("last-refresh");
  span.dataset.asOf = asOf === null || asOf === undefined ? "" : String(asOf);
  span.textContent = asOf === null || asOf === undefined ? "no station status yet" : `updated ${when(asOf)}`;
  span.title = asOf ? new Date(asOf * 1000).toString() : "";
}

const CARDS = [["stations", "stations"], ["empty", "empty"], ["full", "full"], ["not-renting", "not_renting"],
  ["bikes", "bikes"], ["ebikes", "ebikes"]];

export function renderSummary(summary) {
  for (const [id, field] of CARDS) {
    const card = $(`summary-${id}`);
    const value = summary ? summary[field] : null;
    card.dataset.value = value === null || value === undefined ? "" : String(value);
    card.querySelector(".value").textContent = count(value);
  }
  const docks = $("summary-docks-note");
  if (docks) docks.textContent = summary && summary.docks !== null && summary.docks !== undefined ? `${count(summary.docks)} free docks` : "";
}

/** The legend: a swatch per state, with how many stations are drawn in it. */
export function renderLegend(counts) {
  const legend = $("legend");
  if (!legend.childElementCount) {
    for (const state of STATES) {
      const item = element("li", `legend-${state.name}`);
      const swatch = element("span", "swatch");
      swatch.style.background = state.color;
      item.append(swatch, element("span", "label", state.label), element("span", "n"));
      legend.append(item);
    }
  }
  STATES.forEach((state, s) => {
    legend.children[s].querySelector(".n").textContent = counts ? count(counts[s]) : "";
  });
}

export function renderOutages(outages, showSystem) {
  const body = $("outages").tBodies[0];
  const rows = (outages || []).map((o) => {
    const name = cell(o.name || `Station ${o.station_id}`, "name");
    if (showSystem) name.prepend(element("span", "system", o.system_id));
    const tr = row([name, cell(o.kind, `kind outage-${o.kind}`), cell(when(o.since), "num"),
      cell(o.minutes === null || o.minutes === undefined ? DASH : duration(o.minutes * 60), "num")]);
    tr.dataset.stationId = o.station_id;
    tr.dataset.systemId = o.system_id;
    return tr;
  });
  if (!rows.length) rows.push(row([cell("No station is empty or full right now", "none")]));
  if (!outages || !outages.length) rows[0].firstChild.colSpan = 4;
  body.replaceChildren(...rows);
}

export function renderHealth(health) {
  const table = $("health");
  const systems = (health.systems || []).map((s) => {
    const stale = s.last_fetch_age_s === null || s.last_fetch_age_s === undefined || s.last_fetch_age_s > STALE_FETCH_S;
    const failed = typeof s.last_outcome === "string" && /fail|error/i.test(s.last_outcome);
    return row([
      element("th", null, s.system_id),
      cell(s.last_fetch_age_s === null || s.last_fetch_age_s === undefined ? DASH : `${duration(s.last_fetch_age_s)} ago`,
        stale ? "num bad" : "num", stale ? "no fetch in the last 5 minutes" : ""),
      cell(decimal(s.records_per_minute), "num"),
      cell(percent(s.quarantine_rate), s.quarantine_rate > 0.1 ? "num bad" : "num"),
      cell(s.last_outcome ?? DASH, failed ? "bad" : ""),
    ], stale || failed ? "bad-row" : "");
  });
  if (!systems.length) systems.push(row([cell("No system has run yet", "none")]));
  table.tBodies[0].replaceChildren(...systems);
  if (!(health.systems || []).length) systems[0].firstChild.colSpan = 5;

  const c = health.consumer || {};
  const up = c.up === true ? "up" : c.up === false ? "down" : DASH;
  const consumer = row([
    element("th", null, "live consumer"),
    cell(up, c.up === false ? "bad" : c.up ? "good" : ""),
    cell(c.lag === null || c.lag === undefined ? `lag ${DASH}` : `lag ${count(c.lag)}`, "num"),
    cell(c.messages_per_second === null || c.messages_per_second === undefined ? `${DASH} msg/s` : `${decimal(c.messages_per_second)} msg/s`, "num"),
    cell(""),
  ], c.up === false ? "bad-row" : "");
  table.tFoot.replaceChildren(consumer);

  const runs = (health.dag_runs || []).map((r) => {
    const state = r.state ?? DASH;
    const kind = r.state === "failed" ? "bad" : r.state === "success" ? "good" : r.state === "running" || r.state === "queued" ? "busy" : "";
    return row([cell(r.dag_id, "name"), cell(state, kind), cell(when(r.run_after), "num"),
      cell(r.duration_s === null || r.duration_s === undefined ? DASH : `${decimal(r.duration_s)} s`, "num")],
    r.state === "failed" ? "bad-row" : "");
  });
  if (!runs.length) runs.push(row([cell("No DAG run yet", "none")]));
  $("dag-runs").tBodies[0].replaceChildren(...runs);
  if (!(health.dag_runs || []).length) runs[0].firstChild.colSpan = 4;
}

/** The audit section: hidden for all systems, a note without a report, else its figures and link. */
export function renderAudit(report, hidden) {
  const section = $("audit");
  section.hidden = Boolean(hidden);
  if (hidden) return;
  const body = $("audit-body");
  if (!report) {
    body.replaceChildren(element("p", "none", "No analytics report yet: the citibikes_analytics DAG writes one daily"));
    return;
  }
  const figures = element("dl", "figures");
  const add = (label, value, note) => {
    const dd = element("dd", null, value);
    if (note) dd.append(element("span", "note", note));
    figures.append(element("dt", null, label), dd);
  };
  add("Period", report.first === report.last ? report.first : `${report.first} to ${report.last}`);
  add("Unusable time, mean", percent(report.unusable_share_mean));
  add("Unusable time, median", percent(report.unusable_share_median));
  add("Fines, peak hours", dollars(report.peak_fines), ` (${count(report.peak_instances)} instances)`);
  add("Fines, off-peak", dollars(report.off_peak_fines), ` (${count(report.off_peak_instances)} instances)`);
  add("Fines, total", dollars(report.fines));
  const nodes = [figures];
  const url = typeof report.url === "string" ? report.url : "";
  if (url && !/^[a-z][a-z0-9+.-]*:|^\/\//i.test(url)) {
    const link = element("a", null, "full report");
    link.id = "audit-report";
    link.href = url;
    link.target = "_blank";
    link.rel = "noopener";
    const p = element("p", "report-link");
    p.append(link);
    nodes.push(p);
  }
  body.replaceChildren(...nodes);
}
