// api.js: the page's calls to the dashboard's JSON API. Every URL is relative to the page (which is served at
// <prefix>/), requests carry the browser's cookies, and a refused login (401/403) is told apart from other failures.

const TIMEOUT_MS = 30000;

/** The Airflow session has expired (or was never there, or its token is not valid): the user must log in again. */
export class AuthError extends Error {}

/** What Airflow says of a session that is missing, expired or forged (anything else refused is a permission). */
const EXPIRED = new Set(["Not authenticated", "Token Expired", "Invalid JWT token"]);

async function getJSON(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    let answer;
    try {
      answer = await fetch(path, {
        credentials: "same-origin", cache: "no-store", signal: abort.signal,
        headers: { Accept: "application/json" },
      });
    } catch (error) {
      throw new Error(`${path}: ${abort.signal.aborted ? `no answer in ${TIMEOUT_MS / 1000} s` : "the server cannot be reached"}`);
    }
    if (answer.redirected && /\/auth\//.test(answer.url)) throw new AuthError(`${path}: sent to the login page`);
    if (!answer.ok) {
      let detail = "";
      try {
        const body = await answer.json();
        detail = typeof body.detail === "string" ? body.detail : "";
      } catch {
        // not JSON: the status says enough
      }
      if (answer.status === 401 || (answer.status === 403 && EXPIRED.has(detail))) {
        throw new AuthError(`${path}: HTTP ${answer.status}`);
      }
      if (answer.status === 403) throw new Error(`${path}: Airflow does not let this user view plugins (${detail || "HTTP 403"})`);
      throw new Error(`${path}: HTTP ${answer.status}${detail ? `: ${detail}` : ""}`);
    }
    try {
      return await answer.json();
    } catch {
      throw new Error(`${path}: the answer is not JSON`);
    }
  } finally {
    clearTimeout(timer);
  }
}

const query = (system) => `system=${encodeURIComponent(system)}`;

export const api = {
  systems: () => getJSON("api/systems"),
  state: (system) => getJSON(`api/state?${query(system)}`),
  health: () => getJSON("api/health"),
  audit: (system) => getJSON(`api/audit?${query(system)}`),
};
