// pm's service worker. The build (build.mjs) fills in VERSION, a hash of the app shell, and
// PRECACHE, its file list, so a new build gets a new cache and old ones are dropped on
// activate. Navigations: network first, then the cached shell (app routes) or the offline page.
// API GETs: network first, the last good answer when offline (marked `x-pm-offline: 1`).
// Static assets: cache first (their names carry content hashes). Push: shows the notification.
const VERSION = 'b807212e868a';
const SHELL = `pm-shell-${VERSION}`;
const API = 'pm-api-v1';
const PRECACHE = ["/index.html","/offline.html","/manifest.webmanifest","/icons/icon-192.png","/icons/icon-512.png","/icons/maskable-512.png","/assets/app-ARX79YaqdT.js","/assets/collab-9uBkJ4vWWq.js","/assets/styles-BnP4j9ntdj.css"];
const APP_ROUTES = /^\/($|login|register|orgs\/|projects\/|tasks\/|notifications)/;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL).then((c) => c.addAll(PRECACHE)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) {
      if (key.startsWith('pm-shell-') && key !== SHELL) await caches.delete(key);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (url.origin !== location.origin || req.method !== 'GET') return;
  if (url.pathname.startsWith('/api/')) {
    if (url.pathname.startsWith('/api/v1/ws') || url.pathname.startsWith('/api/v1/collab')) return;
    event.respondWith(apiNetworkFirst(req));
  } else if (req.mode === 'navigate') {
    event.respondWith(navigate(req, url));
  } else {
    event.respondWith(caches.match(req).then((hit) => hit || fetch(req)));
  }
});

async function apiNetworkFirst(req) {
  const cache = await caches.open(API);
  try {
    const res = await fetch(req);
    if (res.ok && !req.headers.has('range')) cache.put(req, res.clone());
    return res;
  } catch (e) {
    const hit = await cache.match(req);
    if (!hit) throw e;
    const headers = new Headers(hit.headers);
    headers.set('x-pm-offline', '1');
    return new Response(hit.body, { status: hit.status, statusText: hit.statusText, headers });
  }
}

async function navigate(req, url) {
  try {
    return await fetch(req);
  } catch {
    const shell = APP_ROUTES.test(url.pathname) && (await caches.match('/index.html', { cacheName: SHELL }));
    return shell || (await caches.match('/offline.html', { cacheName: SHELL })) || Response.error();
  }
}

self.addEventListener('push', (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { data = { body: event.data?.text() }; }
  event.waitUntil(self.registration.showNotification(data.title || 'pm', {
    body: data.body || '',
    icon: '/icons/icon-192.png',
    badge: '/icons/icon-192.png',
    tag: data.notification_id,
    data: { url: data.url || '/notifications' },
  }));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const target = new URL(event.notification.data?.url || '/', location.origin).href;
  event.waitUntil((async () => {
    const wins = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of wins) {
      if (w.url === target && 'focus' in w) return w.focus();
    }
    return self.clients.openWindow(target);
  })());
});

// The app asks for a replay when it regains connectivity; tell open windows too.
self.addEventListener('sync', (event) => {
  event.waitUntil(self.clients.matchAll().then((ws) => ws.forEach((w) => w.postMessage({ type: 'sync' }))));
});
