// Browser tests of the PWA: playwright-core drives the system chromium against a running
// pm-server. Run by pm-server's integration test `browser::pwa_in_chromium`, which starts the
// server, seeds a user, an organization, a project and tasks, and passes:
//
//   node pwa.mjs <base-url> <chromium> <screenshot-dir> <seed-json>
//   seed = { email, password, project_id, states: [{id,name}], drag_task, conflict_task,
//            notify_task (assigned to the user by someone else: an unread notification) }
//
// Prints one JSON line `{ok:true, checks:[…]}` on success; exits non-zero with the failing check.
import { chromium, devices } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';

const [base, executablePath, shots, seedJson] = process.argv.slice(2);
const seed = JSON.parse(seedJson);
mkdirSync(shots, { recursive: true });
const checks = [];
const started = Date.now();
const log = (name) => { checks.push(name); console.error(`ok ${((Date.now() - started) / 1000).toFixed(1)}s ${name}`); };
function assert(cond, msg) { if (!cond) throw new Error(`assertion failed: ${msg}`); }

// --- the API, as "another client" and to verify what the server holds ----------------------
let token = null;
async function rest(method, path, body) {
  const res = await fetch(`${base}/api/v1/${path}`, {
    method, headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}
// Waits are generous (as Playwright's own 30 s default): CI runs this beside every other test
// on two cores, and a slow pass is not a failure; the whole run is still bounded (below).
async function eventually(what, fn, ms = 30000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}
const tasksNamed = async (title) => (await rest('GET', `projects/${seed.project_id}/tasks?limit=100`)).items.filter((t) => t.title === title);

const browser = await chromium.launch({
  executablePath,
  args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
const timer = setTimeout(() => { console.error('FAIL: the browser tests took over 150 s'); process.exit(3); }, 150000);

async function signIn(page) {
  await page.goto(`${base}/`);
  await page.waitForURL('**/login');
  await page.getByLabel('E-mail').fill(seed.email);
  await page.getByLabel('Password').fill(seed.password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(/\/orgs\//);
  await page.getByRole('link', { name: /Platform/ }).click();
  await page.waitForURL(`**/projects/${seed.project_id}`);
  await page.getByTestId('board').waitFor();
}

const column = (page, stateId) => page.locator(`.board [data-state-id="${stateId}"]`);
const card = (page, title) => page.locator('.board .card', { hasText: title });

try {
  const r = await fetch(`${base}/api/v1/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: seed.email, password: seed.password }) });
  token = (await r.json()).access_token;

  // ---- desktop ----------------------------------------------------------------------------
  const desk = await browser.newContext({ viewport: { width: 1280, height: 820 }, permissions: ['geolocation', 'notifications'], geolocation: { latitude: 48.8584, longitude: 2.2945, accuracy: 25 } });
  const page = await desk.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  // What the app sends: offline work must go through the sync endpoint.
  const syncBodies = [];
  const restCreates = [];
  page.on('request', (req) => {
    if (req.method() !== 'POST') return;
    if (req.url().endsWith('/api/v1/sync')) syncBodies.push(req.postDataJSON());
    if (/\/projects\/[^/]+\/tasks$/.test(new URL(req.url()).pathname)) restCreates.push(req.url());
  });
  const syncResults = [];
  page.on('response', async (res) => {
    if (res.request().method() === 'POST' && res.url().endsWith('/api/v1/sync') && res.ok()) syncResults.push(...(await res.json()).results);
  });

  // Manifest fields and icons (decoded by the browser).
  await page.goto(`${base}/login`);
  const manifest = await (await page.request.get(`${base}/manifest.webmanifest`)).json();
  for (const f of ['name', 'short_name', 'id', 'scope', 'start_url', 'theme_color', 'background_color']) assert(manifest[f], `manifest.${f}`);
  assert(manifest.display === 'standalone', 'display standalone');
  const link = await page.getAttribute('link[rel=manifest]', 'href');
  assert(link === '/manifest.webmanifest', 'index.html links the manifest');
  const want = [['192x192', 'any'], ['512x512', 'any'], ['512x512', 'maskable']];
  for (const [sizes, purpose] of want) {
    const icon = manifest.icons.find((i) => i.sizes === sizes && (i.purpose || 'any').split(' ').includes(purpose));
    assert(icon && icon.type === 'image/png', `icon ${sizes} ${purpose}`);
    const dims = await page.evaluate(async (src) => {
      const res = await fetch(src);
      const bmp = await createImageBitmap(await res.blob());
      return [res.headers.get('content-type'), bmp.width, bmp.height];
    }, icon.src);
    assert(dims[0] === 'image/png' && `${dims[1]}x${dims[2]}` === sizes, `icon ${icon.src} decodes to ${sizes}, got ${dims}`);
  }
  log('manifest fields and icons valid');

  // `ready` resolves once a worker is *active*, which may still be `activating` (running its
  // activate handler); wait for `activated` (bounded) instead of reading the state once.
  const swState = await page.evaluate(async () => {
    const sw = (await navigator.serviceWorker.ready).active;
    if (sw.state !== 'activated') {
      await Promise.race([
        new Promise((done) => sw.addEventListener('statechange', () => sw.state === 'activated' && done())),
        new Promise((done) => setTimeout(done, 10000)),
      ]);
    }
    return sw.state;
  });
  assert(swState === 'activated', `service worker state ${swState}`);
  log('service worker activated');

  // A push message (delivered to the worker through DevTools, as a push service would) shows
  // a notification carrying the URL to open.
  const cdp0 = await desk.newCDPSession(page);
  const registrations = [];
  cdp0.on('ServiceWorker.workerRegistrationUpdated', (e) => registrations.push(...e.registrations));
  await cdp0.send('ServiceWorker.enable');
  await eventually('the worker registration', async () => registrations.find((r) => !r.isDeleted), 5000);
  // Delivered again every second until shown: on a loaded machine DevTools may report the
  // registration before its worker takes push events, and a message delivered then is lost
  // (seen in CI). The newest live registration is the one to target.
  let sentAt = 0;
  const shown = await eventually('the push notification', async () => {
    if (Date.now() - sentAt > 1000) {
      const reg = registrations.filter((r) => !r.isDeleted).at(-1);
      await cdp0.send('ServiceWorker.deliverPushMessage', {
        origin: new URL(base).origin, registrationId: reg.registrationId,
        data: JSON.stringify({ title: 'Sam assigned you PLT-4', body: 'Inspect the north stairwell', url: '/tasks/x', notification_id: 'n-1' }),
      }).catch(() => {});
      sentAt = Date.now();
    }
    const list = await page.evaluate(async () => (await (await navigator.serviceWorker.ready).getNotifications()).map((n) => ({ title: n.title, body: n.body, data: n.data })));
    return list.find((n) => n.title === 'Sam assigned you PLT-4');
  }, 15000);
  assert(shown.body === 'Inspect the north stairwell' && shown.data.url === '/tasks/x', `push notification ${JSON.stringify(shown)}`);
  await cdp0.detach();
  log('push message shows a notification');
  await page.screenshot({ path: join(shots, 'desktop-login.png') });

  await signIn(page);
  assert(await page.evaluate(() => !!navigator.serviceWorker.controller), 'page controlled by the service worker');
  await card(page, seed.drag_task).waitFor();
  await page.screenshot({ path: join(shots, 'desktop-board.png') });

  // Notifications: the unread badge, the list, opening one marks it read and opens its task.
  await page.getByTestId('unread').waitFor();
  await page.getByRole('link', { name: /^Notifications/ }).click();
  const note = page.locator('.notes li.unread').first();
  await note.waitFor();
  await page.screenshot({ path: join(shots, 'desktop-notifications.png') });
  await note.locator('a').click();
  await page.waitForURL('**/tasks/*');
  await page.getByLabel('Title', { exact: true }).waitFor();
  assert(await page.getByLabel('Title', { exact: true }).inputValue() === seed.notify_task, 'notification opens its task');
  await eventually('notification marked read', async () => (await rest('GET', 'me/notifications/unread-count')).count === 0);
  log('notifications: unread badge, list, open marks read');
  await page.goto(`${base}/projects/${seed.project_id}/list`);
  await page.locator('.rows').waitFor();
  await page.getByLabel('Search tasks').fill('stairwell');
  await eventually('search filters the list', async () => (await page.locator('.rows li').count()) === 1);
  await page.screenshot({ path: join(shots, 'desktop-list.png') });
  log('task list search filter');
  await page.goto(`${base}/projects/${seed.project_id}`);
  await card(page, seed.drag_task).waitFor();

  // Board drag with the mouse: first state → second state.
  const [s0, s1, s2] = seed.states;
  const from = await card(page, seed.drag_task).boundingBox();
  const to = await column(page, s1.id).boundingBox();
  await page.mouse.move(from.x + from.width / 2, from.y + from.height / 2);
  await page.mouse.down();
  await page.mouse.move(from.x + from.width / 2 + 20, from.y + from.height / 2 + 10, { steps: 4 });
  await page.mouse.move(to.x + to.width / 2, to.y + 80, { steps: 12 });
  await page.mouse.up();
  await column(page, s1.id).locator('.card', { hasText: seed.drag_task }).waitFor();
  await eventually('drag saved on the server', async () => (await tasksNamed(seed.drag_task))[0].state_id === s1.id);
  log('board drag (desktop, mouse) changes the state');

  // Live updates: a task another client creates appears on the open board (WebSocket event).
  await rest('POST', `projects/${seed.project_id}/tasks`, { title: 'Added by a colleague', state_id: s2.id });
  await column(page, s2.id).locator('.card', { hasText: 'Added by a colleague' }).waitFor({ timeout: 30000 });
  log('live update: a task created elsewhere appears on the board');

  // Offline reload renders the shell and the cached tasks.
  await desk.setOffline(true);
  await page.reload();
  await page.getByTestId('board').waitFor();
  await card(page, seed.conflict_task).waitFor();
  await page.getByTestId('offline').waitFor();
  log('offline reload renders the shell and cached tasks');

  // A task created offline exists exactly once after reconnecting.
  const offlineTitle = 'Replace the lobby lights (written offline)';
  await page.getByRole('button', { name: 'New task' }).first().click();
  await page.getByLabel('Title').fill(offlineTitle);
  await page.getByRole('button', { name: 'Create task' }).click();
  await card(page, offlineTitle).waitFor();
  await page.getByTestId('pending').waitFor();
  await page.screenshot({ path: join(shots, 'desktop-offline.png') });
  assert((await tasksNamed(offlineTitle)).length === 0, 'not on the server while offline');
  await desk.setOffline(false);
  await eventually('the offline task on the server', async () => (await tasksNamed(offlineTitle)).length === 1);
  await page.getByTestId('pending').waitFor({ state: 'detached' });
  await page.reload();
  await card(page, offlineTitle).waitFor();
  await page.evaluate(() => window.pm.flush());
  assert((await tasksNamed(offlineTitle)).length === 1, 'exactly once after reload and another flush');
  const sent = syncBodies.flatMap((b) => b.ops).filter((o) => o.kind === 'task.create' && o.data.title === offlineTitle);
  assert(sent.length >= 1 && restCreates.length === 0, `the create went through POST /api/v1/sync (${sent.length} sync, ${restCreates.length} REST)`);
  // Replaying the very op (as a client that never saw the answer would) changes nothing.
  const replay = await rest('POST', 'sync', { ops: [sent[0]] });
  assert(replay.results[0].status === 'applied' && replay.results[0].replayed === true, `replayed: ${JSON.stringify(replay.results[0])}`);
  assert((await tasksNamed(offlineTitle)).length === 1, 'exactly once after replaying the op');
  assert((await tasksNamed(offlineTitle))[0].id === sent[0].task_id, 'the task has the client-generated id');
  log('task created offline exists exactly once after reconnect');

  // A conflicting offline edit: shown field by field, the chosen value is saved.
  const target = (await tasksNamed(seed.conflict_task))[0];
  await page.goto(`${base}/tasks/${target.id}`);
  const title = page.getByLabel('Title', { exact: true });
  await title.waitFor();
  await desk.setOffline(true);
  await title.fill('Mine: offline title');
  await title.press('Tab');
  await page.getByTestId('pending').waitFor();
  await rest('PATCH', `tasks/${target.id}`, { title: 'Theirs: changed meanwhile', version: target.version });
  await desk.setOffline(false);
  const panel = page.getByTestId('conflict');
  await panel.waitFor({ timeout: 30000 });
  const fieldset = panel.locator('fieldset[data-field="title"]');
  assert((await fieldset.textContent()).includes('Theirs: changed meanwhile'), 'conflict shows theirs');
  assert((await fieldset.textContent()).includes('Mine: offline title'), 'conflict shows mine');
  assert((await fieldset.textContent()).includes(seed.conflict_task), 'conflict shows the base');
  await page.screenshot({ path: join(shots, 'desktop-conflict.png') });
  const clash = syncResults.find((r) => r.status === 'conflict' && r.current?.id === target.id);
  assert(clash && clash.conflicts.some((c) => c.field === 'title' && c.theirs === 'Theirs: changed meanwhile'), 'the server reported the conflict through /sync');
  await fieldset.getByLabel(/Mine/).check();
  await panel.getByRole('button', { name: 'Save resolution' }).click();
  await eventually('the chosen value saved', async () => (await rest('GET', `tasks/${target.id}`)).title === 'Mine: offline title');
  await panel.waitFor({ state: 'detached' });
  log('conflicting offline edit shown per field; chosen value saved');

  // Collaborative description (Yjs over /api/v1/collab): typing reaches the task's description.
  await page.getByTestId('collab-status').filter({ hasText: 'live' }).waitFor({ timeout: 30000 });
  const desc = page.getByLabel('Description');
  await desc.click();
  await desc.pressSequentially('Bring the tall ladder.');
  await eventually('description written back', async () => {
    const { description } = await rest('GET', `tasks/${target.id}`);
    if (description !== 'Bring the tall ladder.') throw new Error(`description is ${JSON.stringify(description)}; the editor shows ${JSON.stringify(await desc.inputValue())}`);
    return true;
  }, 20000);
  // The write-back is a task event, which re-renders the page (150 ms later): the editor keeps
  // the focus and the caret, so typing simply goes on where it was — keystrokes to whatever has
  // the focus, no click — and the same binding carries them.
  await page.waitForTimeout(1000);
  await page.keyboard.type(' Hold it steady.', { delay: 20 });
  await eventually('the continued typing written back', async () => {
    const { description } = await rest('GET', `tasks/${target.id}`);
    if (description !== 'Bring the tall ladder. Hold it steady.') throw new Error(`description is ${JSON.stringify(description)}`);
    return true;
  }, 20000);
  log('collaborative description edit is saved');


  // A photo via the file input uploads.
  const photo = pngBytes(64, 48);
  await page.setInputFiles('input[type=file][accept="image/*"]', { name: 'site-photo.png', mimeType: 'image/png', buffer: photo });
  await eventually('attachment on the server', async () => {
    const list = await rest('GET', `tasks/${target.id}/attachments`);
    return list.length === 1 && list[0].file_name === 'site-photo.png' && list[0].size === photo.length;
  });
  await page.getByRole('button', { name: 'site-photo.png' }).waitFor();
  log('photo attached via the file input uploads');

  // A check-in records the emulated position.
  await page.getByRole('button', { name: 'Check in here' }).click();
  const ci = await eventually('check-in on the server', async () => (await rest('GET', `tasks/${target.id}/check-ins`))[0]);
  const pos = ci.position || ci;
  assert(Math.abs(pos.lat - 48.8584) < 1e-6 && Math.abs(pos.lon - 2.2945) < 1e-6 && Math.abs(pos.accuracy_m - 25) < 1e-6, `check-in position ${JSON.stringify(pos)}`);
  await page.getByTestId('checkin').first().waitFor();
  log('check-in records the emulated position and accuracy');
  await page.screenshot({ path: join(shots, 'desktop-task.png'), fullPage: true });

  // Typing before the editor's first sync (the document's state held back on the wire) is
  // applied on top of the document once it arrives, not overwritten by it.
  const early = await rest('POST', `projects/${seed.project_id}/tasks`, { title: 'Early typing', description: 'Start.' });
  const held = [];
  let route = null;
  await page.routeWebSocket(/\/api\/v1\/collab\//, (ws) => {
    const server = ws.connectToServer();
    const r = { ws, hold: true };
    route = r;
    server.onMessage((m) => (r.hold ? held.push(m) : ws.send(m)));
    ws.onMessage((m) => server.send(m));
  });
  await page.goto(`${base}/tasks/${early.id}`);
  const earlyDesc = page.getByLabel('Description');
  await eventually('the early editor shown', async () => (await earlyDesc.inputValue()) === 'Start.');
  await eventually('the collab socket open, its sync held back', async () => held.length > 0, 10000);
  await earlyDesc.click();
  await page.keyboard.press('End');
  await page.keyboard.type(' Early words.', { delay: 10 });
  route.hold = false;
  for (const m of held.splice(0)) route.ws.send(m);
  await eventually('typing before the first sync written back', async () => {
    const { description } = await rest('GET', `tasks/${early.id}`);
    if (description !== 'Start. Early words.') throw new Error(`description is ${JSON.stringify(description)}; the editor shows ${JSON.stringify(await earlyDesc.inputValue())}`);
    return true;
  }, 20000);
  log('typing before the first sync is kept');
  await desk.close();

  // ---- phone ------------------------------------------------------------------------------
  const { defaultBrowserType, ...pixel } = devices['Pixel 7'];
  const phone = await browser.newContext({ ...pixel });
  const mobile = await phone.newPage();
  await signIn(mobile);
  await card(mobile, seed.drag_task).waitFor();
  await mobile.screenshot({ path: join(shots, 'phone-board.png') });
  // Touch drag by the card's grip onto the drop bar's target for the third state.
  const cdp = await phone.newCDPSession(mobile);
  const grip = await card(mobile, seed.drag_task).locator('.grip').boundingBox();
  const gx = grip.x + grip.width / 2;
  const gy = grip.y + grip.height / 2;
  const touch = (type, x, y) => cdp.send('Input.dispatchTouchEvent', { type, touchPoints: type === 'touchEnd' ? [] : [{ x, y }] });
  await touch('touchStart', gx, gy);
  for (let i = 1; i <= 5; i++) await touch('touchMove', gx + i * 4, gy + i * 6);
  const drop = await mobile.locator(`#dropbar [data-state-id="${s2.id}"]`).boundingBox();
  await mobile.screenshot({ path: join(shots, 'phone-dragging.png') });
  const steps = 10;
  for (let i = 1; i <= steps; i++) {
    await touch('touchMove', gx + 20 + ((drop.x + drop.width / 2 - gx - 20) * i) / steps, gy + 30 + ((drop.y + drop.height / 2 - gy - 30) * i) / steps);
  }
  await touch('touchEnd');
  await eventually('phone drag saved on the server', async () => (await tasksNamed(seed.drag_task))[0].state_id === s2.id);
  log('board drag (phone, touch) changes the state');

  // Swipe a card right: it moves to the next state.
  await mobile.reload();
  const swiper = (await tasksNamed('Mine: offline title'))[0];
  const box = await card(mobile, 'Mine: offline title').locator('.card-main').boundingBox();
  const sx = box.x + 30;
  const sy = box.y + box.height / 2;
  await touch('touchStart', sx, sy);
  for (let i = 1; i <= 8; i++) await touch('touchMove', sx + i * 18, sy + 2);
  await touch('touchEnd');
  const idx = seed.states.findIndex((s) => s.id === swiper.state_id);
  await eventually('swipe saved on the server', async () => (await rest('GET', `tasks/${swiper.id}`)).state_id === seed.states[idx + 1].id);
  log('swipe right moves a card to the next state (phone)');
  await mobile.waitForTimeout(300);
  await mobile.screenshot({ path: join(shots, 'phone-board-after.png') });
  await mobile.emulateMedia({ colorScheme: 'dark' });
  await mobile.waitForTimeout(400); // let colour transitions finish
  await mobile.screenshot({ path: join(shots, 'phone-board-dark.png') });
  await mobile.emulateMedia({ colorScheme: 'light' });
  await mobile.goto(`${base}/tasks/${target.id}`);
  await mobile.getByTestId('checkin').first().waitFor();
  await mobile.screenshot({ path: join(shots, 'phone-task.png'), fullPage: true });
  await mobile.goto(`${base}/projects/${seed.project_id}/list`);
  await mobile.locator('.rows').waitFor();
  await mobile.screenshot({ path: join(shots, 'phone-list.png') });
  await phone.close();

  console.log(JSON.stringify({ ok: true, checks, seconds: (Date.now() - started) / 1000 }));
} catch (e) {
  console.error(`FAIL: ${e.stack || e}`);
  console.log(JSON.stringify({ ok: false, error: String(e.message || e), checks }));
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser.close();
}

/** A small real PNG (a gradient), as a camera photo stand-in. */
function pngBytes(w, h) {
  const crcTable = new Int32Array(256).map((_, n) => { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; return c; });
  const crc = (buf) => { let c = -1; for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8); return (c ^ -1) >>> 0; };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4); len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4); c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13); ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2;
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) { const i = y * (w * 3 + 1) + 1 + x * 3; raw[i] = x * 4; raw[i + 1] = y * 5; raw[i + 2] = 200; }
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}
