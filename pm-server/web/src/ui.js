// DOM helpers: `h` builds elements (attributes, `on*` listeners, children), plus toasts, dialogs
// and the small formatting functions every screen uses.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2).toLowerCase(), v);
    else if (k === 'class') el.className = v;
    else if (k === 'style' && typeof v === 'object') {
      for (const [prop, val] of Object.entries(v)) if (val != null) el.style.setProperty(prop.startsWith('--') ? prop : prop.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`), val);
    }
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' || k === 'checked' || k === 'selected') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export const clear = (el, ...children) => { el.replaceChildren(); append(el, children); return el; };

const ICONS = {
  back: 'M15 18l-6-6 6-6',
  bell: 'M18 8a6 6 0 10-12 0c0 7-3 9-3 9h18s-3-2-3-9M13.7 21a2 2 0 01-3.4 0',
  plus: 'M12 5v14M5 12h14',
  grip: 'M9 5h.01M9 12h.01M9 19h.01M15 5h.01M15 12h.01M15 19h.01',
  cloud: 'M17.5 19H9a7 7 0 116.7-9h1.8a4.5 4.5 0 010 9z',
  offline: 'M1 1l22 22M16.7 11.1A10.9 10.9 0 0119 12.6M5 12.6a10.9 10.9 0 015.2-2.5M10.7 5.1A16 16 0 0122.6 9M1.4 9a15.9 15.9 0 014.3-2.8M8.5 16.1a6 6 0 017 0M12 20h.01',
  board: 'M3 3h7v18H3zM14 3h7v11h-7z',
  list: 'M8 6h13M8 12h13M8 18h13M3 6h.01M3 12h.01M3 18h.01',
  pin: 'M21 10c0 7-9 13-9 13s-9-6-9-13a9 9 0 0118 0zM12 13a3 3 0 100-6 3 3 0 000 6z',
  camera: 'M23 19a2 2 0 01-2 2H3a2 2 0 01-2-2V8a2 2 0 012-2h4l2-3h6l2 3h4a2 2 0 012 2zM12 17a4 4 0 100-8 4 4 0 000 8z',
  file: 'M14 2H6a2 2 0 00-2 2v16a2 2 0 002 2h12a2 2 0 002-2V8zM14 2v6h6',
  logout: 'M9 21H5a2 2 0 01-2-2V5a2 2 0 012-2h4M16 17l5-5-5-5M21 12H9',
  search: 'M11 19a8 8 0 100-16 8 8 0 000 16zM21 21l-4.35-4.35',
  refresh: 'M23 4v6h-6M1 20v-6h6M3.5 9a9 9 0 0114.9-3.4L23 10M1 14l4.6 4.4A9 9 0 0020.5 15',
  alert: 'M10.3 3.9L1.8 18a2 2 0 001.7 3h17a2 2 0 001.7-3L13.7 3.9a2 2 0 00-3.4 0zM12 9v4M12 17h.01',
  check: 'M20 6L9 17l-5-5',
  user: 'M20 21v-2a4 4 0 00-4-4H8a4 4 0 00-4 4v2M12 11a4 4 0 100-8 4 4 0 000 8z',
};

export function icon(name, size = 20) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('width', size);
  svg.setAttribute('height', size);
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', 'icon');
  const p = document.createElementNS(ns, 'path');
  p.setAttribute('d', ICONS[name]);
  svg.append(p);
  return svg;
}

export function toast(message, kind = 'info') {
  const host = document.getElementById('toasts');
  const t = h('div', { class: `toast toast-${kind}`, role: 'status' }, message);
  host.append(t);
  // Two at a time: older ones make room.
  while (host.children.length > 2) host.firstElementChild.remove();
  setTimeout(() => t.classList.add('out'), 3500);
  setTimeout(() => t.remove(), 4000);
}

/** A modal dialog; `build(close)` returns its content. Resolves with what `close` was given. */
export function dialog(title, build) {
  return new Promise((resolve) => {
    const d = h('dialog', { class: 'sheet', 'aria-label': title });
    const close = (v) => { d.close(); d.remove(); resolve(v); };
    d.append(h('header', { class: 'sheet-head' }, h('h2', {}, title),
      h('button', { class: 'btn-icon', type: 'button', 'aria-label': 'Close', onclick: () => close(null) }, '✕')),
    build(close));
    d.addEventListener('cancel', (e) => { e.preventDefault(); close(null); });
    document.body.append(d);
    d.showModal();
  });
}

export const STATE_COLORS = {
  backlog: 'var(--c-backlog)', unstarted: 'var(--c-unstarted)', started: 'var(--c-started)',
  completed: 'var(--c-completed)', cancelled: 'var(--c-cancelled)',
};
export const PRIORITIES = ['none', 'low', 'medium', 'high', 'urgent'];

export function relTime(iso) {
  if (!iso) return '';
  const d = (Date.now() - new Date(iso).getTime()) / 1000;
  if (d < 45) return 'just now';
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return new Date(iso).toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
}

export function initials(name) {
  return (name || '?').split(/[\s@.]+/).filter(Boolean).slice(0, 2).map((s) => s[0].toUpperCase()).join('');
}

export function avatar(id, label) {
  let hash = 0;
  for (const c of id || '') hash = (hash * 31 + c.charCodeAt(0)) >>> 0;
  // Without a name (the API gives ids only for other people) a silhouette, coloured per person.
  return h('span', { class: 'avatar', title: label || 'Team member', style: { background: `hsl(${hash % 360} 55% 45%)` } }, label ? initials(label) : icon('user', 14));
}

export function empty(title, text, action) {
  return h('div', { class: 'empty' }, h('div', { class: 'empty-art', 'aria-hidden': 'true' }), h('h3', {}, title), h('p', {}, text), action);
}

export const spinner = () => h('div', { class: 'loading', role: 'progressbar', 'aria-label': 'Loading' }, h('span'), h('span'), h('span'));
