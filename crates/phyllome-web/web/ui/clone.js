// Clone a shut-off VM: the new name, whether to keep the TPM state, then the
// clone's steps as the server streams them (the disk copy with a byte count),
// and a link to the new VM.

import {
  html, useState, useEffect, useRef, postWithProgress, vmPath, vmHash, bytes,
} from './lib.js';
import { Modal } from './dialogs.js';

// What each step of the engine's clone does, in words.
const STEPS = {
  claim: 'Reserving the name',
  disk: 'Copying the disk under a new key',
  'boot-files': 'Copying the kernel and initrd',
  nvram: 'Copying the UEFI variables',
  define: 'Defining the clone',
  tpm: 'Copying the TPM state',
  finish: 'Finishing',
};

const NAME_PATTERN = '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}';

// "web" -> "web-clone" (kept within the 64 characters a name may have).
export function cloneName(name) {
  const base = String(name || 'vm').slice(0, 64 - '-clone'.length);
  return `${base}-clone`;
}

function percentOf(done, total) {
  if (!total) return '';
  return `${Math.min(100, Math.floor((done / total) * 100))} %`;
}

// steps: [{ step, notes }]; a progress event with a step begins one, one with
// a message only is a note on the step under way, one with bytes counts the step's copy.
function addProgress(job, p) {
  if (!p) return job;
  if (p.step) return { ...job, steps: [...job.steps, { step: p.step, notes: p.message ? [p.message] : [] }], done: null, total: null };
  if (p.total !== null && p.total !== undefined) return { ...job, done: p.done || 0, total: p.total };
  if (!p.message) return job;
  const steps = job.steps.length ? job.steps : [{ step: null, notes: [] }];
  const last = steps[steps.length - 1];
  return { ...job, steps: [...steps.slice(0, -1), { ...last, notes: [...last.notes, p.message] }] };
}

function CloneProgress({ job, phase }) {
  const running = phase === 'running';
  const current = job.steps.length ? job.steps[job.steps.length - 1] : null;
  const stepText = current && current.step ? STEPS[current.step] || current.step : 'Checking the request';
  const hasBytes = running && job.total !== null && job.total !== undefined && job.total > 0;
  const figures = hasBytes ? `${bytes(job.done)} of ${bytes(job.total)} (${percentOf(job.done, job.total)})` : '';
  return html`<div id="clone-progress" data-testid="clone-progress" class="snap-progress" data-phase=${phase}
      data-step=${(current && current.step) || ''} data-done=${hasBytes ? job.done : ''} data-total=${hasBytes ? job.total : ''}
      role="status" aria-live="polite" aria-busy=${running ? 'true' : 'false'}>
    <ol id="clone-steps" class="clone-steps">
      ${job.steps.map((s, i) => html`<li data-step=${s.step || 'note'}
          class=${running && i === job.steps.length - 1 ? 'current' : phase === 'failed' && i === job.steps.length - 1 ? 'failed' : 'done'}>
        <span class="step-name">${s.step ? STEPS[s.step] || s.step : 'Note'}</span>
        <span class="step-message">${s.notes.join(' ')}</span></li>`)}
      ${running && !job.steps.length ? html`<li class="current"><span class="step-name">Checking</span>
        <span class="step-message">the request…</span></li>` : null}
    </ol>
    ${running ? html`<div class="clone-bar">
      ${hasBytes
        ? html`<progress key="bytes" id="clone-bar" max=${job.total} value=${Math.min(job.done, job.total)}
            aria-label=${stepText} aria-valuetext=${figures}></progress>`
        : html`<progress key="wait" id="clone-bar" aria-label=${stepText}></progress>`}
      <span class="upload-status" id="clone-bytes">${figures}</span>
    </div>` : null}
  </div>`;
}

// The clone dialog for VM (shut off when it opened). onClose: closed without
// going anywhere; the "Open" link goes to the new VM's page.
export function CloneDialog({ vm, onClose }) {
  const from = vm.name;
  const [name, setName] = useState(() => cloneName(from));
  const [keepTpm, setKeepTpm] = useState(false);
  const [phase, setPhase] = useState('form'); // form | running | done | failed
  const [job, setJob] = useState({ steps: [], done: null, total: null });
  const [result, setResult] = useState(null);
  const [error, setError] = useState('');
  const alive = useRef(true);
  const progressRef = useRef(null);
  const nextRef = useRef(null);
  useEffect(() => () => { alive.current = false; }, []);
  useEffect(() => {
    if (phase === 'running' && progressRef.current) progressRef.current.focus();
    if ((phase === 'done' || phase === 'failed') && nextRef.current) nextRef.current.focus();
  }, [phase]);

  const submit = async (e) => {
    e.preventDefault();
    if (phase === 'running') return;
    const body = { name: name.trim() };
    if (keepTpm) body.keep_tpm = true;
    setError('');
    setResult(null);
    setJob({ steps: [], done: null, total: null });
    setPhase('running');
    let events = 0;
    try {
      const r = await postWithProgress(`${vmPath(from)}/clone`, body, (p) => {
        events += 1;
        if (alive.current) setJob((j) => addProgress(j, p));
      }, { what: 'the clone' });
      if (!alive.current) return;
      setResult(r || { name: body.name, from });
      setPhase('done');
    } catch (err) {
      if (!alive.current) return;
      // The server's words as they are.
      setError(err.message);
      // Refused before anything was done (a bad name, a name in use, the VM running): back to the form.
      setPhase(events === 0 && err.status >= 400 && err.status < 500 ? 'form' : 'failed');
    }
  };

  const busy = phase === 'running';
  const newName = (result && result.name) || name.trim();
  // Keyed: a button is never reused as another (the "Back" clicked would turn into the submit button and send again).
  let buttons;
  if (phase === 'form') {
    buttons = html`<button key="clone-cancel" type="button" id="clone-cancel" onClick=${onClose}>Cancel</button>
      <button key="clone-submit" type="submit" id="clone-submit" data-testid="clone-submit" class="primary">Clone</button>`;
  } else if (phase === 'running') {
    buttons = html`<button key="clone-running" type="button" id="clone-submit" data-testid="clone-submit" class="primary" disabled>Cloning…</button>`;
  } else if (phase === 'done') {
    buttons = html`<button key="clone-close" type="button" id="clone-close" onClick=${onClose}>Close</button>
      <a key="clone-open" class="button primary" id="clone-open" data-testid="clone-open" ref=${nextRef} href=${vmHash(newName)}
        onClick=${onClose}>Open ${newName}</a>`;
  } else {
    buttons = html`<button key="clone-close" type="button" id="clone-close" onClick=${onClose}>Close</button>
      <button key="clone-back" type="button" id="clone-back" class="primary" ref=${nextRef} onClick=${() => setPhase('form')}>Back to the form</button>`;
  }

  const tpmText = result && (result.kept_tpm ? 'its TPM state copied'
    : keepTpm ? `a fresh TPM (${from} had no TPM state to copy)` : 'a fresh TPM');

  return html`<${Modal} id="clone-dialog" labelledBy="clone-title" busy=${busy} onClose=${onClose}>
    <form id="clone-form" onSubmit=${submit}>
      <h2 id="clone-title">Clone ${from}</h2>
      ${phase === 'form' ? html`
        <p class="hint" id="clone-intro">A full copy of ${from} under a name of its own: a new UUID and MAC address,
          ${vm.encrypted ? `its disk re-encrypted under a key of its own (QEMU copies it with ${from} started paused: no guest
          code runs, and ${from} is off again afterwards)` : 'its disk copied'}, and its UEFI variables and kernel files copied.</p>
        <label>Name of the clone
          <input type="text" id="clone-name" data-testid="clone-name" name="name" class="mono" required autofocus
            value=${name} pattern=${NAME_PATTERN} maxlength="64" autocomplete="off" spellcheck="false"
            placeholder="letters, digits, . _ -" onInput=${(e) => setName(e.target.value)} /></label>
        <label class="check"><input type="checkbox" id="clone-keep-tpm" data-testid="clone-keep-tpm" name="keep_tpm"
          checked=${keepTpm} aria-describedby="clone-tpm-note" onChange=${(e) => setKeepTpm(e.target.checked)} />
          Keep the TPM state</label>
        <p class=${`field-note${keepTpm ? ' warn' : ''}`} id="clone-tpm-note">By default the clone gets a fresh TPM: a copied
          TPM state clones everything the guest sealed in it (BitLocker keys, credentials), so two machines would hold the
          same secrets.${keepTpm ? ' Keep it only when the clone replaces the original.' : ''}</p>`
        : html`
        <p id="clone-summary">${phase === 'done' ? 'Cloned' : phase === 'failed' ? 'Could not clone' : 'Cloning'}
          ${' '}<strong>${from}</strong> as <strong class="mono">${newName}</strong></p>
        <div ref=${progressRef} tabindex="-1" class="clone-progress-box"><${CloneProgress} job=${job} phase=${phase} /></div>
        ${phase === 'done' && result ? html`<p id="clone-result" data-testid="clone-result" class="ok" role="status">
          ${result.name} is a copy of ${result.from || from}, with ${tpmText}.</p>` : null}`}
      <p id="clone-error" data-testid="clone-error" class="error" role="alert">${error}</p>
      <div class="buttons">${buttons}</div>
    </form>
  <//>`;
}
