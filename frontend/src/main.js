// main.js: the dashboard page's entry point. Picks the system (kept in the URL hash, "#system=ID"), loads its
// state, the pipeline's health and the audit figures, and refreshes them every 5 s without reloading the page and
// without stacking requests (a tick is skipped while one is in flight); failures go to the banner and are retried.

import { api, AuthError } from "./api.js";
import { MapView } from "./map.js";
import * as panels from "./panels.js";

const ALL = "*";
const REFRESH_MS = 5000;
const SLOW_MS = 60000; // the audit figures and the list of systems

const select = document.getElementById("system-select");
const map = new MapView(document.getElementById("map"), document.getElementById("tooltip"), document.getElementById("map-focus"));

let systems = null; // api/systems' list, once loaded
let systemsAt = 0;
let current = null; // the system shown
let auditOf = null;
let auditAt = 0;
let busy = false;
let again = false;

function hashSystem() {
  const found = /(?:^#|&)system=([^&]*)/.exec(location.hash);
  if (!found) return null;
  try {
    return decodeURIComponent(found[1]) || null;
  } catch {
    return null;
  }
}

function choose(wanted, answer) {
  const ids = answer.systems.map((s) => s.id);
  if (wanted !== null && ids.includes(wanted)) return wanted;
  if (wanted === ALL && ids.length > 1) return ALL;
  return ids.includes(answer.default) ? answer.default : ids[0] ?? null;
}

function show(system) {
  current = system;
  if (system !== null && hashSystem() !== system) {
    history.replaceState(null, "", `${location.pathname}${location.search}#system=${encodeURIComponent(system)}`);
  }
  if (select.value !== system) select.value = system ?? "";
}

/** Where to log in again and come back: the page itself, which the server sends to the auth manager's login page
 * (wherever Airflow serves it) and back. */
function loginUrl() {
  return new URL("./", location.href).href;
}

/** What a state answer for `system` does, unless another system was chosen meanwhile. */
function applyState(system) {
  return (answer) => {
    if (system !== current) return;
    const counts = map.setData(answer);
    panels.renderAsOf(answer.as_of);
    panels.renderSummary(answer.summary);
    panels.renderLegend(counts);
    panels.renderOutages(answer.outages, system === ALL);
  };
}

async function tick() {
  if (busy) return;
  busy = true;
  const errors = [];
  const settle = (promise, apply) => promise.then(apply, (error) => { errors.push(error); });
  try {
    let early = null; // the first map's data, asked for with the list of systems (not after it)
    let earlyFor = null;
    if (systems === null || Date.now() - systemsAt >= SLOW_MS) {
      const wanted = current ?? hashSystem();
      if (systems === null && current === null && wanted !== null) {
        current = wanted;
        earlyFor = wanted;
        early = settle(api.state(wanted), applyState(wanted));
      }
      let answer;
      try {
        answer = await api.systems();
      } catch (error) {
        errors.push(error);
        if (systems === null) {
          if (early) await early;
          else map.showMessage("The stations cannot be loaded yet");
          return;
        }
      }
      if (answer) {
        systems = answer.systems.length ? answer.systems : null;
        systemsAt = Date.now();
        const chosen = choose(wanted, answer);
        panels.renderSystems(answer.systems, chosen);
        show(chosen);
        if (chosen === null) {
          map.showMessage("No station in the live state store yet");
          panels.renderSummary(null);
          panels.renderAudit(null, true);
        }
      }
    }
    const system = current;
    const jobs = [settle(api.health(), panels.renderHealth)];
    if (early) jobs.push(early);
    if (system !== null) {
      if (!early || system !== earlyFor) jobs.unshift(settle(api.state(system), applyState(system)));
      if (system === ALL) {
        panels.renderAudit(null, true);
      } else if (auditOf !== system || Date.now() - auditAt >= SLOW_MS) {
        jobs.push(settle(api.audit(system), (answer) => {
          if (system !== current) return;
          auditOf = system;
          auditAt = Date.now();
          panels.renderAudit(answer.report, false);
        }));
      }
    }
    await Promise.all(jobs);
  } catch (error) {
    errors.push(error); // a bug in the page itself: shown, and the next tick tries again
  } finally {
    busy = false;
    if (errors.some((e) => e instanceof AuthError)) {
      panels.showExpired(loginUrl());
    } else if (errors.length) {
      panels.showError(errors[0].message || String(errors[0]));
      for (const error of errors) if (!(error instanceof Error) || !/^api\//.test(error.message)) console.warn(error);
    } else {
      panels.clearError();
    }
    if (again) {
      again = false;
      tick();
    }
  }
}

/** Another system: shown at once (the refresh in flight, if any, is for the old one and is dropped). */
function switchTo(system) {
  if (system === current || system === null) return;
  show(system);
  map.hideTooltip();
  auditOf = null;
  document.body.classList.add("switching");
  if (busy) again = true;
  else tick();
}

select.addEventListener("change", () => switchTo(select.value));
window.addEventListener("hashchange", () => {
  const wanted = hashSystem();
  if (systems && wanted !== null && (systems.some((s) => s.id === wanted) || (wanted === ALL && systems.length > 1))) switchTo(wanted);
});
new MutationObserver(() => document.body.classList.remove("switching"))
  .observe(document.getElementById("map"), { attributes: true, attributeFilter: ["data-system"] });

// A tab in the background asks for nothing (70,000 stations are megabytes every 5 s); back in view, at once.
document.addEventListener("visibilitychange", () => { if (document.visibilityState !== "hidden") tick(); });

panels.renderLegend(null);
tick();
setInterval(() => { if (document.visibilityState !== "hidden") tick(); }, REFRESH_MS);
