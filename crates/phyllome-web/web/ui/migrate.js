// Move a VM of this host to another host (libvirt's migration): choose the
// destination among the configured hosts, see the check's items (what the move
// needs, each ok or not), and only then "Move", with the steps and bytes as the
// server streams them. The browser names hosts only, never a URI.

import {
  html, useState, useEffect, useRef, api, postWithProgress, vmPath, bytes,
} from './lib.js';
import { Modal } from './dialogs.js';

const STEPS = {
  check: 'Checking the destination',
  prepare: 'Preparing the destination (pool, a new disk key, the UEFI variables)',
  migrate: 'Copying the disk and the memory',
  finish: 'Removing it here',
};

function addProgress(job, p) {
  if (!p) return job;
  if (p.step) return { ...job, steps: [...job.steps, { step: p.step, notes: p.message ? [p.message] : [] }], done: null, total: null };
  if (p.total !== null && p.total !== undefined) return { ...job, done: p.done || 0, total: p.total };
  if (!p.message) return job;
  const steps = job.steps.length ? job.steps : [{ step: null, notes: [] }];
  const last = steps[steps.length - 1];
  return { ...job, steps: [...steps.slice(0, -1), { ...last, notes: [...last.notes, p.message] }] };
}

function CheckItems({ check, loading, error }) {
  if (loading) return html`<p class="hint" id="migrate-checking" role="status">Checking the destination…</p>`;
  if (error) return html`<p class="error" id="migrate-check-error" role="alert">${error}</p>`;
  if (!check) return null;
  return html`<div id="migrate-check" data-ok=${check.ok ? 'true' : 'false'} data-mode=${check.mode}>
    <p id="migrate-verdict" class=${check.ok ? 'ok' : 'error'}>${check.ok
      ? `It can move (${check.mode}).`
      : 'It cannot move yet: fix the items marked FAIL.'}</p>
    <ul class="check-items" id="migrate-items">
      ${check.items.map((i) => html`<li data-what=${i.what} data-ok=${i.ok ? 'true' : 'false'}>
        <span class=${`badge ${i.ok ? 'pass' : 'fail'}`}>${i.ok ? 'ok' : 'FAIL'}</span>
        <strong>${i.what}</strong>: ${i.detail}</li>`)}
    </ul>
  </div>`;
}

// VM: a row of this host's list; HOSTS: the hosts event's list (local included).
export function MigrateDialog({ vm, hosts, onClose }) {
  const targets = (hosts || []).filter((h) => h.name !== 'local');
  const firstUp = targets.find((h) => h.state === 'up') || targets[0];
  const [to, setTo] = useState(firstUp ? firstUp.name : '');
  const [live, setLive] = useState(vm.state === 'running' || vm.state === 'paused');
  const [check, setCheck] = useState({ loading: false, result: null, error: '' });
  const [phase, setPhase] = useState('form'); // form | running | done | failed
  const [job, setJob] = useState({ steps: [], done: null, total: null });
  const [result, setResult] = useState(null);
  const [error, setError] = useState('');
  const alive = useRef(true);
  useEffect(() => () => { alive.current = false; }, []);

  // The check runs whenever the destination or the mode changes; a late answer for an older choice is dropped.
  useEffect(() => {
    if (!to || phase !== 'form') return undefined;
    let stale = false;
    setCheck({ loading: true, result: null, error: '' });
    api('POST', `${vmPath(vm.name)}/migrate/check`, { to, live })
      .then((r) => { if (!stale && alive.current) setCheck({ loading: false, result: r, error: '' }); })
      .catch((e) => { if (!stale && alive.current) setCheck({ loading: false, result: null, error: e.message }); });
    return () => { stale = true; };
  }, [to, live, phase === 'form']);

  const move = async (e) => {
    e.preventDefault();
    if (phase !== 'form' || !check.result || !check.result.ok) return;
    setError('');
    setJob({ steps: [], done: null, total: null });
    setPhase('running');
    try {
      const r = await postWithProgress(`${vmPath(vm.name)}/migrate`, { to, live }, (p) => {
        if (alive.current) setJob((j) => addProgress(j, p));
      }, { what: 'the migration' });
      if (!alive.current) return;
      setResult(r);
      setPhase('done');
    } catch (err) {
      if (!alive.current) return;
      setError(err.message);
      setPhase('failed');
    }
  };

  const running = phase === 'running';
  const canMove = phase === 'form' && !check.loading && !!check.result && check.result.ok;
  const current = job.steps.length ? job.steps[job.steps.length - 1] : null;
  const hasBytes = running && job.total > 0;
  let buttons;
  if (phase === 'form') {
    buttons = html`<button key="m-cancel" type="button" id="migrate-cancel" onClick=${onClose}>Cancel</button>
      <button key="m-move" type="submit" id="migrate-submit" data-testid="migrate-submit" class="primary"
        disabled=${!canMove} title=${canMove ? `Move ${vm.name} to ${to}` : 'The check must pass first'}>Move</button>`;
  } else if (running) {
    buttons = html`<button key="m-running" type="button" id="migrate-submit" class="primary" disabled>Moving…</button>`;
  } else {
    buttons = html`<button key="m-close" type="button" id="migrate-close" class="primary" onClick=${onClose}>Close</button>`;
  }
  return html`<${Modal} id="migrate-dialog" labelledBy="migrate-title" busy=${running} onClose=${onClose}>
    <form id="migrate-form" onSubmit=${move}>
      <h2 id="migrate-title">Move ${vm.name} to another host</h2>
      ${phase === 'form' ? html`
        ${targets.length ? html`<label>Destination
          <select id="migrate-to" data-testid="migrate-to" value=${to} onChange=${(e) => setTo(e.target.value)}>
            ${targets.map((h) => html`<option value=${h.name}>${h.name}${h.state === 'up' ? '' : ` (${h.state})`}</option>`)}
          </select></label>` : html`<p class="hint" id="migrate-no-hosts">No other host is configured:
            add one with <code>phyllome host add NAME URI</code> and restart <code>phyllome serve</code>.</p>`}
        <label class="check"><input type="checkbox" id="migrate-live" data-testid="migrate-live" checked=${live}
          onChange=${(e) => setLive(e.target.checked)} /> Live: keep it running while it moves</label>
        <p class="field-note">The disk is copied and re-encrypted there under a new key; the UEFI variables and TPM
          state go with it. It is removed here only once the destination has it.</p>
        <${CheckItems} check=${check.result} loading=${check.loading} error=${check.error} />`
        : html`
        <p id="migrate-summary">${phase === 'done' ? 'Moved' : phase === 'failed' ? 'Could not move' : 'Moving'}
          ${' '}<strong>${vm.name}</strong> to <strong>${to}</strong></p>
        <ol id="migrate-steps" class="clone-steps" data-phase=${phase} role="status" aria-live="polite">
          ${job.steps.map((st, i) => html`<li data-step=${st.step || 'note'}
            class=${running && i === job.steps.length - 1 ? 'current' : phase === 'failed' && i === job.steps.length - 1 ? 'failed' : 'done'}>
            <span class="step-name">${st.step ? STEPS[st.step] || st.step : 'Note'}</span>
            <span class="step-message">${st.notes.join(' ')}</span></li>`)}
        </ol>
        ${running ? html`<div class="clone-bar">
          ${hasBytes ? html`<progress key="bytes" id="migrate-bar" max=${job.total} value=${Math.min(job.done, job.total)}
              aria-label=${current && current.step ? STEPS[current.step] || current.step : 'Moving'}></progress>`
            : html`<progress key="wait" id="migrate-bar" aria-label="Moving"></progress>`}
          <span class="upload-status">${hasBytes ? `${bytes(job.done)} of ${bytes(job.total)}` : ''}</span></div>` : null}
        ${phase === 'done' && result ? html`<p id="migrate-result" class="ok" role="status">${result.name} runs on
          ${to} now (${result.mode}, ${bytes(result.stats.data_processed)} moved in
          ${(result.stats.time_elapsed_ms / 1000).toFixed(1)} s${result.stats.downtime_ms !== null
            && result.stats.downtime_ms !== undefined ? `, paused ${result.stats.downtime_ms} ms` : ''}).</p>` : null}`}
      <p id="migrate-error" class="error" role="alert">${error}</p>
      <div class="buttons">${buttons}</div>
    </form>
  <//>`;
}
