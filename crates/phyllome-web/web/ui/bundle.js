// Moving a VM: export a shut-off VM as one encrypted bundle (the browser's own
// download manager saves it), and import a bundle as a new VM, rebuilt for
// this host, showing what this host decides differently and why.
//
// Export asks the server for a one-time download link (POST, with the
// passphrase), then follows it with a plain link: the bundle streams straight
// to disk whatever its size. Import uploads the file with XMLHttpRequest
// (for its upload progress); the passphrase goes in a header, percent-encoded.

import {
  html, useState, useEffect, useRef, api, uploadFile, vmPath, vmHash, bytes, percent,
} from './lib.js';
import { Modal } from './dialogs.js';

const NAME_PATTERN = '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}';
// Below this many characters, a passphrase is said to be weak (it is the bundle's only protection).
const SHORT_PASSPHRASE = 12;

// "w11" -> "w11.phyllome", as the server names the download.
export const bundleName = (name) => `${String(name).replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '')}.phyllome`;

// Starts a download of URL as a plain link would (no page change: the answer is an attachment).
function download(url, fileName) {
  const a = document.createElement('a');
  a.href = url;
  a.download = fileName;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
}

// ---------------------------------------------------------------- export

// The export dialog for VM (shut off when it opened).
export function ExportDialog({ vm, onClose }) {
  const name = vm.name;
  const [pass, setPass] = useState('');
  const [again, setAgain] = useState('');
  const [phase, setPhase] = useState('form'); // form | asking | started
  const [error, setError] = useState('');
  const alive = useRef(true);
  const closeRef = useRef(null);
  useEffect(() => () => { alive.current = false; }, []);
  useEffect(() => { if (phase === 'started' && closeRef.current) closeRef.current.focus(); }, [phase]);

  const submit = async (e) => {
    e.preventDefault();
    if (phase !== 'form') return;
    if (!pass) {
      setError('Type a passphrase: it is what opens the bundle.');
      return;
    }
    if (pass !== again) {
      setError('The two passphrases differ: type the same one twice.');
      return;
    }
    setError('');
    setPhase('asking');
    try {
      const ticket = await api('POST', `${vmPath(name)}/export`, { passphrase: pass });
      if (!alive.current) return;
      setPass('');
      setAgain('');
      download(ticket.download, bundleName(name));
      setPhase('started');
    } catch (err) {
      if (!alive.current) return;
      // The server's words as they are (a running VM, no such VM...).
      setError(err.message);
      setPhase('form');
    }
  };

  const short = pass.length > 0 && pass.length < SHORT_PASSPHRASE;
  const mismatch = again.length > 0 && again !== pass;
  let buttons;
  if (phase === 'started') {
    buttons = html`<button key="export-close" type="button" id="export-close" class="primary" ref=${closeRef}
      onClick=${onClose}>Close</button>`;
  } else {
    buttons = html`<button key="export-cancel" type="button" id="export-cancel" onClick=${onClose}>Cancel</button>
      <button key="export-submit" type="submit" id="export-submit" data-testid="export-submit" class="primary"
        disabled=${phase === 'asking'}>${phase === 'asking' ? 'Checking…' : 'Export'}</button>`;
  }
  return html`<${Modal} id="export-dialog" labelledBy="export-title" busy=${phase === 'asking'} onClose=${onClose}>
    <form id="export-form" onSubmit=${submit} noValidate>
      <h2 id="export-title">Export ${name}</h2>
      ${phase !== 'started' ? html`
        <p class="hint" id="export-intro">One encrypted file, <span class="mono">${bundleName(name)}</span>, to move ${name} to
          another host (or keep it): its disk, UEFI variables and TPM state, and what it is made of. The other host
          imports it and rebuilds it for its own hardware. ${name} must be shut off (a bundle holds one consistent
          state); its snapshots stay here.</p>
        <p class="hint" id="export-passphrase-note">The passphrase opens the bundle: without it the file holds nothing
          readable, with it anyone holds the disk. It is not kept anywhere: lose it and the bundle cannot be opened.</p>
        <label>Passphrase
          <input type="password" id="export-passphrase" data-testid="export-passphrase" name="passphrase" required
            autofocus autocomplete="new-password" value=${pass} onInput=${(e) => { setPass(e.target.value); setError(''); }} /></label>
        <label>The same passphrase again
          <input type="password" id="export-passphrase-again" data-testid="export-passphrase-again" name="again" required
            autocomplete="new-password" value=${again} aria-invalid=${mismatch ? 'true' : 'false'}
            onInput=${(e) => { setAgain(e.target.value); setError(''); }} /></label>
        <p class=${`field-note${short || mismatch ? ' warn' : ''}`} id="export-strength">${mismatch
          ? 'The two passphrases differ.'
          : short ? `Short: a bundle is only as strong as its passphrase; ${SHORT_PASSPHRASE} characters or more (a few words) resist guessing.`
            : ' '}</p>`
        : html`
        <p id="export-started" data-testid="export-started" class="ok" role="status">Your browser is saving
          ${' '}<span class="mono">${bundleName(name)}</span>: see its downloads.</p>
        <p class="hint" id="export-started-note">The download starts once QEMU has re-encrypted the disk under the
          export key (seconds for a small disk, minutes for a big one). Leave ${name} shut off until it has finished.
          The link worked once: to export again, open this dialog again.</p>`}
      <p id="export-error" data-testid="export-error" class="error" role="alert">${error}</p>
      <div class="buttons">${buttons}</div>
    </form>
  <//>`;
}

// ---------------------------------------------------------------- import

function hostText(h) {
  if (!h) return '';
  const virt = h.virt_type === 'kvm' ? 'KVM' : h.virt_type === 'qemu' ? 'TCG (no KVM)' : h.virt_type;
  // "amd" and "AMD EPYC": the model alone when it names its vendor.
  const model = h.cpu_model || '';
  const vendor = h.cpu_vendor && !model.toLowerCase().includes(h.cpu_vendor.toLowerCase()) ? h.cpu_vendor : '';
  const cpu = [vendor, model].filter(Boolean).join(' ');
  return `${virt}${cpu ? `, ${cpu}` : ''}, libvirt ${h.libvirt}, QEMU ${h.qemu}`;
}

function ImportResult({ r }) {
  const changes = r.changes || [];
  const warnings = r.warnings || [];
  const shares = r.shares || [];
  return html`<div id="import-result" data-testid="import-result" data-dry-run=${r.dry_run ? 'true' : 'false'}
      data-changes=${changes.length} role="status">
    <p class="ok" id="import-summary">${r.dry_run
      ? `Dry run: ${r.name} (${r.os}) would be made on this host. Nothing was made.`
      : `Imported as ${r.name} (${r.os}), shut off.`}</p>
    <p class="hint" id="import-source">Exported on: ${hostText(r.source)}.</p>
    <h3>What this host decides differently, and why</h3>
    ${changes.length ? html`<table class="list" id="import-changes" data-testid="import-changes">
      <thead><tr>${['Item', 'There', 'Here', 'Why'].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
      <tbody>${changes.map((c) => html`<tr data-item=${c.item}>
        <td>${c.item}</td><td class="mono wrap">${c.from === null || c.from === undefined ? '(none)' : c.from}</td>
        <td class="mono wrap">${c.to === null || c.to === undefined ? '(none)' : c.to}</td><td class="why">${c.why}</td></tr>`)}</tbody>
    </table>` : html`<p id="import-no-changes" data-testid="import-no-changes">Nothing: this host chooses every
      device as the exporting one did.</p>`}
    <h3>What of this host it reaches</h3>
    <ul id="import-reach" data-testid="import-reach" data-shares=${shares.length}>
      ${shares.length ? shares.map((sh) => html`<li data-dir=${sh.dir}>Host folder <span class="mono">${sh.dir}</span>
        shared as <span class="mono">${sh.tag}</span>, ${sh.readonly ? 'read-only' : html`<strong>writable</strong>`}</li>`)
    : html`<li>No host folder is shared with it.</li>`}
      <li>Network: <span class="mono">${r.network}</span></li>
    </ul>
    ${warnings.length ? html`<ul class="warnings" id="import-warnings" data-testid="import-warnings">
      ${warnings.map((w) => html`<li>${w}</li>`)}</ul>` : null}
  </div>`;
}

function onBeforeUnload(e) {
  e.preventDefault();
  e.returnValue = '';
}

// The import dialog: a bundle file, its passphrase, a name (default: the bundle's), dry run or not. The form
// stays in the page (hidden) while it runs, so "Back to the form" finds the file still picked.
export function ImportDialog({ onClose }) {
  const [file, setFile] = useState(null);
  const [pass, setPass] = useState('');
  const [name, setName] = useState('');
  const [dryRun, setDryRun] = useState(false);
  const [force, setForce] = useState(false);
  const [phase, setPhase] = useState('form'); // form | uploading | checking | done | failed
  const [progress, setProgress] = useState({ loaded: 0, total: 0 });
  const [result, setResult] = useState(null);
  const [error, setError] = useState('');
  const abortRef = useRef(null);
  const alive = useRef(true);
  const nextRef = useRef(null);
  useEffect(() => () => {
    alive.current = false;
    if (abortRef.current) abortRef.current();
    window.removeEventListener('beforeunload', onBeforeUnload);
  }, []);
  useEffect(() => { if ((phase === 'done' || phase === 'failed') && nextRef.current) nextRef.current.focus(); }, [phase]);

  const run = (dry) => {
    if (!file) {
      setError('Pick the bundle file (NAME.phyllome).');
      return;
    }
    if (!pass) {
      setError('Type the passphrase the bundle was exported with.');
      return;
    }
    const q = new URLSearchParams();
    if (name.trim()) q.set('name', name.trim());
    q.set('dry_run', dry ? 'true' : 'false');
    if (force) q.set('force', 'true');
    setError('');
    setResult(null);
    setProgress({ loaded: 0, total: file.size });
    setPhase('uploading');
    window.addEventListener('beforeunload', onBeforeUnload);
    const { promise, abort } = uploadFile(`/api/v1/import?${q}`, file, (p) => {
      if (!alive.current) return;
      setProgress({ loaded: p.loaded, total: p.total });
      if (p.sent) setPhase('checking');
    }, { method: 'POST', headers: { 'X-Phyllome-Passphrase': encodeURIComponent(pass) } });
    abortRef.current = abort;
    promise.then((r) => {
      if (!alive.current) return;
      setResult(r);
      setPhase('done');
      if (!r.dry_run) setPass('');
    }, (e) => {
      if (!alive.current) return;
      if (e.kind === 'cancelled') {
        setError('Cancelled: nothing was made.');
        setPhase('form');
        return;
      }
      // The server's words as they are (a wrong passphrase, a damaged bundle, a taken name...).
      setError(e.message);
      setPhase('failed');
    }).finally(() => {
      abortRef.current = null;
      window.removeEventListener('beforeunload', onBeforeUnload);
    });
  };
  const submit = (e) => {
    e.preventDefault();
    if (phase === 'form') run(dryRun);
  };

  const busy = phase === 'uploading' || phase === 'checking';
  const frac = progress.total > 0 ? Math.min(1, progress.loaded / progress.total) : 0;
  let status = '';
  if (phase === 'uploading') status = `${percent(100 * frac)} · ${bytes(progress.loaded)} of ${bytes(progress.total)}`;
  else if (phase === 'checking') status = `${bytes(progress.total)} sent; the server checks every part${dryRun || (result && result.dry_run) ? '' : ' and makes the VM'}…`;
  else if (phase === 'done') status = `${bytes(progress.total)} sent and checked`;
  else if (phase === 'failed') status = `Refused after ${bytes(progress.loaded)} of ${bytes(progress.total)}: nothing was made.`;

  let buttons;
  if (phase === 'form') {
    buttons = html`<button key="import-cancel" type="button" id="import-cancel" onClick=${onClose}>Cancel</button>
      <button key="import-submit" type="submit" id="import-submit" data-testid="import-submit" class="primary">${dryRun ? 'Check (dry run)' : 'Import'}</button>`;
  } else if (busy) {
    buttons = html`<button key="import-abort" type="button" id="import-abort" data-testid="import-abort"
        disabled=${phase !== 'uploading'} onClick=${() => abortRef.current && abortRef.current()}>Cancel</button>
      <button key="import-running" type="button" id="import-submit" data-testid="import-submit" class="primary" disabled>${phase === 'uploading' ? 'Uploading…' : 'Checking…'}</button>`;
  } else if (phase === 'done' && result && result.dry_run) {
    buttons = html`<button key="import-close" type="button" id="import-close" onClick=${onClose}>Close</button>
      <button key="import-back" type="button" id="import-back" onClick=${() => setPhase('form')}>Back to the form</button>
      <button key="import-now" type="button" id="import-now" data-testid="import-now" class="primary" ref=${nextRef}
        onClick=${() => { setDryRun(false); run(false); }}>Import it now</button>`;
  } else if (phase === 'done') {
    buttons = html`<button key="import-close" type="button" id="import-close" onClick=${onClose}>Close</button>
      <a key="import-open" class="button primary" id="import-open" data-testid="import-open" ref=${nextRef}
        href=${vmHash(result.name)} onClick=${onClose}>Open ${result.name}</a>`;
  } else {
    buttons = html`<button key="import-close" type="button" id="import-close" onClick=${onClose}>Close</button>
      <button key="import-back" type="button" id="import-back" class="primary" ref=${nextRef}
        onClick=${() => { setError(''); setPhase('form'); }}>Back to the form</button>`;
  }

  return html`<${Modal} id="import-dialog" labelledBy="import-title" busy=${busy} onClose=${onClose}>
    <form id="import-form" onSubmit=${submit} noValidate>
      <h2 id="import-title">Import a VM</h2>
      <div id="import-fields" hidden=${phase !== 'form'}>
        <p class="hint" id="import-intro">A bundle from <em>Export</em> (here or on another host) becomes a VM here,
          rebuilt for this host's hardware: the dialog then says what this host decides differently, and why. Every
          part is checked before anything is made; a dry run checks and says, and makes nothing.</p>
        <label>Bundle
          <input type="file" id="import-file" data-testid="import-file" name="bundle" required
            accept=".phyllome,application/octet-stream" onChange=${(e) => setFile((e.target.files && e.target.files[0]) || null)} /></label>
        ${file ? html`<p class="hint" id="import-file-info">${file.name} · ${bytes(file.size)}</p>` : null}
        <label>Passphrase
          <input type="password" id="import-passphrase" data-testid="import-passphrase" name="passphrase" required
            autocomplete="off" value=${pass} onInput=${(e) => setPass(e.target.value)} /></label>
        <label>Name here (optional)
          <input type="text" id="import-name" data-testid="import-name" name="name" class="mono" value=${name}
            pattern=${NAME_PATTERN} maxlength="64" autocomplete="off" spellcheck="false"
            placeholder="the name in the bundle" onInput=${(e) => setName(e.target.value)} /></label>
        <label class="check"><input type="checkbox" id="import-dry-run" data-testid="import-dry-run" name="dry_run"
          checked=${dryRun} onChange=${(e) => setDryRun(e.target.checked)} />
          Dry run: check the bundle and show what would change, make nothing</label>
        <label class="check"><input type="checkbox" id="import-force" data-testid="import-force" name="force"
          checked=${force} onChange=${(e) => setForce(e.target.checked)} />
          Share the bundle's host folders even where adding the share would be refused (the host's own folders,
          a folder holding a VM's disk)</label>
      </div>
      ${phase === 'form' ? null : html`
        <p id="import-file-summary">${file ? html`<span class="mono">${file.name}</span> (${bytes(file.size)})` : null}</p>
        <div id="import-progress" data-testid="import-progress" class="clone-bar" data-phase=${phase}
            data-loaded=${progress.loaded} data-total=${progress.total}>
          <progress max=${progress.total || 1} value=${phase === 'uploading' || phase === 'failed' ? progress.loaded : progress.total}
            aria-label="Upload of the bundle" aria-valuetext=${status}></progress>
          <span class="upload-status" id="import-status" aria-live="polite">${status}</span>
        </div>
        ${phase === 'done' && result ? html`<${ImportResult} r=${result} />` : null}`}
      <p id="import-error" data-testid="import-error" class="error" role="alert">${error}</p>
      <div class="buttons">${buttons}</div>
    </form>
  <//>`;
}
