// A VM's snapshots: the list (oldest first), take one (with the RAM while the
// VM runs), revert to one (what is lost said first; a running VM is powered
// off only when asked) and delete one. Taking and reverting stream their steps
// and the bytes copied; one operation at a time.

import {
  html, useState, useEffect, useRef, api, postWithProgress, vmPath, bytes, isActive, stateClass,
} from './lib.js';
import { Modal, confirmDialog } from './dialogs.js';

const snapshotsPath = (name) => `${vmPath(name)}/snapshots`;
const snapshotPath = (name, snap) => `${snapshotsPath(name)}/${encodeURIComponent(snap)}`;

// What each step of the engine's create and revert does, in words.
const STEPS = {
  create: {
    check: 'Checking the VM and the free space',
    claim: 'Reserving the snapshot',
    save: 'Saving the memory (the VM stops meanwhile)',
    freeze: 'Freezing the guest\'s filesystems',
    disk: 'Copying the disks',
    pause: 'Pausing the VM for a moment',
    'nvram-tpm': 'Copying the UEFI variables and TPM state',
    copy: 'Copying the disks while the VM runs',
    memory: 'Encrypting the memory',
    restore: 'Resuming the VM',
    finish: 'Finishing',
  },
  revert: {
    check: 'Checking the snapshot',
    claim: 'Reserving the VM',
    stage: 'Copying the snapshot\'s files beside the VM\'s',
    'power-off': 'Powering the VM off',
    swap: 'Swapping the files in',
    memory: 'Decrypting the memory',
    restore: 'Restoring the memory',
    start: 'Starting the VM',
  },
};

const OP_LABELS = { create: 'Taking snapshot', revert: 'Reverting to', delete: 'Deleting' };

function dateText(secs) {
  if (!secs) return '—';
  return new Date(secs * 1000).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}
const isoDate = (secs) => (secs ? new Date(secs * 1000).toISOString() : '');
// How consistent its disks are, when the state and memory columns do not say it already.
const consistencyNote = (s) => (s.consistency && s.consistency !== s.state && s.consistency !== 'memory' ? s.consistency : '');

function percentOf(done, total) {
  if (!total) return '';
  return `${Math.min(100, Math.floor((done / total) * 100))} %`;
}

// An operation under way: { op, snapshot, step, notes, done, total }.
function OpProgress({ job }) {
  const steps = STEPS[job.op] || {};
  const hasBytes = job.total !== null && job.total !== undefined && job.total > 0;
  const stepText = job.step ? steps[job.step] || job.step : (job.op === 'delete' ? 'Removing its files' : 'Starting');
  const figures = hasBytes ? `${bytes(job.done)} of ${bytes(job.total)} (${percentOf(job.done, job.total)})` : '';
  return html`<div id="snapshot-progress" data-testid="snapshot-progress" class="snap-progress" data-op=${job.op}
      data-step=${job.step || ''} data-done=${hasBytes ? job.done : ''} data-total=${hasBytes ? job.total : ''}
      role="status" aria-live="polite" aria-busy="true">
    <div class="snap-progress-head">
      <strong>${OP_LABELS[job.op] || job.op} <span class="mono">${job.snapshot || '(next free name)'}</span></strong>
      <span id="snapshot-step" data-testid="snapshot-step" class="snap-step">${stepText}…</span>
    </div>
    ${hasBytes
      ? html`<progress key="bytes" max=${job.total} value=${Math.min(job.done, job.total)}
          aria-label=${stepText} aria-valuetext=${figures}></progress>`
      : html`<progress key="wait" aria-label=${stepText}></progress>`}
    <span class="upload-status" id="snapshot-bytes">${figures}</span>
    ${job.notes.length ? html`<ul class="snap-notes">${job.notes.map((n) => html`<li>${n}</li>`)}</ul>` : null}
  </div>`;
}

// The revert question: what is lost, powering a running VM off (force), starting it afterwards.
function RevertDialog({ name, vm, snap, onCancel, onConfirm }) {
  const active = isActive(vm);
  const [force, setForce] = useState(false);
  const [start, setStart] = useState(active || snap.state === 'running');
  const submit = (e) => {
    e.preventDefault();
    onConfirm({ force: active && force, start: !snap.memory && start });
  };
  return html`<${Modal} id="snapshot-revert-dialog" labelledBy="snapshot-revert-title" onClose=${onCancel}>
    <form onSubmit=${submit}>
      <h2 id="snapshot-revert-title">Revert to ${snap.name}</h2>
      <p id="snapshot-revert-text">Revert ${name} to snapshot ${snap.name}, taken ${dateText(snap.created)}?
        Its disks, UEFI variables and TPM state become the snapshot's: whatever was written to them since
        is lost, unless another snapshot holds it.
        ${snap.memory
          ? ` The snapshot holds the memory, so ${name} resumes ${snap.state === 'paused' ? 'paused ' : ''}where it was then.`
          : ` The snapshot holds no memory: ${name} boots afresh from the disks when it next starts.`}</p>
      ${active ? html`<p class="field-note warn" id="snapshot-revert-running">${name} is ${vm.state}: a revert replaces
          its disks, so it must be powered off first, at once, and whatever its guest has not saved is lost.</p>
        <label class="check"><input type="checkbox" id="snapshot-revert-force" data-testid="snapshot-revert-force"
          checked=${force} onChange=${(e) => setForce(e.target.checked)} /> Power ${name} off first</label>` : null}
      ${snap.memory ? null : html`<label class="check"><input type="checkbox" id="snapshot-revert-start"
          data-testid="snapshot-revert-start" checked=${start} onChange=${(e) => setStart(e.target.checked)} />
        Start ${name} afterwards</label>`}
      <div class="buttons">
        <button type="button" id="snapshot-revert-cancel" autofocus onClick=${onCancel}>Cancel</button>
        <button type="submit" id="snapshot-revert-ok" data-testid="snapshot-revert-ok" class="danger"
          disabled=${active && !force}>${active ? 'Power off and revert' : 'Revert'}</button>
      </div>
    </form>
  <//>`;
}

export function SnapshotsPanel({ name, vm }) {
  const [list, setList] = useState(null);
  const [loadError, setLoadError] = useState('');
  const [reload, setReload] = useState(0);
  const [job, setJob] = useState(null);
  // { kind: 'ok' | 'error', op, text, notes? }
  const [message, setMessageNow] = useState(null);
  // Each message shown is numbered (data-seq): a new one is told from the last even when it reads the same.
  const seq = useRef(0);
  const setMessage = (m) => setMessageNow(m ? { ...m, seq: (seq.current += 1) } : null);
  const [snapName, setSnapName] = useState('');
  const [description, setDescription] = useState('');
  const [withMemory, setWithMemory] = useState(false);
  const [reverting, setReverting] = useState(null);
  const alive = useRef(true);
  useEffect(() => () => { alive.current = false; }, []);
  const state = vm ? vm.state : null;
  const active = isActive(vm);
  const busy = !!job;

  useEffect(() => {
    let gone = false;
    api('GET', snapshotsPath(name))
      .then((l) => { if (!gone) { setList(l); setLoadError(''); } })
      .catch((e) => { if (!gone) setLoadError(e.message); });
    return () => { gone = true; };
  }, [name, reload, state]);

  // Runs one streamed operation (create or revert), its progress shown as it comes.
  const stream = async (op, snapshot, path, body) => {
    setMessage(null);
    const notes = [];
    setJob({ op, snapshot, step: null, notes, done: null, total: null });
    try {
      const result = await postWithProgress(path, body, (p) => {
        if (!alive.current || !p) return;
        if (p.message) notes.push(p.message);
        setJob((j) => {
          if (!j) return j;
          // A new step starts with no byte count; a count belongs to the step under way.
          if (p.step) return { ...j, step: p.step, done: null, total: null, notes: [...notes] };
          if (p.total !== null && p.total !== undefined) return { ...j, done: p.done || 0, total: p.total };
          return { ...j, notes: [...notes] };
        });
      }, { what: op === 'create' ? 'the snapshot' : 'the revert' });
      return { result, notes };
    } finally {
      if (alive.current) {
        setJob(null);
        setReload((n) => n + 1);
      }
    }
  };

  const create = async (e) => {
    e.preventDefault();
    if (busy) return;
    const body = {};
    if (snapName.trim()) body.name = snapName.trim();
    if (description.trim()) body.description = description.trim();
    if (withMemory && active) body.memory = true;
    try {
      const { result: s, notes } = await stream('create', body.name, snapshotsPath(name), body);
      if (!alive.current) return;
      setMessage({
        kind: 'ok',
        op: 'create',
        text: `Took snapshot ${s.name} of ${name} (${bytes(s.size_bytes)}${s.memory ? ', with its memory' : ''}${
          consistencyNote(s) ? `; ${consistencyNote(s)}` : ''}).`,
        notes,
      });
      setSnapName('');
      setDescription('');
      setWithMemory(false);
    } catch (err) {
      if (alive.current) setMessage({ kind: 'error', op: 'create', text: err.message });
    }
  };

  const revert = async (snap, { force, start }) => {
    setReverting(null);
    const body = {};
    if (force) body.force = true;
    if (start) body.start = true;
    try {
      const { result: r, notes } = await stream('revert', snap.name, `${snapshotPath(name, snap.name)}/revert`, body);
      if (!alive.current) return;
      setMessage({
        kind: 'ok',
        op: 'revert',
        text: `${r.vm} is back at snapshot ${r.snapshot}${r.forced_off ? ' (powered off first)' : ''}; it is ${r.state} now.`,
        notes,
      });
    } catch (err) {
      if (alive.current) setMessage({ kind: 'error', op: 'revert', text: err.message });
    }
  };

  const remove = async (snap) => {
    setMessage(null);
    const ok = await confirmDialog('Delete snapshot',
      `Delete snapshot ${snap.name} of ${name}? Its copy of the disks${snap.memory ? ' and of the memory' : ''} `
      + `(${bytes(snap.size_bytes)}) is removed and ${name} can no longer go back to it. ${name} itself is not touched. `
      + 'This cannot be undone.', 'Delete');
    if (!ok || !alive.current) return;
    setJob({ op: 'delete', snapshot: snap.name, step: null, notes: [], done: null, total: null });
    try {
      await api('DELETE', snapshotPath(name, snap.name));
      if (alive.current) setMessage({ kind: 'ok', op: 'delete', text: `Deleted snapshot ${snap.name}.` });
    } catch (err) {
      if (alive.current) setMessage({ kind: 'error', op: 'delete', text: err.message });
    } finally {
      if (alive.current) {
        setJob(null);
        setReload((n) => n + 1);
      }
    }
  };

  let body;
  if (loadError && !list) {
    body = html`<p class="error" id="snapshots-load-error" role="alert">${loadError}</p>`;
  } else if (!list) {
    body = html`<p class="hint" id="snapshots-loading">Reading the snapshots…</p>`;
  } else if (!list.length) {
    body = html`<div class="empty-note" id="snapshots-empty" data-testid="snapshots-empty">No snapshots of ${name} yet:
      take one below to be able to come back to this point.</div>`;
  } else {
    const busyOn = (s, op) => job && job.op === op && job.snapshot === s.name;
    body = html`<table class="list" id="snapshot-table">
      <thead><tr>${['Name', 'Created', 'VM was', 'Memory', 'Size', 'Parent', 'Current', 'Description', '']
        .map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
      <tbody id="snapshot-rows">${list.map((s) => html`<tr key=${s.name} data-testid=${`snapshot-row-${s.name}`}
          data-snapshot=${s.name} data-current=${s.current ? 'true' : 'false'} data-memory=${s.memory ? 'true' : 'false'}
          class=${s.current ? 'current' : ''}>
        <td class="name mono" data-field="name">${s.name}</td>
        <td class="num" data-field="created"><time datetime=${isoDate(s.created)} title=${isoDate(s.created)}>${dateText(s.created)}</time></td>
        <td data-field="state"><span class=${stateClass(s.state)}>${s.state}</span>
          ${consistencyNote(s) ? html`<div class="snap-consistency">${consistencyNote(s)}</div>` : null}</td>
        <td data-field="memory">${s.memory ? 'yes' : 'no'}</td>
        <td class="num" data-field="size" title=${`${s.size_bytes} bytes`}>${bytes(s.size_bytes)}</td>
        <td class="mono" data-field="parent">${s.parent || '—'}</td>
        <td data-field="current">${s.current ? html`<span class="badge pass" title=${`The snapshot ${name} was last taken from or reverted to`}>current</span>` : ''}</td>
        <td class="wrap snap-description" data-field="description">${s.description || ''}</td>
        <td class="actions-cell"><div class="actions">
          <button type="button" data-testid=${`snapshot-revert-${s.name}`} data-action="revert"
            aria-label=${`Revert ${name} to snapshot ${s.name}`} disabled=${busy}
            onClick=${() => { setMessage(null); setReverting(s); }}>${busyOn(s, 'revert') ? 'Reverting…' : 'Revert'}</button>
          <button type="button" class="danger-text" data-testid=${`snapshot-delete-${s.name}`} data-action="delete"
            aria-label=${`Delete snapshot ${s.name}`} disabled=${busy}
            onClick=${() => remove(s)}>${busyOn(s, 'delete') ? 'Deleting…' : 'Delete'}</button>
        </div></td>
      </tr>`)}</tbody>
    </table>`;
  }

  return html`<div id="snapshots" data-testid="snapshots" aria-busy=${busy ? 'true' : 'false'}>
    <p class="hint" id="snapshots-intro">A snapshot keeps ${name}'s disks (still encrypted), UEFI variables and TPM state,
      and with "memory" its RAM (encrypted), so it can be put back as it was.</p>
    ${body}
    ${loadError && list ? html`<p class="error" id="snapshots-load-error" role="alert">${loadError}</p>` : null}
    ${job ? html`<${OpProgress} job=${job} />` : null}
    <p id="snapshot-message" data-testid="snapshot-message"
      class=${message ? (message.kind === 'error' ? 'error' : 'snap-ok') : 'error'}
      data-kind=${message ? message.kind : ''} data-op=${message ? message.op : ''} data-seq=${message ? message.seq : ''}
      role=${message && message.kind === 'error' ? 'alert' : 'status'}>${message ? message.text : ''}</p>
    ${message && message.notes && message.notes.length
      ? html`<ul class="snap-notes" id="snapshot-notes">${message.notes.map((n) => html`<li>${n}</li>`)}</ul>` : null}
    <form class="share-form" id="snapshot-create" onSubmit=${create} aria-labelledby="snapshot-create-title">
      <h2 id="snapshot-create-title">Take a snapshot</h2>
      <div class="grid">
        <label>Name (optional)
          <input type="text" id="snapshot-name" data-testid="snapshot-name" class="mono" name="name" value=${snapName}
            pattern="[A-Za-z0-9_][A-Za-z0-9._\\-]{0,63}" maxlength="64" placeholder="default: snap1, snap2…"
            autocomplete="off" spellcheck="false" onInput=${(e) => setSnapName(e.target.value)} /></label>
        <label>Description (optional)
          <input type="text" id="snapshot-description" data-testid="snapshot-description" name="description"
            value=${description} maxlength="1024" autocomplete="off" onInput=${(e) => setDescription(e.target.value)} /></label>
      </div>
      <label class="check">
        <input type="checkbox" id="snapshot-memory" data-testid="snapshot-memory" name="memory"
          checked=${withMemory && active} disabled=${!active || busy} aria-describedby="snapshot-memory-note"
          onChange=${(e) => setWithMemory(e.target.checked)} />
        With memory</label>
      <p id="snapshot-memory-note" class="hint">${active
        ? (withMemory
          ? `${name} stops while its RAM is saved, then resumes; a revert to this snapshot resumes it where it was.`
          : `Without memory the disks are copied while ${name} runs; a revert boots it afresh from them.`)
        : `${name} is ${state || 'not running'}: only a running VM's memory can be saved.`}</p>
      <div class="buttons">
        <button type="submit" class="primary" id="snapshot-submit" data-testid="snapshot-submit" disabled=${busy}>
          ${job && job.op === 'create' ? 'Taking the snapshot…' : 'Take snapshot'}</button>
      </div>
    </form>
    ${reverting ? html`<${RevertDialog} name=${name} vm=${vm} snap=${reverting}
      onCancel=${() => setReverting(null)} onConfirm=${(opts) => revert(reverting, opts)} />` : null}
  </div>`;
}
