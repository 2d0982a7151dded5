// The realtime WebSocket (/api/v1/ws, docs/realtime-protocol.md): subscriptions by channel with
// resume (`last_seq`), presence, notifications; reconnects with backoff and pings every 15 s.
import { currentSession } from './api.js';

let ws = null;
let backoff = 500;
let pingTimer = null;
const channels = new Map(); // channel -> { lastSeq, handlers:Set }
const presence = new Map(); // channel -> Map(user -> status)
const globalHandlers = new Set();

export const onFrame = (fn) => { globalHandlers.add(fn); return () => globalHandlers.delete(fn); };
export const presenceOf = (channel) => [...(presence.get(channel) || new Map()).entries()];

function send(frame) {
  if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
}

export function connect() {
  const s = currentSession();
  if (!s?.access_token || ws) return;
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  ws = new WebSocket(`${proto}://${location.host}/api/v1/ws?access_token=${encodeURIComponent(s.access_token)}`);
  ws.onopen = () => {
    backoff = 500;
    for (const [channel, c] of channels) {
      send(c.lastSeq != null && !channel.startsWith('user:') ? { type: 'subscribe', channel, last_seq: c.lastSeq } : { type: 'subscribe', channel });
    }
    pingTimer = setInterval(() => send({ type: 'ping' }), 15000);
    dispatch({ type: 'connected' });
  };
  ws.onmessage = (m) => {
    let f;
    try { f = JSON.parse(m.data); } catch { return; }
    const c = f.channel && channels.get(f.channel);
    if (f.type === 'subscribed' && c) c.lastSeq = f.seq;
    if (f.type === 'event' && c) c.lastSeq = f.seq;
    if (f.type === 'presence') {
      const p = presence.get(f.channel) || new Map();
      for (const j of [...(f.joined || []), ...(f.changed || [])]) p.set(j.user, j.status);
      for (const u of f.left || []) p.delete(u);
      presence.set(f.channel, p);
    }
    dispatch(f);
  };
  ws.onclose = () => {
    clearInterval(pingTimer);
    ws = null;
    presence.clear();
    dispatch({ type: 'disconnected' });
    if (currentSession()) setTimeout(connect, backoff = Math.min(backoff * 2, 15000));
  };
}

export function disconnect() {
  channels.clear();
  if (ws) { const w = ws; ws = null; w.onclose = null; w.close(); }
}

function dispatch(f) {
  globalHandlers.forEach((fn) => fn(f));
  const c = f.channel && channels.get(f.channel);
  c?.handlers.forEach((fn) => fn(f));
}

/** Subscribes to a channel for as long as the returned function is not called. */
export function subscribe(channel, handler) {
  let c = channels.get(channel);
  if (!c) {
    c = { lastSeq: null, handlers: new Set() };
    channels.set(channel, c);
    send({ type: 'subscribe', channel });
  }
  c.handlers.add(handler);
  return () => {
    c.handlers.delete(handler);
    if (!c.handlers.size) {
      channels.delete(channel);
      presence.delete(channel);
      send({ type: 'unsubscribe', channel });
    }
  };
}
