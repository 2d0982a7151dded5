// IndexedDB: `kv` holds the session and the last server snapshots (keyed by name, e.g.
// `tasks:<project>`), `outbox` holds queued mutations in order (auto-increment key keeps FIFO).
const DB_NAME = 'pm';
let dbp;

function open() {
  if (!dbp) {
    dbp = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => {
        const db = req.result;
        db.createObjectStore('kv');
        db.createObjectStore('outbox', { keyPath: 'seq', autoIncrement: true });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return dbp;
}

function done(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function store(name, mode = 'readonly') {
  return (await open()).transaction(name, mode).objectStore(name);
}

export const kv = {
  async get(key) { return done((await store('kv')).get(key)); },
  async set(key, value) { return done((await store('kv', 'readwrite')).put(value, key)); },
  async del(key) { return done((await store('kv', 'readwrite')).delete(key)); },
  async clear() { return done((await store('kv', 'readwrite')).clear()); },
};

export const outboxStore = {
  async all() { return done((await store('outbox')).getAll()); },
  async add(op) { return done((await store('outbox', 'readwrite')).add(op)); },
  async put(op) { return done((await store('outbox', 'readwrite')).put(op)); },
  async del(seq) { return done((await store('outbox', 'readwrite')).delete(seq)); },
  async clear() { return done((await store('outbox', 'readwrite')).clear()); },
};
