// The pm web app: routing, the app bar, and the screens (login/register, organizations and
// projects, board, task list, task detail, notifications). Data comes from /api/v1 and is kept
// in IndexedDB so every screen renders offline; mutations go through the outbox (outbox.js).
import { api, ApiError, loadSession, setSession, currentSession, login, logout, onSessionChange } from './api.js';
import { kv } from './db.js';
import {
  enqueue, flush, loadOutbox, onOutboxChange, overlayTasks, overlayTask, pendingOps, conflicts,
  resolve, updateTask, uuid7, rememberTask, forgetTask, pendingFor,
} from './outbox.js';
import * as rt from './realtime.js';
import { h, clear, icon, toast, dialog, STATE_COLORS, PRIORITIES, relTime, avatar as avatarOf, empty, spinner } from './ui.js';

/** An avatar; the signed-in user's shows their initials. */
const avatar = (id, label) => {
  const me = currentSession()?.user;
  return avatarOf(id, label ?? (me && me.id === id ? me.display_name : ''));
};

const app = document.getElementById('app');
const state = { online: navigator.onLine, unread: 0, stale: false };
let cleanup = [];
let rerender = null;

// --- data: network first, IndexedDB snapshot when offline -----------------------------------

/** GET with a snapshot: returns the server's answer (and stores it) or the stored one offline. */
async function cached(key, path, { all = false } = {}) {
  try {
    const data = all ? await getAll(path) : await api(path);
    await kv.set(key, data);
    setOnline(true);
    return data;
  } catch (e) {
    if (e instanceof ApiError && e.status > 0) throw e;
    setOnline(false);
    const saved = await kv.get(key);
    if (saved === undefined) throw e;
    return saved;
  }
}

async function getAll(path) {
  const items = [];
  let cursor = null;
  for (let i = 0; i < 20; i++) {
    const sep = path.includes('?') ? '&' : '?';
    const page = await api(`${path}${sep}limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
    items.push(...page.items);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  return items;
}

async function projectTasks(pid) {
  const tasks = await cached(`tasks:${pid}`, `projects/${pid}/tasks`, { all: true });
  return overlayTasks(pid, tasks);
}

/** Pulls the delta feed (`/sync/changes`) into the snapshots. */
async function pullChanges() {
  let since = (await kv.get('sync-since')) || 0;
  try {
    for (let i = 0; i < 10; i++) {
      const r = await api(`sync/changes?since=${since}&limit=500`);
      for (const c of r.changes || []) {
        if (c.task) await rememberTask(c.task);
        else if (c.task_id && c.kind === 'task.deleted' && c.project_id) await forgetTask(c.task_id, c.project_id);
      }
      since = r.next_since ?? since;
      await kv.set('sync-since', since);
      if (!r.has_more) break;
    }
  } catch { /* offline or no delta feed: the screens fetch what they show anyway */ }
}

function setOnline(on) {
  if (state.online === on) return;
  state.online = on;
  renderBar();
}

// --- routing ---------------------------------------------------------------------------------

const routes = [
  [/^\/login$/, loginScreen, { public: true }],
  [/^\/register$/, registerScreen, { public: true }],
  [/^\/$/, orgsScreen],
  [/^\/orgs\/([\w-]+)$/, projectsScreen],
  [/^\/projects\/([\w-]+)$/, boardScreen],
  [/^\/projects\/([\w-]+)\/list$/, listScreen],
  [/^\/tasks\/([\w-]+)$/, taskScreen],
  [/^\/notifications$/, notificationsScreen],
];

export function go(path, replace = false) {
  if (replace) history.replaceState(null, '', path); else history.pushState(null, '', path);
  route();
}

async function route() {
  cleanup.forEach((fn) => fn());
  cleanup = [];
  rerender = null;
  const path = location.pathname.replace(/\/index\.html$/, '/');
  const match = routes.map(([re, fn, o]) => [path.match(re), fn, o || {}]).find(([m]) => m);
  if (!match) return go('/', true);
  const [m, screen, opts] = match;
  if (!opts.public && !currentSession()) return go('/login', true);
  if (opts.public && currentSession()) return go('/', true);
  renderBar();
  const main = document.getElementById('main');
  clear(main, spinner());
  window.scrollTo(0, 0);
  const run = async () => {
    try {
      await screen(main, ...m.slice(1));
    } catch (e) {
      console.error(e);
      clear(main, empty(e.status === 404 ? 'Not found' : 'Something went wrong',
        e.status === 0 ? 'You are offline and this page was never loaded here.' : e.message,
        h('button', { class: 'btn', onclick: () => go('/') }, 'Go home')));
    }
  };
  rerender = run;
  await run();
}

let rerenderTimer = null;
function scheduleRerender() {
  clearTimeout(rerenderTimer);
  rerenderTimer = setTimeout(() => rerender?.(), 150);
}

// --- chrome: app bar, offline/sync status, conflict banner ----------------------------------

let barTitle = 'pm';
let barBack = null;
function setBar(title, back) {
  barTitle = title;
  barBack = back;
  document.title = title === 'pm' ? 'pm' : `${title} · pm`;
  renderBar();
}

function renderBar() {
  const bar = document.getElementById('bar');
  const s = currentSession();
  const pending = pendingOps().filter((o) => o.status === 'pending').length;
  const clash = conflicts().length;
  clear(bar,
    h('div', { class: 'bar-left' },
      barBack ? h('button', { class: 'btn-icon', 'aria-label': 'Back', onclick: () => go(barBack) }, icon('back')) :
        h('a', { class: 'logo', href: '/', 'aria-label': 'Home', onclick: nav('/') }, h('img', { src: '/icons/icon-192.png', alt: '', width: 28, height: 28 })),
      h('h1', { class: 'bar-title' }, barTitle)),
    s && h('div', { class: 'bar-right' },
      !state.online && h('span', { class: 'chip chip-offline', role: 'status', 'data-testid': 'offline' }, icon('offline', 14), 'Offline'),
      pending > 0 && h('span', { class: 'chip chip-pending', role: 'status', 'data-testid': 'pending', title: 'Changes waiting to sync' }, icon('cloud', 14), `${pending} to sync`),
      h('a', { class: 'btn-icon bell', href: '/notifications', onclick: nav('/notifications'), 'aria-label': `Notifications, ${state.unread} unread` },
        icon('bell'), state.unread > 0 && h('span', { class: 'badge', 'data-testid': 'unread' }, state.unread > 99 ? '99+' : state.unread)),
      h('button', { class: 'btn-icon', 'aria-label': 'Sign out', title: 'Sign out', onclick: signOut }, icon('logout'))));
  const banner = document.getElementById('banner');
  clear(banner, clash > 0 && h('button', { class: 'conflict-banner', 'data-testid': 'conflict-banner', onclick: () => resolveConflicts() },
    icon('alert', 18), clash > 1 ? `${clash} offline changes conflict with edits made elsewhere — review` : 'An offline change conflicts with an edit made elsewhere — review'));
}

const nav = (path) => (e) => { e.preventDefault(); go(path); };

async function signOut() {
  await logout();
  rt.disconnect();
  await kv.clear();
  if ('caches' in window) for (const k of await caches.keys()) if (k.startsWith('pm-api')) await caches.delete(k);
  go('/login', true);
}

// --- login / register ------------------------------------------------------------------------

function authCard(title, subtitle, form, footer) {
  return h('div', { class: 'auth' },
    h('div', { class: 'auth-card' },
      h('img', { src: '/icons/icon-192.png', alt: '', width: 56, height: 56, class: 'auth-logo' }),
      h('h2', {}, title), h('p', { class: 'muted' }, subtitle), form, h('p', { class: 'auth-foot' }, footer)));
}

function field(label, input) {
  return h('label', { class: 'field' }, h('span', {}, label), input);
}

function formError(form, e) {
  const box = form.querySelector('.form-error');
  box.textContent = e.problem?.field ? `${e.problem.field}: ${e.message}` : e.message;
  box.hidden = false;
}

async function loginScreen(main) {
  setBar('pm', null);
  const form = h('form', { class: 'stack', onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    const btn = form.querySelector('button');
    btn.disabled = true;
    try {
      await login(f.get('email'), f.get('password'));
      startSession();
      go('/', true);
    } catch (err) {
      formError(form, err);
    } finally {
      btn.disabled = false;
    }
  } },
  h('div', { class: 'form-error', role: 'alert', hidden: true }),
  field('E-mail', h('input', { name: 'email', type: 'email', autocomplete: 'username', required: true })),
  field('Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
  h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Sign in'));
  clear(main, authCard('Welcome back', 'Sign in to your workspace.', form,
    ['New here? ', h('a', { href: '/register', onclick: nav('/register') }, 'Create an account')]));
}

async function registerScreen(main) {
  setBar('pm', null);
  const form = h('form', { class: 'stack', onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    try {
      const body = { email: f.get('email'), display_name: f.get('display_name'), password: f.get('password') };
      if (f.get('invite_token')) body.invite_token = f.get('invite_token');
      await api('auth/register', { method: 'POST', body });
      await login(body.email, body.password);
      startSession();
      go('/', true);
    } catch (err) {
      formError(form, err);
    }
  } },
  h('div', { class: 'form-error', role: 'alert', hidden: true }),
  field('Name', h('input', { name: 'display_name', autocomplete: 'name', required: true })),
  field('E-mail', h('input', { name: 'email', type: 'email', autocomplete: 'username', required: true })),
  field('Password', h('input', { name: 'password', type: 'password', autocomplete: 'new-password', minlength: 8, required: true })),
  field('Invite code (if you were given one)', h('input', { name: 'invite_token', autocomplete: 'off' })),
  h('button', { class: 'btn btn-primary btn-block', type: 'submit' }, 'Create account'));
  clear(main, authCard('Create your account', 'Plan, track and ship — online or off.', form,
    ['Already registered? ', h('a', { href: '/login', onclick: nav('/login') }, 'Sign in')]));
}

// --- organizations and projects --------------------------------------------------------------

async function orgsScreen(main) {
  setBar('Organizations', null);
  const orgs = await cached('orgs', 'orgs');
  if (orgs.length === 1 && !sessionStorage.getItem('stay-orgs')) {
    sessionStorage.setItem('stay-orgs', '1');
    return go(`/orgs/${orgs[0].id}`, true);
  }
  clear(main, h('section', { class: 'page' },
    h('div', { class: 'page-head' }, h('h2', {}, 'Your organizations'),
      h('button', { class: 'btn btn-primary', onclick: createOrg }, icon('plus', 16), 'New organization')),
    orgs.length ? h('ul', { class: 'cards' }, orgs.map((o) => h('li', {},
      h('a', { class: 'card-link', href: `/orgs/${o.id}`, onclick: nav(`/orgs/${o.id}`) },
        avatar(o.id, o.name), h('div', {}, h('strong', {}, o.name), h('span', { class: 'muted' }, o.slug))))))
      : empty('No organizations yet', 'Create one to start planning with your team.')));
}

async function createOrg() {
  const r = await dialog('New organization', (close) => {
    const form = h('form', { class: 'stack', onsubmit: async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      try { close(await api('orgs', { method: 'POST', body: { name: f.get('name'), slug: f.get('slug') } })); } catch (err) { formError(form, err); }
    } },
    h('div', { class: 'form-error', role: 'alert', hidden: true }),
    field('Name', h('input', { name: 'name', required: true, oninput: (e) => { form.slug.value = e.target.value.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, ''); } })),
    field('Slug', h('input', { name: 'slug', required: true, pattern: '[a-z0-9-]+' })),
    h('button', { class: 'btn btn-primary btn-block' }, 'Create'));
    return form;
  });
  if (r) go(`/orgs/${r.id}`);
}

async function projectsScreen(main, orgId) {
  const [org, projects] = await Promise.all([cached(`org:${orgId}`, `orgs/${orgId}`), cached(`projects:${orgId}`, `orgs/${orgId}/projects`)]);
  setBar(org.name, '/');
  sessionStorage.setItem('stay-orgs', '1');
  clear(main, h('section', { class: 'page' },
    h('div', { class: 'page-head' }, h('h2', {}, 'Projects'),
      h('button', { class: 'btn btn-primary', onclick: () => createProject(orgId) }, icon('plus', 16), 'New project')),
    projects.length ? h('ul', { class: 'cards' }, projects.map((p) => h('li', {},
      h('a', { class: 'card-link', href: `/projects/${p.id}`, onclick: nav(`/projects/${p.id}`) },
        h('span', { class: 'key' }, p.key), h('div', {}, h('strong', {}, p.name), h('span', { class: 'muted' }, p.description || 'No description'))))))
      : empty('No projects yet', 'Projects hold tasks, a board and their workflow.')));
}

async function createProject(orgId) {
  const r = await dialog('New project', (close) => {
    const form = h('form', { class: 'stack', onsubmit: async (e) => {
      e.preventDefault();
      const f = new FormData(form);
      try { close(await api(`orgs/${orgId}/projects`, { method: 'POST', body: { name: f.get('name'), key: f.get('key') } })); } catch (err) { formError(form, err); }
    } },
    h('div', { class: 'form-error', role: 'alert', hidden: true }),
    field('Name', h('input', { name: 'name', required: true, oninput: (e) => { form.key.value = e.target.value.replace(/[^A-Za-z]/g, '').slice(0, 4).toUpperCase(); } })),
    field('Key', h('input', { name: 'key', required: true, pattern: '[A-Z][A-Z0-9]{1,9}' })),
    h('button', { class: 'btn btn-primary btn-block' }, 'Create'));
    return form;
  });
  if (r) go(`/projects/${r.id}`);
}

// --- board -----------------------------------------------------------------------------------

async function loadProject(pid) {
  const [project, states, tasks] = await Promise.all([
    cached(`project:${pid}`, `projects/${pid}`), cached(`states:${pid}`, `projects/${pid}/states`), projectTasks(pid)]);
  return { project, states: [...states].sort((a, b) => a.position - b.position), tasks };
}

function liveProject(pid) {
  cleanup.push(rt.subscribe(`project:${pid}`, (f) => { if (f.type === 'event' || f.type === 'resync') scheduleRerender(); }));
}

function projectTabs(pid, active) {
  return h('nav', { class: 'tabs', 'aria-label': 'Project views' },
    h('a', { href: `/projects/${pid}`, class: active === 'board' ? 'active' : '', 'aria-current': active === 'board' ? 'page' : null, onclick: nav(`/projects/${pid}`) }, icon('board', 16), 'Board'),
    h('a', { href: `/projects/${pid}/list`, class: active === 'list' ? 'active' : '', 'aria-current': active === 'list' ? 'page' : null, onclick: nav(`/projects/${pid}/list`) }, icon('list', 16), 'List'));
}

async function boardScreen(main, pid) {
  const { project, states, tasks } = await loadProject(pid);
  setBar(project.name, `/orgs/${project.org_id}`);
  if (!rerender.live) { liveProject(pid); rerender.live = true; }
  const byState = new Map(states.map((s) => [s.id, []]));
  for (const t of tasks.filter((t) => !t.archived)) (byState.get(t.state_id) || byState.get(states[0]?.id))?.push(t);
  const board = h('div', { class: 'board', 'data-testid': 'board' }, states.map((s) => {
    const list = byState.get(s.id).sort((a, b) => (a.rank < b.rank ? -1 : 1));
    return h('section', { class: 'column', dataset: { stateId: s.id }, 'aria-label': s.name, style: { '--state': STATE_COLORS[s.category] } },
      h('header', { class: 'column-head' }, h('span', { class: 'dot' }), h('h3', {}, s.name), h('span', { class: 'count' }, list.length)),
      h('div', { class: 'column-body' }, list.length ? list.map((t) => taskCard(t, states)) : h('p', { class: 'column-empty' }, 'Drop tasks here')));
  }));
  clear(main, h('section', { class: 'page page-board' },
    h('div', { class: 'page-head' }, projectTabs(pid, 'board'),
      h('button', { class: 'btn btn-primary', onclick: () => newTask(project, states) }, icon('plus', 16), h('span', { class: 'hide-sm' }, 'New task'))),
    tasks.length ? board : h('div', {}, board, empty('No tasks yet', 'Create the first task of this project.'))),
  h('button', { class: 'fab', 'aria-label': 'New task', onclick: () => newTask(project, states) }, icon('plus', 26)));
  enableDrag(board, states, tasks);
}

function taskCard(t, states) {
  const st = states.find((s) => s.id === t.state_id);
  return h('article', { class: `card${t._pending ? ' pending' : ''}`, dataset: { taskId: t.id }, tabindex: 0, 'aria-label': t.title,
    onkeydown: (e) => { if (e.key === 'Enter') go(`/tasks/${t.id}`); } },
  h('button', { class: 'grip', type: 'button', 'aria-label': `Move ${t.title}`, tabindex: -1 }, icon('grip', 16)),
  h('div', { class: 'card-main' },
    h('div', { class: 'card-top' }, h('span', { class: 'ref' }, t.reference),
      t._pending && h('span', { class: 'sync-dot', title: 'Not synced yet' }, icon('cloud', 14)),
      t.priority && t.priority !== 'none' && h('span', { class: `prio prio-${t.priority}` }, t.priority)),
    h('p', { class: 'card-title' }, t.title),
    h('div', { class: 'card-meta' },
      t.due_date && h('span', { class: 'due' }, `Due ${new Date(t.due_date).toLocaleDateString(undefined, { month: 'short', day: 'numeric' })}`),
      ...(t.assignees || []).slice(0, 3).map((a) => avatar(a)))));
}

/** Pointer-driven drag (mouse anywhere on a card, touch on its grip) and touch swipe. */
function enableDrag(board, states, tasks) {
  let drag = null;
  const columnAt = (x, y) => document.elementsFromPoint(x, y).map((el) => el.closest?.('[data-state-id]')).find(Boolean);
  board.addEventListener('pointerdown', (e) => {
    const card = e.target.closest('.card');
    if (!card || e.button > 0) return;
    const onGrip = !!e.target.closest('.grip');
    const task = tasks.find((t) => t.id === card.dataset.taskId);
    drag = { card, task, x: e.clientX, y: e.clientY, pointerId: e.pointerId, mode: null, touch: e.pointerType !== 'mouse', onGrip };
    if (onGrip || !drag.touch) card.setPointerCapture(e.pointerId);
  });
  board.addEventListener('pointermove', (e) => {
    if (!drag || e.pointerId !== drag.pointerId) return;
    const dx = e.clientX - drag.x;
    const dy = e.clientY - drag.y;
    if (!drag.mode) {
      if (Math.hypot(dx, dy) < 6) return;
      drag.mode = drag.touch && !drag.onGrip ? (Math.abs(dx) > Math.abs(dy) ? 'swipe' : 'none') : 'drag';
      if (drag.mode === 'drag') startGhost(drag, e);
    }
    if (drag.mode === 'drag') {
      drag.ghost.style.transform = `translate(${e.clientX - drag.offX}px, ${e.clientY - drag.offY}px) rotate(2deg)`;
      const col = columnAt(e.clientX, e.clientY);
      board.parentElement.querySelectorAll('.drop-target').forEach((c) => c.classList.toggle('over', c === col));
      board.querySelectorAll('.column').forEach((c) => c.classList.toggle('over', c === col));
    } else if (drag.mode === 'swipe') {
      drag.card.style.transform = `translateX(${dx}px)`;
      drag.card.classList.toggle('swipe-next', dx > 70);
      drag.card.classList.toggle('swipe-prev', dx < -70);
    }
  });
  const end = (e, cancelled) => {
    if (!drag || e.pointerId !== drag.pointerId) return;
    const d = drag;
    drag = null;
    if (d.mode === 'drag') {
      const col = cancelled ? null : columnAt(e.clientX, e.clientY);
      d.ghost.remove();
      document.getElementById('dropbar')?.remove();
      d.card.classList.remove('dragging');
      board.querySelectorAll('.column.over').forEach((c) => c.classList.remove('over'));
      if (col && col.dataset.stateId !== d.task.state_id) moveTask(d.task, col.dataset.stateId, states);
    } else if (d.mode === 'swipe') {
      const dx = e.clientX - d.x;
      d.card.style.transform = '';
      d.card.classList.remove('swipe-next', 'swipe-prev');
      const i = states.findIndex((s) => s.id === d.task.state_id);
      const next = !cancelled && (dx > 70 ? states[i + 1] : dx < -70 ? states[i - 1] : null);
      if (next) moveTask(d.task, next.id, states);
    } else if (!d.mode && !cancelled && !d.onGrip) {
      go(`/tasks/${d.task.id}`);
    }
  };
  board.addEventListener('pointerup', (e) => end(e, false));
  board.addEventListener('pointercancel', (e) => end(e, true));

  function startGhost(d, e) {
    const r = d.card.getBoundingClientRect();
    d.offX = e.clientX - r.left;
    d.offY = e.clientY - r.top;
    d.ghost = d.card.cloneNode(true);
    d.ghost.classList.add('ghost');
    d.ghost.style.width = `${r.width}px`;
    document.body.append(d.ghost);
    d.card.classList.add('dragging');
    navigator.vibrate?.(10);
    // On narrow screens not every column is visible: a bar of drop targets, one per state.
    if (window.matchMedia('(max-width: 720px)').matches) {
      document.body.append(h('div', { id: 'dropbar', class: 'dropbar', 'aria-hidden': 'true' },
        states.map((s) => h('div', { class: 'drop-target', dataset: { stateId: s.id }, style: { '--state': STATE_COLORS[s.category] } }, s.name))));
    }
  }
}

async function moveTask(task, stateId, states) {
  const st = states.find((s) => s.id === stateId);
  await updateTask(task, { state_id: stateId });
  toast(`${task.reference} moved to ${st?.name}`, 'ok');
  scheduleRerender();
}

async function newTask(project, states) {
  const data = await dialog('New task', (close) => {
    const form = h('form', { class: 'stack', onsubmit: (e) => {
      e.preventDefault();
      const f = new FormData(form);
      const d = { title: f.get('title').trim(), state_id: f.get('state_id'), priority: f.get('priority') };
      if (f.get('description')) d.description = f.get('description');
      if (f.get('due_date')) d.due_date = f.get('due_date');
      close(d);
    } },
    field('Title', h('input', { name: 'title', required: true, maxlength: 500, autofocus: true, placeholder: 'What needs to be done?' })),
    field('Description', h('textarea', { name: 'description', rows: 3, placeholder: 'Markdown welcome' })),
    h('div', { class: 'row' },
      field('State', h('select', { name: 'state_id' }, states.map((s) => h('option', { value: s.id, selected: s.category === 'unstarted' }, s.name)))),
      field('Priority', h('select', { name: 'priority' }, PRIORITIES.map((p) => h('option', { value: p }, p))))),
    field('Due date', h('input', { name: 'due_date', type: 'date' })),
    h('button', { class: 'btn btn-primary btn-block' }, 'Create task'));
    return form;
  });
  if (!data) return;
  await enqueue({ kind: 'task.create', project_id: project.id, task_id: uuid7(), data });
  toast(state.online ? 'Task created' : 'Task saved — it will sync when you are back online', 'ok');
  scheduleRerender();
}

// --- list ------------------------------------------------------------------------------------

async function listScreen(main, pid) {
  const [project, states] = await Promise.all([cached(`project:${pid}`, `projects/${pid}`), cached(`states:${pid}`, `projects/${pid}/states`)]);
  setBar(project.name, `/orgs/${project.org_id}`);
  if (!rerender.live) { liveProject(pid); rerender.live = true; }
  const params = new URLSearchParams(location.search);
  const results = h('div', { class: 'list', 'aria-live': 'polite' }, spinner());
  const form = h('form', { class: 'filters', role: 'search', onsubmit: (e) => e.preventDefault(), oninput: () => { clearTimeout(form.t); form.t = setTimeout(apply, 250); } },
    h('label', { class: 'search' }, icon('search', 16), h('input', { name: 'q', type: 'search', placeholder: 'Search tasks', 'aria-label': 'Search tasks', value: params.get('q') || '' })),
    h('select', { name: 'state', 'aria-label': 'State' }, h('option', { value: '' }, 'All states'), states.map((s) => h('option', { value: s.id, selected: params.get('state') === s.id }, s.name))),
    h('select', { name: 'priority', 'aria-label': 'Priority' }, h('option', { value: '' }, 'Any priority'), PRIORITIES.map((p) => h('option', { value: p, selected: params.get('priority') === p }, p))),
    h('label', { class: 'toggle' }, h('input', { type: 'checkbox', name: 'mine', checked: params.get('assignee') === 'me' }), 'Assigned to me'));
  async function apply() {
    const f = new FormData(form);
    const q = new URLSearchParams();
    if (f.get('q')) q.set('q', f.get('q'));
    if (f.get('state')) q.set('state', f.get('state'));
    if (f.get('priority')) q.set('priority', f.get('priority'));
    if (f.get('mine')) q.set('assignee', 'me');
    history.replaceState(null, '', `${location.pathname}${q.size ? `?${q}` : ''}`);
    let tasks;
    try {
      const items = await api(`projects/${pid}/tasks?${q}&limit=100`);
      tasks = q.size ? items.items : overlayTasks(pid, items.items);
      setOnline(true);
    } catch (e) {
      if (e.status > 0) throw e;
      // Offline: the same filters over the saved snapshot.
      setOnline(false);
      const needle = (f.get('q') || '').toLowerCase();
      const me = currentSession()?.user?.id;
      tasks = overlayTasks(pid, (await kv.get(`tasks:${pid}`)) || []).filter((t) =>
        (!needle || `${t.title} ${t.description}`.toLowerCase().includes(needle)) && (!f.get('state') || t.state_id === f.get('state')) &&
        (!f.get('priority') || t.priority === f.get('priority')) && (!f.get('mine') || (t.assignees || []).includes(me)));
    }
    clear(results, tasks.length ? h('ul', { class: 'rows' }, tasks.map((t) => {
      const st = states.find((s) => s.id === t.state_id);
      return h('li', {}, h('a', { class: `row-link${t._pending ? ' pending' : ''}`, href: `/tasks/${t.id}`, onclick: nav(`/tasks/${t.id}`) },
        h('span', { class: 'dot', style: { '--state': STATE_COLORS[st?.category] } }),
        h('span', { class: 'ref' }, t.reference), h('span', { class: 'row-title' }, t.title),
        t.priority !== 'none' && h('span', { class: `prio prio-${t.priority}` }, t.priority),
        h('span', { class: 'state-pill hide-sm', style: { '--state': STATE_COLORS[st?.category] } }, st?.name)));
    })) : empty('No matching tasks', 'Try another search or fewer filters.'));
  }
  clear(main, h('section', { class: 'page' }, h('div', { class: 'page-head' }, projectTabs(pid, 'list'),
    h('button', { class: 'btn btn-primary', onclick: () => newTask(project, states) }, icon('plus', 16), h('span', { class: 'hide-sm' }, 'New task'))), form, results));
  await apply();
}

// --- task detail -----------------------------------------------------------------------------

async function loadTask(id) {
  try {
    const t = await api(`tasks/${id}`);
    await kv.set(`task:${id}`, t);
    setOnline(true);
    return overlayTask(t);
  } catch (e) {
    if (e.status > 0) throw e;
    setOnline(false);
    let t = await kv.get(`task:${id}`);
    if (!t) {
      const create = pendingOps().find((o) => o.kind === 'task.create' && o.task_id === id);
      if (create) return overlayTask({ ...create, ...overlayTasks(create.project_id, []).find((x) => x.id === id) });
      for (const key of (await listKeys('tasks:'))) {
        t = ((await kv.get(key)) || []).find((x) => x.id === id);
        if (t) break;
      }
    }
    if (!t) throw e;
    return overlayTask(t);
  }
}

async function listKeys(prefix) {
  const ids = (await kv.get('projects-seen')) || [];
  return ids.map((p) => `${prefix}${p}`);
}

const soft = async (key, path, fallback = []) => {
  try { return await cached(key, path); } catch { return fallback; }
};

async function taskScreen(main, id) {
  const task = await loadTask(id);
  const states = await soft(`states:${task.project_id}`, `projects/${task.project_id}/states`);
  const [comments, attachments, checkins, activity] = await Promise.all([
    soft(`comments:${id}`, `tasks/${id}/comments`), soft(`attachments:${id}`, `tasks/${id}/attachments`),
    soft(`checkins:${id}`, `tasks/${id}/check-ins`), soft(`activity:${id}`, `tasks/${id}/activity?limit=30`, { items: [] })]);
  setBar(task.reference === 'New' ? 'New task' : task.reference, `/projects/${task.project_id}`);
  const st = states.find((s) => s.id === task.state_id);
  const save = async (changes) => {
    await updateTask(task, changes);
    scheduleRerender();
  };
  if (!rerender.live) {
    rerender.live = true;
    const channel = `task:${id}`;
    cleanup.push(rt.subscribe(channel, (f) => {
      if (f.type === 'event') scheduleRerender();
      if (f.type === 'presence') renderPresence();
    }));
  }
  const presenceBox = h('div', { class: 'presence', 'aria-label': 'People viewing this task' });
  function renderPresence() {
    const me = currentSession()?.user?.id;
    const people = rt.presenceOf(`task:${id}`).filter(([u]) => u !== me);
    clear(presenceBox, people.length ? [people.map(([u, s]) => h('span', { class: `presence-user ${s}` }, avatar(u))), h('span', { class: 'muted' }, `${people.length} also here`)] : null);
  }
  renderPresence();

  const conflictOps = pendingFor(id, 'task.update').filter((o) => o.status === 'conflict');
  const editor = descriptionEditor(id, task, save);
  const { desc, status: descStatus } = editor;
  const typing = document.activeElement === desc ? [desc.selectionStart, desc.selectionEnd] : null;

  const fileInput = h('input', { type: 'file', accept: 'image/*', capture: 'environment', class: 'visually-hidden', id: 'photo', 'aria-label': 'Attach a photo',
    onchange: async (e) => {
      for (const file of e.target.files) {
        await enqueue({ kind: 'attachment.upload', task_id: id, project_id: task.project_id, blob: file, file_name: file.name || 'photo.jpg' });
      }
      toast(state.online ? 'Uploading…' : 'Photo saved — it will upload when you are back online', 'ok');
      scheduleRerender();
    } });
  const queuedUploads = pendingFor(id, 'attachment.upload');
  const queuedComments = pendingFor(id, 'comment.create');
  const queuedCheckins = pendingFor(id, 'checkin.create');

  clear(main, h('article', { class: 'page task', 'data-testid': 'task' },
    conflictOps.map((op) => conflictPanel(op, states)),
    h('div', { class: 'task-head' },
      h('div', { class: 'task-ref' }, h('span', { class: 'ref' }, task.reference), task._pending && h('span', { class: 'chip chip-pending' }, icon('cloud', 14), 'not synced'), presenceBox),
      h('input', { class: 'title-input', 'aria-label': 'Title', value: task.title, maxlength: 500, onchange: (e) => { if (e.target.value.trim() && e.target.value !== task.title) save({ title: e.target.value.trim() }); } })),
    h('div', { class: 'props' },
      field('State', h('select', { name: 'state_id', style: { '--state': STATE_COLORS[st?.category] }, class: 'state-select', onchange: (e) => save({ state_id: e.target.value }) },
        states.map((s) => h('option', { value: s.id, selected: s.id === task.state_id }, s.name)))),
      field('Priority', h('select', { name: 'priority', onchange: (e) => save({ priority: e.target.value }) }, PRIORITIES.map((p) => h('option', { value: p, selected: p === task.priority }, p)))),
      field('Due', h('input', { type: 'date', name: 'due_date', value: task.due_date || '', onchange: (e) => save({ due_date: e.target.value || null }) }))),
    h('section', { class: 'block' }, h('div', { class: 'block-head' }, h('h3', {}, 'Description'), descStatus), desc),
    h('section', { class: 'block' },
      h('div', { class: 'block-head' }, h('h3', {}, 'Attachments'),
        h('label', { class: 'btn btn-ghost', for: 'photo' }, icon('camera', 16), 'Add photo'), fileInput),
      attachments.length || queuedUploads.length ? h('ul', { class: 'files' },
        attachments.map((a) => h('li', {}, icon('file', 18), h('button', { class: 'link', type: 'button', onclick: () => download(id, a) }, a.file_name), h('span', { class: 'muted' }, `${Math.ceil(a.size / 1024)} KB`))),
        queuedUploads.map((o) => h('li', { class: 'pending' }, icon('cloud', 18), h('span', {}, o.file_name), h('span', { class: 'muted' }, 'waiting to upload'))))
        : h('p', { class: 'muted' }, 'No attachments. Take a photo or pick an image.')),
    h('section', { class: 'block' },
      h('div', { class: 'block-head' }, h('h3', {}, 'Check-ins'),
        h('button', { class: 'btn btn-ghost', type: 'button', onclick: () => checkIn(task) }, icon('pin', 16), 'Check in here')),
      checkins.length || queuedCheckins.length ? h('ul', { class: 'checkins' },
        checkins.map((c) => checkinRow(c.position || c, c.note, c.created_at)),
        queuedCheckins.map((o) => checkinRow(o.data, o.data.note, null, true)))
        : h('p', { class: 'muted' }, 'No check-ins yet. Record where work happened.')),
    h('section', { class: 'block' }, h('h3', {}, 'Comments'),
      h('ul', { class: 'comments' },
        comments.map((c) => h('li', {}, avatar(c.author), h('div', {}, h('div', { class: 'comment-meta' }, h('span', { class: 'muted' }, relTime(c.created_at))), h('p', {}, c.body)))),
        queuedComments.map((o) => h('li', { class: 'pending' }, avatar(currentSession()?.user?.id, currentSession()?.user?.display_name), h('div', {}, h('div', { class: 'comment-meta' }, h('span', { class: 'muted' }, 'not sent yet')), h('p', {}, o.data.body))))),
      commentForm(id)),
    h('section', { class: 'block' }, h('h3', {}, 'Activity'),
      (activity.items || []).length ? h('ol', { class: 'activity' }, activity.items.map((ev) => h('li', {}, h('span', { class: 'muted' }, relTime(ev.at)), ' ', describe(ev, states))))
        : h('p', { class: 'muted' }, 'Nothing yet.'))));
  // Moving the editor into the rebuilt page took the focus from it: give it back, caret
  // included, so typing goes on where it was.
  if (typing) {
    desc.focus();
    desc.setSelectionRange(...typing);
  }
}

// The description editor of a task page outlives the page's re-renders (every event on the
// task re-renders it, and the collaborative editor's own write-backs are such events): one
// textarea and one Yjs binding per visit. A fresh editor per render dropped what was typed
// while its binding was still syncing, lost the focus, and left the old binding connected.
function descriptionEditor(id, task, save) {
  let ed = rerender?.descEditor;
  if (!ed) {
    ed = {
      desc: h('textarea', { class: 'desc', rows: 6, 'aria-label': 'Description', placeholder: 'Add a description…', value: task.description || '' }),
      status: h('span', { class: 'collab-status muted', 'data-testid': 'collab-status' }, 'offline edit'),
      collab: null,
      binding: false,
    };
    if (rerender) rerender.descEditor = ed;
    ed.desc.addEventListener('change', () => {
      if (!ed.collab?.isLive() && ed.desc.value !== ed.task.description) ed.save({ description: ed.desc.value });
    });
  } else if (!ed.collab?.isLive() && document.activeElement !== ed.desc) {
    ed.desc.value = task.description || '';
  }
  ed.task = task;
  ed.save = save;
  if (!ed.binding && state.online && task.version > 0) {
    ed.binding = true;
    const visit = rerender;
    import('./collab.js').then(({ bindDescription }) => {
      if (rerender !== visit) return; // navigated away meanwhile
      ed.collab = bindDescription(ed.desc, id, currentSession().access_token, (st) => {
        ed.status.textContent = st === 'live' ? 'live · collaborative' : st;
        ed.status.classList.toggle('live', st === 'live');
      });
      cleanup.push(() => ed.collab.destroy());
    }).catch(() => { ed.binding = false; });
  }
  return ed;
}

function checkinRow(p, note, at, pending) {
  return h('li', { class: pending ? 'pending' : '' }, icon('pin', 16),
    h('span', { class: 'coords', 'data-testid': 'checkin' }, `${Number(p.lat).toFixed(5)}, ${Number(p.lon).toFixed(5)}`),
    h('span', { class: 'muted' }, `± ${Math.round(p.accuracy_m)} m`), note && h('span', {}, note),
    h('span', { class: 'muted' }, pending ? 'waiting to sync' : relTime(at)));
}

function describe(ev, states) {
  const what = ev.kind.replace(/[._]/g, ' ');
  const sid = ev.payload?.changes?.state_id?.to || ev.payload?.state_id;
  const s = sid && states.find((x) => x.id === sid);
  return s ? `${what} → ${s.name}` : what;
}

function commentForm(taskId) {
  const form = h('form', { class: 'comment-form', onsubmit: async (e) => {
    e.preventDefault();
    const body = form.body.value.trim();
    if (!body) return;
    form.reset();
    await enqueue({ kind: 'comment.create', task_id: taskId, comment_id: uuid7(), data: { body } });
    scheduleRerender();
  } },
  h('textarea', { name: 'body', rows: 2, 'aria-label': 'Write a comment', placeholder: 'Write a comment…', required: true }),
  h('button', { class: 'btn btn-primary' }, 'Send'));
  return form;
}

async function download(taskId, a) {
  try {
    const res = await api(`tasks/${taskId}/attachments/${a.id}`, { raw: true });
    const url = URL.createObjectURL(await res.blob());
    const link = h('a', { href: url, download: a.file_name });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    toast(e.status === 0 ? 'Downloads need a connection' : e.message, 'error');
  }
}

function checkIn(task) {
  if (!navigator.geolocation) return toast('This device cannot tell its location', 'error');
  toast('Finding your position…');
  navigator.geolocation.getCurrentPosition(async (pos) => {
    const { latitude: lat, longitude: lon, accuracy } = pos.coords;
    await enqueue({ kind: 'checkin.create', task_id: task.id, project_id: task.project_id, data: { lat, lon, accuracy_m: accuracy, note: '' } });
    toast(`Checked in (± ${Math.round(accuracy)} m)`, 'ok');
    scheduleRerender();
  }, (err) => toast(err.code === 1 ? 'Location permission denied' : 'Could not get your position', 'error'), { enableHighAccuracy: true, timeout: 15000 });
}

// --- conflicts -------------------------------------------------------------------------------

const FIELD_LABELS = { title: 'Title', description: 'Description', state_id: 'State', priority: 'Priority', due_date: 'Due date' };

function show(field, v, states) {
  if (v == null || v === '') return '—';
  if (field === 'state_id') return states.find((s) => s.id === v)?.name || v;
  return typeof v === 'string' ? v : JSON.stringify(v);
}

function conflictPanel(op, states) {
  const choices = {};
  const form = h('form', { class: 'conflict', 'data-testid': 'conflict', onsubmit: async (e) => {
    e.preventDefault();
    const f = new FormData(form);
    for (const c of op.conflict.conflicts) choices[c.field] = f.get(`pick-${c.field}`);
    await resolve(op, choices);
    toast('Resolution saved', 'ok');
    scheduleRerender();
  } },
  h('h3', {}, icon('alert', 18), 'Your offline edit conflicts with a newer change'),
  h('p', { class: 'muted' }, 'Someone changed the same fields while you were away. Pick the value to keep for each.'),
  op.conflict.conflicts.map((c) => h('fieldset', { class: 'conflict-field', 'data-field': c.field },
    h('legend', {}, FIELD_LABELS[c.field] || c.field, h('span', { class: 'muted' }, ` — was “${show(c.field, c.base, states)}”`)),
    h('label', { class: 'pick' }, h('input', { type: 'radio', name: `pick-${c.field}`, value: 'mine', checked: true }), h('span', { class: 'tag' }, 'Mine'), h('span', {}, show(c.field, c.mine, states))),
    h('label', { class: 'pick' }, h('input', { type: 'radio', name: `pick-${c.field}`, value: 'theirs' }), h('span', { class: 'tag tag-theirs' }, 'Theirs'), h('span', {}, show(c.field, c.theirs, states))))),
  h('button', { class: 'btn btn-primary' }, 'Save resolution'));
  return form;
}

async function resolveConflicts() {
  const op = conflicts()[0];
  if (op) go(`/tasks/${op.task_id}`);
}

// --- notifications ---------------------------------------------------------------------------

async function refreshUnread() {
  try {
    const r = await api('me/notifications/unread-count');
    state.unread = r.count ?? r.unread ?? 0;
    renderBar();
  } catch { /* offline */ }
}

async function notificationsScreen(main) {
  setBar('Notifications', '/');
  const page = await cached('notifications', 'me/notifications?limit=50');
  const items = page.items || [];
  const pushBtn = 'PushManager' in window && h('button', { class: 'btn btn-ghost', onclick: enablePush }, icon('bell', 16), 'Enable push');
  clear(main, h('section', { class: 'page' },
    h('div', { class: 'page-head' }, h('h2', {}, 'Notifications'), h('div', { class: 'row' }, pushBtn,
      h('button', { class: 'btn btn-ghost', onclick: async () => { await api('me/notifications/read-all', { method: 'POST' }); await refreshUnread(); rerender?.(); } }, icon('check', 16), 'Mark all read'))),
    items.length ? h('ul', { class: 'notes' }, items.map((n) => h('li', { class: n.read_at ? '' : 'unread' },
      h('a', { href: n.task_id ? `/tasks/${n.task_id}` : '#', onclick: async (e) => {
        e.preventDefault();
        if (!n.read_at) { try { await api(`me/notifications/${n.id}/read`, { method: 'POST' }); } catch { /* offline */ } refreshUnread(); }
        if (n.task_id) go(`/tasks/${n.task_id}`); else rerender?.();
      } }, h('span', { class: 'note-dot', 'aria-label': n.read_at ? 'read' : 'unread' }), h('span', { class: 'note-kind' }, n.kind.replace('_', ' ')),
      h('span', { class: 'note-text' }, n.summary), h('span', { class: 'muted' }, relTime(n.created_at))))))
      : empty('All caught up', 'Assignments, mentions and comments on your tasks show up here.')));
}

function b64url(s) {
  const pad = '='.repeat((4 - (s.length % 4)) % 4);
  const raw = atob((s + pad).replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

async function enablePush() {
  try {
    if ((await Notification.requestPermission()) !== 'granted') return toast('Notifications are blocked for this site', 'error');
    const { public_key } = await api('push/vapid-public-key');
    const reg = await navigator.serviceWorker.ready;
    const sub = await reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64url(public_key) });
    await api('push/subscriptions', { method: 'POST', body: sub.toJSON() });
    toast('Push notifications enabled', 'ok');
  } catch (e) {
    toast(`Could not enable push: ${e.message}`, 'error');
  }
}

// --- start -----------------------------------------------------------------------------------

function startSession() {
  rt.connect();
  const me = currentSession()?.user?.id;
  if (me) {
    rt.subscribe(`user:${me}`, (f) => {
      // The user channel has no replay: recount whenever the subscription (re)starts.
      if (f.type === 'subscribed') refreshUnread();
      if (f.type === 'notification') {
        state.unread += 1;
        renderBar();
        toast(f.notification.summary);
        if (location.pathname === '/notifications') scheduleRerender();
      }
    });
  }
  refreshUnread();
  syncNow();
}

async function syncNow() {
  const results = await flush();
  await pullChanges();
  return results;
}

/** Pull to refresh: a downward touch drag from the top of the page. */
function pullToRefresh() {
  const main = document.getElementById('main');
  const ind = document.getElementById('ptr');
  const atTop = () => (document.scrollingElement?.scrollTop || 0) <= 0;
  let start = null;
  main.addEventListener('touchstart', (e) => { start = atTop() && !e.target.closest('.card, .board') ? e.touches[0].clientY : null; }, { passive: true });
  main.addEventListener('touchmove', (e) => {
    if (start == null) return;
    const d = Math.max(0, Math.min(120, e.touches[0].clientY - start));
    ind.style.transform = `translateY(${d - 48}px) rotate(${d * 3}deg)`;
    ind.classList.toggle('armed', d > 70);
  }, { passive: true });
  main.addEventListener('touchend', async () => {
    if (start == null) return;
    start = null;
    const armed = ind.classList.contains('armed');
    ind.classList.remove('armed');
    ind.style.transform = '';
    if (armed) {
      ind.classList.add('spinning');
      await syncNow();
      await rerender?.();
      ind.classList.remove('spinning');
    }
  });
}

async function main() {
  await loadSession();
  await loadOutbox();
  onOutboxChange((_, info) => {
    renderBar();
    for (const r of info?.results || []) {
      if (r.status === 'rejected') toast(`A change could not be saved: ${r.error?.detail || 'refused'}`, 'error');
      if (r.status === 'conflict') toast('An offline edit conflicts with a newer change — review it', 'error');
    }
    if (info?.results?.length) scheduleRerender();
  });
  onSessionChange((s) => { if (!s) { rt.disconnect(); go('/login', true); } });
  window.addEventListener('popstate', route);
  window.addEventListener('online', () => { setOnline(true); syncNow().then(() => rerender?.()); });
  window.addEventListener('offline', () => setOnline(false));
  // Projects seen, so a task opened offline can be found in their snapshots.
  const rawSet = kv.set;
  kv.set = async (key, value) => {
    if (key.startsWith('tasks:')) {
      const seen = (await kv.get('projects-seen')) || [];
      const pid = key.slice('tasks:'.length);
      if (!seen.includes(pid)) await rawSet('projects-seen', [...seen, pid]);
    }
    return rawSet(key, value);
  };
  pullToRefresh();
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch((e) => console.warn('service worker', e));
    navigator.serviceWorker.addEventListener('message', (e) => { if (e.data?.type === 'sync') syncNow(); });
  }
  if (currentSession()) startSession();
  await route();
}

window.pm = { flush: syncNow, outbox: pendingOps, go };
main();
