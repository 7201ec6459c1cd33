// The host's ISO folder: the installer ISOs new VMs can boot, each with the
// OS Phyllome reads from it; upload (with progress, cancellable) and delete.
//
// An upload lives outside the page: leaving the Media page and coming back
// shows it still under way (leaving the app cancels it, after a warning).

import {
  html, useState, useEffect, useRef, api, uploadFile, mediaPath, bootText, bytes, percent,
} from './lib.js';
import { confirmDialog } from './dialogs.js';

// The name the server keeps a file as (isodir::sanitize): the last path part,
// characters outside A-Za-z0-9._+- made '_', no leading dot, ending in .iso,
// 5 to 128 characters. Null when the server would refuse it.
export function safeName(raw) {
  const base = String(raw).split(/[/\\]/).pop() || '';
  const name = [...base].map((c) => (/^[A-Za-z0-9._+-]$/.test(c) ? c : '_')).join('').replace(/^\.+/, '');
  if (!name.toLowerCase().endsWith('.iso') || name.length <= 4 || name.length > 128) return null;
  return name;
}

// ---------------------------------------------------------------- the upload under way

let upload = null; // { id, name, shownName, loaded, total, phase, result, error, rate, abort }
const listeners = new Set();
let nextId = 1;

function setUpload(u) {
  upload = u;
  for (const l of listeners) l(u);
}

function useUpload() {
  const [u, setU] = useState(upload);
  useEffect(() => {
    listeners.add(setU);
    setU(upload);
    return () => listeners.delete(setU);
  }, []);
  return u;
}

const running = (u) => !!u && (u.phase === 'uploading' || u.phase === 'checking');

// Closing or reloading the tab while bytes are going ends the upload: ask first.
function onBeforeUnload(e) {
  if (!running(upload)) return;
  e.preventDefault();
  e.returnValue = '';
}

function startUpload(file) {
  const id = nextId++;
  const started = Date.now();
  const update = (patch) => {
    if (upload && upload.id === id) setUpload({ ...upload, ...patch });
  };
  const { promise, abort } = uploadFile(mediaPath(file.name), file, (p) => {
    const secs = (Date.now() - started) / 1000;
    update({ loaded: p.loaded, total: p.total, rate: secs > 0.5 ? p.loaded / secs : null, phase: p.sent ? 'checking' : 'uploading' });
  });
  setUpload({
    id, name: file.name, shownName: safeName(file.name) || file.name, loaded: 0, total: file.size,
    phase: 'uploading', result: null, error: '', rate: null, abort,
  });
  window.addEventListener('beforeunload', onBeforeUnload);
  promise.then(
    (result) => update({ phase: 'done', result, loaded: file.size }),
    (e) => update(e.kind === 'cancelled' ? { phase: 'cancelled' } : { phase: 'failed', error: e.message, status: e.status }),
  ).finally(() => {
    if (!running(upload)) window.removeEventListener('beforeunload', onBeforeUnload);
  });
}

function UploadPanel({ u, onDismiss }) {
  const frac = u.total > 0 ? Math.min(1, u.loaded / u.total) : 0;
  const pct = percent(100 * frac);
  let status;
  if (u.phase === 'uploading') {
    status = `${pct} · ${bytes(u.loaded)} of ${bytes(u.total)}${u.rate ? ` · ${bytes(u.rate)}/s` : ''}`;
  } else if (u.phase === 'checking') status = `${bytes(u.total)} sent; the server is checking the image…`;
  else if (u.phase === 'done') status = `${bytes(u.total)} uploaded and checked`;
  else if (u.phase === 'cancelled') status = 'Cancelled: nothing was kept.';
  else status = `Failed after ${bytes(u.loaded)} of ${bytes(u.total)}: nothing was kept.`;
  const r = u.result;
  const boots = r && bootText(r.boot);
  return html`<section id="media-upload" class="upload-panel" data-testid="media-upload" aria-labelledby="media-upload-title">
    <div class="upload-head">
      <h2 id="media-upload-title">Upload of <span class="mono">${u.name}</span></h2>
      <span class="spacer"></span>
      ${running(u)
        ? html`<button type="button" id="media-upload-cancel" data-testid="media-upload-cancel" disabled=${u.phase !== 'uploading'}
            onClick=${() => u.abort()}>Cancel</button>`
        : html`<button type="button" id="media-upload-dismiss" onClick=${onDismiss}>Dismiss</button>`}
    </div>
    <div id="media-upload-progress" data-testid="media-upload-progress" data-phase=${u.phase}
      data-loaded=${u.loaded} data-total=${u.total}>
      <progress max=${u.total || 1} value=${u.phase === 'checking' || u.phase === 'done' ? u.total : u.loaded}
        aria-label=${`Upload of ${u.shownName}`} aria-valuetext=${status}></progress>
      <span class="upload-status" id="media-upload-status" aria-live="polite">${status}</span>
    </div>
    ${u.phase === 'failed' ? html`<p class="error" id="media-upload-error" data-testid="media-upload-error" role="alert">${u.error}</p>` : null}
    ${r ? html`<div id="media-upload-result" data-testid="media-upload-result" role="status">
      <p class="ok" id="media-upload-saved">${r.name === u.name ? `${r.name} is in the ISO folder.`
        : `In the ISO folder as ${r.name} (the name made safe for the host).`}</p>
      <dl class="facts">
        <div class="sha"><dt>SHA-256</dt><dd class="mono" id="media-sha256" data-testid="media-sha256">${r.sha256}</dd></div>
        <div><dt>Detected OS</dt><dd id="media-upload-os" data-os=${r.os || ''}>${r.os_name ? `${r.os_name} (${r.os})` : 'unknown: pick the OS when creating a VM'}</dd></div>
        <div><dt>Boots</dt><dd id="media-upload-boot">${boots || '—'}${r.virtio_win ? ' · a virtio-win driver disc' : ''}</dd></div>
        <div><dt>Volume ID</dt><dd class="mono" id="media-upload-volid">${r.volume_id || '—'}</dd></div>
        <div><dt>Size</dt><dd>${bytes(r.size_bytes)}</dd></div>
      </dl>
      ${r.problem ? html`<p class="note">${r.problem}</p>` : null}
    </div>` : null}
  </section>`;
}

// ---------------------------------------------------------------- the page

export function MediaPage() {
  const [list, setList] = useState(null);
  const [loadError, setLoadError] = useState('');
  const [error, setError] = useState('');
  const [deleting, setDeleting] = useState(null);
  const [reload, setReload] = useState(0);
  const input = useRef(null);
  const u = useUpload();

  useEffect(() => {
    let gone = false;
    api('GET', '/api/v1/media')
      .then((m) => { if (!gone) { setList(m); setLoadError(''); } })
      .catch((e) => { if (!gone) setLoadError(`The ISO folder could not be read: ${e.message}`); });
    return () => { gone = true; };
  }, [reload]);
  // A finished upload shows in the list.
  const phase = u && u.phase;
  useEffect(() => { if (phase === 'done') setReload((n) => n + 1); }, [u && u.id, phase]);

  const isos = list ? list.files.filter((f) => f.kind === 'iso') : [];
  const others = list ? list.files.length - isos.length : 0;

  const pick = () => {
    setError('');
    input.current.click();
  };
  const picked = (e) => {
    const file = e.target.files && e.target.files[0];
    // Picking the same file again is a change too.
    e.target.value = '';
    if (!file) return;
    setError('');
    const name = safeName(file.name);
    if (!name) {
      setError(`${file.name}: only ISO images (a name ending in .iso) go in the ISO folder.`);
      return;
    }
    if (isos.some((f) => f.name === name)) {
      setError(`${name} is already in the ISO folder: delete it first, or rename the file.`);
      return;
    }
    startUpload(file);
  };

  const remove = async (name) => {
    setError('');
    const ok = await confirmDialog('Delete ISO',
      `Delete ${name} from the ISO folder${list && list.dir ? ` (${list.dir})` : ''}? This cannot be undone.`, 'Delete');
    if (!ok) return;
    setDeleting(name);
    try {
      await api('DELETE', mediaPath(name));
      if (u && u.result && u.result.name === name && !running(u)) setUpload(null);
    } catch (e) {
      setError(e.status === 409 ? e.message : `Could not delete ${name}: ${e.message}`);
    } finally {
      setDeleting(null);
      setReload((n) => n + 1);
    }
  };

  let body;
  if (loadError) body = html`<p class="error" id="media-load-error">${loadError}</p>`;
  else if (!list) body = html`<p class="hint" id="media-loading">Reading the ISO folder…</p>`;
  else if (!isos.length) {
    body = html`<div class="empty-note" id="media-empty">No ISO in the folder yet: upload an installer ISO to create VMs from it.</div>`;
  } else {
    body = html`<table class="list" id="media-table">
      <thead><tr>${['Name', 'Size', 'Detected OS', 'Boots', ''].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
      <tbody id="media-rows">${isos.map((f) => {
        const boots = bootText(f.boot);
        return html`<tr key=${f.name} data-testid=${`media-row-${f.name}`} data-name=${f.name} data-os=${f.os || ''}>
          <td class="name mono">${f.name}</td>
          <td class="num">${bytes(f.size)}</td>
          <td data-field="os">${f.os_name
            ? html`${f.os_name} <span class="hint">(${f.os})</span>`
            : html`<span class="hint">${f.boot ? 'unknown' : 'unknown (not readable as an ISO)'}</span>`}
            ${f.virtio_win ? html` <span class="badge driver" data-testid=${`media-driver-${f.name}`}
              title="virtio-win: Windows drivers for virtio devices, attached to Windows VMs">driver disc</span>` : null}</td>
          <td data-field="boot">${boots || '—'}</td>
          <td class="actions-cell"><div class="actions">
            <button type="button" class="danger-text" data-testid=${`media-delete-${f.name}`} data-action="delete"
              aria-label=${`Delete ${f.name}`} disabled=${deleting === f.name}
              onClick=${() => remove(f.name)}>${deleting === f.name ? 'Deleting…' : 'Delete'}</button>
          </div></td>
        </tr>`;
      })}</tbody>
    </table>`;
  }

  return html`<section id="media-page">
    <div class="toolbar">
      <h1 tabindex="-1">Installer media</h1>
      <span class="spacer"></span>
      <button type="button" id="media-refresh" onClick=${() => setReload((n) => n + 1)}>Refresh</button>
      <button type="button" id="media-upload-button" class="primary" disabled=${running(u)} onClick=${pick}>Upload ISO…</button>
      <input type="file" id="media-upload-input" data-testid="media-upload-input" ref=${input} hidden
        accept=".iso,application/x-iso9660-image" onChange=${picked} />
    </div>
    <p class="hint" id="media-dir">${list
      ? `ISOs in ${list.dir} on the host${list.exists ? '' : ' (not made yet: the first upload makes it)'}. A new VM can boot one; Phyllome reads the OS from it.`
      : ''}</p>
    <p id="media-error" data-testid="media-error" class="error" role="alert">${error}</p>
    ${u ? html`<${UploadPanel} u=${u} onDismiss=${() => setUpload(null)} />` : null}
    ${body}
    ${others ? html`<p class="hint" id="media-others">${`Also in the folder: ${others} other file${others > 1 ? 's' : ''} (kernels, initrds) for direct kernel boot.`}</p>` : null}
  </section>`;
}
