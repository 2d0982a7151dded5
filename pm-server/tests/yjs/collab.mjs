// Two unmodified Yjs clients (y-websocket's WebsocketProvider, the `ws` package as the
// WebSocket implementation) edit a task description through pm-server's /api/v1/collab endpoint.
//
// Usage: node collab.mjs <server-url-a> <server-url-b> <task-id> <access-token>
//   server URLs are like ws://127.0.0.1:8080/api/v1/collab (the room is the task id); pass the
//   same URL twice for one server, or two instances' URLs.
//
// Both clients sync, insert concurrently (A at the start, B at the end), and wait until both
// documents hold the same text with both edits and each sees the other's awareness state. Prints
// one JSON line {"initial": …, "text": …} and exits 0; exits 1 after 20 s without convergence.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [urlA, urlB, task, token] = process.argv.slice(2)
if (!urlA || !urlB || !task || !token) {
  console.error('usage: node collab.mjs <server-url-a> <server-url-b> <task-id> <access-token>')
  process.exit(2)
}

const TIMEOUT_MS = 20000
const timer = setTimeout(() => {
  console.error(JSON.stringify({
    error: 'timeout',
    a: docA.getText('description').toString(),
    b: docB.getText('description').toString(),
    aConnected: a.wsconnected,
    bConnected: b.wsconnected
  }))
  process.exit(1)
}, TIMEOUT_MS)

const connect = (url, doc, name) => {
  const provider = new WebsocketProvider(url, task, doc, {
    WebSocketPolyfill: WebSocket,
    params: { access_token: token },
    disableBc: true
  })
  provider.awareness.setLocalStateField('user', { name })
  provider.on('connection-close', (event) => {
    if (event && event.code >= 4000) console.error(`${name}: closed with ${event.code} ${event.reason}`)
  })
  return provider
}

const synced = (provider) => new Promise((resolve) => {
  if (provider.synced) return resolve()
  provider.once('sync', (isSynced) => isSynced && resolve())
})

const until = (pred) => new Promise((resolve) => {
  const check = () => (pred() ? resolve() : setTimeout(check, 20))
  check()
})

const docA = new Y.Doc()
const docB = new Y.Doc()
const a = connect(urlA, docA, 'alice')
const b = connect(urlB, docB, 'bob')

await Promise.all([synced(a), synced(b)])
const textA = docA.getText('description')
const textB = docB.getText('description')
await until(() => textA.toString() === textB.toString())
const initial = textA.toString()

// Concurrent edits: issued back to back, before either client can see the other's.
textA.insert(0, 'Alice was here. ')
textB.insert(textB.length, ' Bob too.')

await until(() => {
  const ta = textA.toString()
  const tb = textB.toString()
  return ta === tb && ta.includes('Alice was here. ') && ta.includes(' Bob too.') &&
    a.awareness.getStates().has(docB.clientID) && b.awareness.getStates().has(docA.clientID)
})

console.log(JSON.stringify({ initial, text: textA.toString() }))
clearTimeout(timer)
// Let the last messages flush, then leave cleanly (the server writes the text back on close).
await new Promise((resolve) => setTimeout(resolve, 200))
a.destroy()
b.destroy()
setTimeout(() => process.exit(0), 100)
