// The offline outbox. Every mutation is queued in IndexedDB with a client-generated op id (and a
// client-generated id for what it creates), applied optimistically to what the screens show
// (`overlay`), and replayed through `POST /api/v1/sync` on start, on `online` and right after it
// is queued. Attachment uploads (and everything, when the server has no sync endpoint) go through
// plain REST with `Idempotency-Key: <op_id>`. A `conflict` result keeps the op, marked, until the
// user resolves it field by field (`resolve`), which queues a new op based on the current version.
import { api, ApiError } from './api.js';
import { kv, outboxStore } from './db.js';

/** A UUIDv7 (time-ordered, like the ids the server generates). */
export function uuid7() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  let ms = Date.now();
  for (let i = 5; i >= 0; i--) { b[i] = ms % 256; ms = Math.floor(ms / 256); }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const listeners = new Set();
let ops = [];
let flushing = null;
let syncUnsupported = false;

export const onOutboxChange = (fn) => listeners.add(fn);
const emit = (info) => listeners.forEach((fn) => fn(ops, info));

export async function loadOutbox() {
  ops = await outboxStore.all();
  emit();
  return ops;
}
export const pendingOps = () => ops;
export const conflicts = () => ops.filter((o) => o.status === 'conflict');

/** Queues an op (see docs/sync-protocol.md for kinds) and tries to send it. */
export async function enqueue(op) {
  const full = { op_id: uuid7(), status: 'pending', queued_at: new Date().toISOString(), ...op };
  full.seq = await outboxStore.add(full);
  ops.push(full);
  emit();
  flush();
  return full;
}

/** Applies pending ops to a server task list (optimistic view). */
export function overlayTasks(projectId, tasks) {
  let list = tasks.map((t) => ({ ...t }));
  for (const op of ops) {
    if (op.kind === 'task.create' && op.project_id === projectId && !list.some((t) => t.id === op.task_id)) {
      list.push(localTask(op));
    } else if (op.kind === 'task.update' && op.status !== 'conflict') {
      list = list.map((t) => (t.id === op.task_id ? { ...t, ...op.changes, _pending: true } : t));
    } else if (op.kind === 'task.delete') {
      list = list.filter((t) => t.id !== op.task_id);
    }
  }
  return list;
}

export function overlayTask(task) {
  return overlayTasks(task.project_id, [task])[0] || task;
}

/** The optimistic task of a queued create. */
export function localTask(op) {
  const now = op.queued_at;
  return {
    id: op.task_id, project_id: op.project_id, reference: 'New', title: op.data.title,
    description: op.data.description || '', state_id: op.data.state_id, priority: op.data.priority || 'none',
    due_date: op.data.due_date || null, assignees: [], labels: [], version: 0, created_at: now,
    updated_at: now, rank: `~${now}`, _pending: true,
  };
}

export function pendingFor(taskId, kind) {
  return ops.filter((o) => o.task_id === taskId && (!kind || o.kind === kind));
}

async function drop(op) {
  await outboxStore.del(op.seq);
  ops = ops.filter((o) => o.seq !== op.seq);
}

async function mark(op, patch) {
  Object.assign(op, patch);
  await outboxStore.put(op);
}

/** Replays the queue; one flush at a time. Resolves when the queue is drained or blocked. */
export function flush() {
  if (!flushing) {
    flushing = doFlush().finally(() => { flushing = null; });
  }
  return flushing;
}

async function doFlush() {
  const results = [];
  let progressed = true;
  while (progressed && navigator.onLine !== false) {
    progressed = false;
    const ready = ops.filter((o) => o.status === 'pending');
    if (!ready.length) break;
    // Ops before the first upload go in one sync batch; uploads go alone through REST.
    const first = ready[0];
    try {
      if (first.kind === 'attachment.upload' || syncUnsupported) {
        results.push(await sendRest(first));
        progressed = true;
        continue;
      }
      const batch = [];
      for (const o of ready) {
        if (o.kind === 'attachment.upload' || batch.length === 100) break;
        batch.push(o);
      }
      const body = { ops: batch.map(wire) };
      let res;
      try {
        res = await api('sync', { method: 'POST', body });
      } catch (e) {
        if (e instanceof ApiError && (e.status === 404 || e.status === 405)) { syncUnsupported = true; progressed = true; continue; }
        throw e;
      }
      for (const r of res.results || []) {
        const op = batch.find((o) => o.op_id === r.op_id);
        if (!op) continue;
        results.push(await settle(op, r));
      }
      progressed = true;
    } catch (e) {
      if (e instanceof ApiError && e.status >= 400 && e.status < 500 && e.status !== 401 && e.status !== 408 && e.status !== 429) {
        // The server refused the whole request: drop the op it was about so the queue moves on.
        await drop(first);
        results.push({ op: first, status: 'rejected', error: e.problem });
        progressed = true;
      } else {
        break; // offline or server trouble: keep everything, retry later
      }
    }
  }
  emit({ results });
  return results;
}

/** The op as docs/sync-protocol.md spells it: exactly the fields of its kind (the server
 * refuses unknown ones; `project_id` on other kinds is only for the optimistic view). */
function wire(op) {
  const { op_id, kind, task_id } = op;
  switch (kind) {
    case 'task.create': return { op_id, kind, project_id: op.project_id, task_id, data: op.data };
    case 'task.update': return { op_id, kind, task_id, base_version: op.base_version, base: op.base, changes: op.changes };
    case 'task.delete': return { op_id, kind, task_id, base_version: op.base_version };
    case 'comment.create': return { op_id, kind, task_id, comment_id: op.comment_id, data: op.data };
    case 'checkin.create': return { op_id, kind, task_id, data: op.data };
    default: throw new Error(`unknown op kind ${kind}`);
  }
}

async function settle(op, r) {
  if (r.status === 'applied') {
    await drop(op);
    if (r.task) await rememberTask(r.task);
  } else if (r.status === 'conflict') {
    await mark(op, { status: 'conflict', conflict: { current: r.current, conflicts: r.conflicts || [] } });
    if (r.current) await rememberTask(r.current);
  } else {
    await drop(op);
  }
  return { op, ...r };
}

/** Keeps the latest server copy of a task in the snapshot caches. */
export async function rememberTask(task) {
  await kv.set(`task:${task.id}`, task);
  const key = `tasks:${task.project_id}`;
  const list = (await kv.get(key)) || [];
  const i = list.findIndex((t) => t.id === task.id);
  if (i >= 0) list[i] = task; else list.push(task);
  await kv.set(key, list);
}

export async function forgetTask(taskId, projectId) {
  await kv.del(`task:${taskId}`);
  const key = `tasks:${projectId}`;
  const list = (await kv.get(key)) || [];
  await kv.set(key, list.filter((t) => t.id !== taskId));
}

// --- REST path: uploads always, everything when the server has no /sync ---------------------

async function sendRest(op) {
  const idem = { 'idempotency-key': op.op_id };
  try {
    if (op.kind === 'attachment.upload') {
      const form = new FormData();
      form.append('file', op.blob, op.file_name);
      const a = await api(`tasks/${op.task_id}/attachments`, { method: 'POST', body: form, headers: idem });
      await drop(op);
      return { op, status: 'applied', attachment: a };
    }
    if (op.kind === 'task.create') {
      const t = await api(`projects/${op.project_id}/tasks`, { method: 'POST', body: op.data, headers: idem });
      await drop(op);
      // Later ops name the client id: point them at the server's.
      for (const o of ops) if (o.task_id === op.task_id) await mark(o, { task_id: t.id });
      await rememberTask(t);
      return { op, status: 'applied', task: t };
    }
    if (op.kind === 'comment.create') {
      await api(`tasks/${op.task_id}/comments`, { method: 'POST', body: op.data, headers: idem });
    } else if (op.kind === 'checkin.create') {
      await api(`tasks/${op.task_id}/check-ins`, { method: 'POST', body: op.data, headers: idem });
    } else if (op.kind === 'task.delete') {
      await api(`tasks/${op.task_id}`, { method: 'DELETE', headers: { 'if-match': `"v${op.base_version}"` } });
    } else if (op.kind === 'task.update') {
      const current = await api(`tasks/${op.task_id}`);
      const clash = fieldConflicts(op, current);
      if (clash.length) return settle(op, { status: 'conflict', current, conflicts: clash });
      const t = await api(`tasks/${op.task_id}`, { method: 'PATCH', body: { ...op.changes, version: current.version } });
      await drop(op);
      await rememberTask(t);
      return { op, status: 'applied', task: t };
    }
    await drop(op);
    return { op, status: 'applied' };
  } catch (e) {
    if (e instanceof ApiError && e.status >= 400 && e.status < 500 && ![401, 408, 409, 429].includes(e.status)) {
      await drop(op);
      return { op, status: 'rejected', error: e.problem };
    }
    throw e;
  }
}

const same = (a, b) => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

/** The sync protocol's rule, for the REST path: a field conflicts when the server moved it away
 * from our base to something other than our value. */
export function fieldConflicts(op, current) {
  if (current.version === op.base_version) return [];
  return Object.keys(op.changes)
    .filter((f) => !same(current[f], op.base?.[f]) && !same(current[f], op.changes[f]))
    .map((f) => ({ field: f, base: op.base?.[f] ?? null, mine: op.changes[f], theirs: current[f] ?? null }));
}

/**
 * Resolves a conflicted op: `choices` maps each conflicting field to 'mine' or 'theirs'. The
 * non-conflicting changes of the op and the fields where "mine" won are queued as a new op based
 * on the server's current version.
 */
export async function resolve(op, choices) {
  const current = op.conflict.current;
  const changes = {};
  for (const [f, v] of Object.entries(op.changes)) {
    const c = op.conflict.conflicts.find((x) => x.field === f);
    if (!c || choices[f] !== 'theirs') changes[f] = v;
  }
  await drop(op);
  if (Object.keys(changes).length) {
    const base = {};
    for (const f of Object.keys(changes)) base[f] = current[f] ?? null;
    await enqueue({ kind: 'task.update', task_id: op.task_id, project_id: op.project_id, base_version: current.version, base, changes });
  } else {
    emit();
  }
}

/** Queues a task update, with the base values it was made from. */
export function updateTask(task, changes) {
  const base = {};
  for (const f of Object.keys(changes)) base[f] = task[f] ?? null;
  return enqueue({
    kind: 'task.update', task_id: task.id, project_id: task.project_id,
    base_version: task.version || 1, base, changes,
  });
}
