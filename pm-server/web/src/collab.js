// Collaborative description editing: a Yjs document per task over /api/v1/collab/{task_id}
// (y-websocket protocol), bound to a <textarea> with minimal-diff edits both ways so remote
// changes keep the local caret. Loaded on demand (its own chunk) when a task opens.
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';

export function bindDescription(textarea, taskId, token, onStatus) {
  const doc = new Y.Doc();
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const provider = new WebsocketProvider(`${proto}://${location.host}/api/v1/collab`, taskId, doc, {
    params: { access_token: token },
    maxBackoffTime: 5000,
  });
  const text = doc.getText('description');
  let synced = false;
  let everSynced = false;
  // What the editor showed when the binding started (the task's description from REST). Until
  // the first sync the local document is empty, so typing cannot be applied to it yet; once the
  // document arrives, typing done meanwhile is applied as an edit if the document still holds
  // this text, instead of being overwritten by it.
  const shown = textarea.value;

  provider.on('status', (e) => onStatus?.(e.status === 'connected' ? (synced ? 'live' : 'connecting') : 'offline'));
  provider.on('sync', (ok) => {
    synced = ok;
    if (!ok) return;
    const first = !everSynced;
    everSynced = true;
    if (first && textarea.value !== shown && text.toString() === shown) applyEditor();
    else textarea.value = text.toString();
    onStatus?.('live');
  });

  text.observe((ev) => {
    // Before the first sync the 'sync' handler reconciles the editor with the document.
    if (ev.transaction.local || !everSynced) return;
    const { selectionStart: s, selectionEnd: e } = textarea;
    let start = s;
    let end = e;
    let index = 0;
    for (const d of ev.changes.delta) {
      if (d.retain) index += d.retain;
      else if (d.insert) {
        const n = d.insert.length;
        if (index <= start) start += n;
        if (index <= end) end += n;
        index += n;
      } else if (d.delete) {
        if (index < start) start -= Math.min(d.delete, start - index);
        if (index < end) end -= Math.min(d.delete, end - index);
      }
    }
    textarea.value = text.toString();
    if (document.activeElement === textarea) textarea.setSelectionRange(start, end);
  });

  // The textarea's difference from the document, applied to the document as one edit.
  const applyEditor = () => {
    const before = text.toString();
    const after = textarea.value;
    let p = 0;
    while (p < before.length && p < after.length && before[p] === after[p]) p++;
    let q = 0;
    while (q < before.length - p && q < after.length - p && before[before.length - 1 - q] === after[after.length - 1 - q]) q++;
    doc.transact(() => {
      if (before.length - p - q > 0) text.delete(p, before.length - p - q);
      if (after.length - p - q > 0) text.insert(p, after.slice(p, after.length - q));
    });
  };
  const onInput = () => {
    if (synced) applyEditor();
  };
  textarea.addEventListener('input', onInput);

  return {
    isLive: () => synced && provider.wsconnected,
    destroy() {
      textarea.removeEventListener('input', onInput);
      provider.destroy();
      doc.destroy();
    },
  };
}
