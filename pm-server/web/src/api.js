// HTTP to /api/v1: bearer access token, one refresh (rotating refresh token) on 401, problem+json
// errors as `ApiError`. Tokens live in IndexedDB (`kv:session`) so they survive reloads offline.
import { kv } from './db.js';

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

/** True when the failure is "no network" rather than an answer from the server. */
export const isOffline = (e) => !(e instanceof ApiError) || e.status === 0 || e.status === 503 && e.problem?.offline;

let session = null; // { access_token, refresh_token, user }
let refreshing = null;
const listeners = new Set();

export async function loadSession() {
  session = (await kv.get('session')) || null;
  return session;
}
export const currentSession = () => session;
export const onSessionChange = (fn) => listeners.add(fn);

export async function setSession(s) {
  session = s;
  if (s) await kv.set('session', s); else await kv.del('session');
  listeners.forEach((fn) => fn(s));
}

async function refresh() {
  if (!session?.refresh_token) return false;
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const r = await fetch('/api/v1/auth/refresh', {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ refresh_token: session.refresh_token }),
        });
        if (!r.ok) return false;
        const pair = await r.json();
        await setSession({ ...session, access_token: pair.access_token, refresh_token: pair.refresh_token });
        return true;
      } catch {
        return false;
      } finally {
        setTimeout(() => { refreshing = null; }, 0);
      }
    })();
  }
  return refreshing;
}

/**
 * `api(path, {method, body, headers, raw})`: JSON in/out. Network failures throw an ApiError with
 * status 0; a 401 refreshes the tokens once and retries.
 */
export async function api(path, opts = {}, retried = false) {
  const headers = { ...(opts.headers || {}) };
  if (session?.access_token) headers.authorization = `Bearer ${session.access_token}`;
  let body = opts.body;
  if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob)) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path.startsWith('/') ? path : `/api/v1/${path}`, { method: opts.method || 'GET', headers, body });
  } catch (e) {
    throw new ApiError(0, { title: 'You are offline', detail: 'No connection to the server.' });
  }
  if (res.status === 401 && !retried && session?.refresh_token && !path.includes('auth/')) {
    if (await refresh()) return api(path, opts, true);
    await setSession(null);
  }
  if (res.headers.get('x-pm-offline')) throw new ApiError(0, { title: 'You are offline', detail: 'Showing saved data.' });
  if (!res.ok) {
    let problem = null;
    try { problem = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, problem);
  }
  if (opts.raw) return res;
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

export async function login(email, password) {
  const pair = await api('auth/login', { method: 'POST', body: { email, password } });
  await setSession({ access_token: pair.access_token, refresh_token: pair.refresh_token });
  const user = await api('me');
  await setSession({ ...session, user });
  return user;
}

export async function logout() {
  try { await api('auth/logout', { method: 'POST', body: { refresh_token: session?.refresh_token } }); } catch { /* offline is fine */ }
  await setSession(null);
}
