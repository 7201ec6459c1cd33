// A VM's shared folders (virtiofs): the list its definition has, add one
// (read-only unless made writable), remove one; each change says whether it
// applies now or at the VM's next boot.

import { html, useState, useEffect, api, vmPath } from './lib.js';
import { confirmDialog } from './dialogs.js';

const sharesPath = (name) => `${vmPath(name)}/shares`;
const mountCommand = (tag) => `mount -t virtiofs ${tag} /mnt`;

// What a change's answer ({applies, why_not_now}) means for this VM.
function appliesText(c, running) {
  if (c.applies === 'now') {
    return running ? 'It applies now: the running guest has it too.' : 'It applies now: the VM has it when it starts.';
  }
  return `It applies at the next boot${c.why_not_now ? `: ${c.why_not_now}` : '.'}`;
}

function Access({ readonly }) {
  return readonly
    ? html`<span class="badge pass" data-field="access">read-only</span>`
    : html`<span class="badge warn" data-field="access">writable</span>`;
}

export function SharesPanel({ name, vm }) {
  const [list, setList] = useState(null);
  const [loadError, setLoadError] = useState('');
  const [reload, setReload] = useState(0);
  // { kind: 'ok' | 'error', text, applies? }
  const [message, setMessage] = useState(null);
  const [dir, setDir] = useState('');
  const [tag, setTag] = useState('');
  const [writable, setWritable] = useState(false);
  const [adding, setAdding] = useState(false);
  const [removing, setRemoving] = useState(null);
  const state = vm ? vm.state : null;
  const running = state === 'running' || state === 'paused';

  useEffect(() => {
    let gone = false;
    api('GET', sharesPath(name))
      .then((l) => { if (!gone) { setList(l); setLoadError(''); } })
      .catch((e) => { if (!gone) setLoadError(`The shared folders could not be read: ${e.message}`); });
    return () => { gone = true; };
  }, [name, reload, state]);

  const add = async (e) => {
    e.preventDefault();
    setMessage(null);
    const folder = dir.trim();
    if (!folder) {
      setMessage({ kind: 'error', text: 'Give the host folder\'s absolute path, e.g. /srv/data.' });
      return;
    }
    const body = { dir: folder };
    if (tag.trim()) body.tag = tag.trim();
    if (writable) body.writable = true;
    setAdding(true);
    try {
      const c = await api('POST', sharesPath(name), body);
      setMessage({
        kind: 'ok',
        applies: c.applies,
        text: `Sharing ${c.dir} as ${c.tag} (${c.readonly ? 'read-only' : 'writable'}). ${appliesText(c, running)}`,
      });
      setDir('');
      setTag('');
      setWritable(false);
    } catch (err) {
      setMessage({ kind: 'error', text: err.message });
    } finally {
      setAdding(false);
      setReload((n) => n + 1);
    }
  };

  const remove = async (s) => {
    setMessage(null);
    const ok = await confirmDialog('Remove share',
      `Stop sharing ${s.dir} (tag ${s.tag}) with ${name}? The folder and its files stay on the host.`, 'Remove');
    if (!ok) return;
    setRemoving(s.tag);
    try {
      const c = await api('DELETE', `${sharesPath(name)}/${encodeURIComponent(s.tag)}`);
      setMessage({ kind: 'ok', applies: c.applies, text: `No longer sharing ${c.dir} (${c.tag}). ${appliesText(c, running)}` });
    } catch (err) {
      setMessage({ kind: 'error', text: `Could not remove ${s.tag}: ${err.message}` });
    } finally {
      setRemoving(null);
      setReload((n) => n + 1);
    }
  };

  let body;
  if (loadError) body = html`<p class="error" id="shares-load-error">${loadError}</p>`;
  else if (!list) body = html`<p class="hint" id="shares-loading">Reading the shared folders…</p>`;
  else if (!list.length) {
    body = html`<div class="empty-note" id="shares-empty" data-testid="shares-empty">No shared folders: add one below to let the guest see a host folder.</div>`;
  } else {
    body = html`<table class="list" id="share-table">
      <thead><tr>${['Tag', 'Host folder', 'Access', 'Mount in the guest', ''].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
      <tbody id="share-rows">${list.map((s) => html`<tr key=${s.tag} data-testid=${`share-row-${s.tag}`} data-tag=${s.tag}
          data-readonly=${s.readonly ? 'true' : 'false'}>
        <td class="name mono" data-field="tag">${s.tag}</td>
        <td class="mono wrap" data-field="dir">${s.dir}</td>
        <td><${Access} readonly=${s.readonly} /></td>
        <td><code class="mono command" data-field="mount">${mountCommand(s.tag)}</code></td>
        <td class="actions-cell"><div class="actions">
          <button type="button" class="danger-text" data-testid=${`share-remove-${s.tag}`} data-action="remove"
            aria-label=${`Remove share ${s.tag}`} disabled=${removing === s.tag}
            onClick=${() => remove(s)}>${removing === s.tag ? 'Removing…' : 'Remove'}</button>
        </div></td>
      </tr>`)}</tbody>
    </table>`;
  }

  return html`<div id="shares" data-testid="shares">
    <p class="hint" id="shares-intro">Host folders this VM sees over virtiofs, as its definition has them.
      Read-only unless made writable. In the guest: <code class="mono">mount -t virtiofs TAG /mnt</code>.</p>
    ${body}
    <p id="share-message" data-testid="share-message" class=${message ? (message.kind === 'error' ? 'error' : 'share-ok') : 'error'}
      data-kind=${message ? message.kind : ''} data-applies=${message && message.applies ? message.applies : ''}
      role=${message && message.kind === 'error' ? 'alert' : 'status'}>${message ? message.text : ''}</p>
    <form class="share-form" id="share-add" onSubmit=${add} aria-labelledby="share-add-title">
      <h2 id="share-add-title">Add a shared folder</h2>
      <div class="grid">
        <label>Host folder (absolute path)
          <input type="text" id="share-add-dir" data-testid="share-add-dir" class="mono" name="dir" value=${dir}
            placeholder="/srv/data" autocomplete="off" spellcheck="false" onInput=${(e) => setDir(e.target.value)} /></label>
        <label>Tag (optional)
          <input type="text" id="share-add-tag" data-testid="share-add-tag" class="mono" name="tag" value=${tag}
            placeholder="default: the folder's name" autocomplete="off" spellcheck="false" onInput=${(e) => setTag(e.target.value)} /></label>
      </div>
      <label class="check">
        <input type="checkbox" id="share-add-writable" data-testid="share-add-writable" name="writable" checked=${writable}
          aria-describedby="share-writable-note" onChange=${(e) => setWritable(e.target.checked)} />
        Writable</label>
      <p id="share-writable-note" class=${writable ? 'field-note warn' : 'hint'}>${writable
        ? 'The guest can change and delete the host\'s files in this folder.'
        : 'Left unchecked, the guest can read the folder but not change it. Writable lets the guest change the host\'s files.'}</p>
      <div class="buttons">
        <button type="submit" class="primary" id="share-add-submit" data-testid="share-add-submit" disabled=${adding}>
          ${adding ? 'Adding…' : 'Add share'}</button>
      </div>
    </form>
  </div>`;
}
