// Modal dialogs: the confirmation of destructive actions and the create
// dialog with its live progress. Both are native <dialog>s opened with
// showModal(): the page behind is inert, Tab stays inside, Escape closes
// (unless a create is under way), and focus goes back where it was.

import {
  html, useState, useEffect, useLayoutEffect, useRef, api, createVm, sizeFromMib, bootText,
} from './lib.js';

export function Modal({ id, labelledBy, busy, onClose, children }) {
  const ref = useRef(null);
  const closing = useRef(false);
  useLayoutEffect(() => {
    const d = ref.current;
    const opener = document.activeElement;
    d.showModal();
    return () => {
      closing.current = true;
      if (d.open) d.close();
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
    };
  }, []);
  const onCancel = (e) => { if (busy) e.preventDefault(); };
  const onDialogClose = () => { if (!closing.current) onClose(); };
  return html`<dialog id=${id} ref=${ref} aria-labelledby=${labelledBy} onCancel=${onCancel} onClose=${onDialogClose}>
    ${children}
  </dialog>`;
}

// ---------------------------------------------------------------- confirmation

let askHost = null;

// Resolves true when the person confirms, false when they cancel (button or Escape).
export function confirmDialog(title, text, okLabel) {
  if (!askHost) return Promise.resolve(false);
  return new Promise((resolve) => askHost({ title, text, okLabel, danger: true, resolve: (v) => resolve(v !== null) }));
}

// Asks for a passphrase: resolves to it, or null when the person cancels.
export function passphraseDialog(title, text, okLabel) {
  if (!askHost) return Promise.resolve(null);
  return new Promise((resolve) => askHost({ title, text, okLabel, input: 'Passphrase', resolve }));
}

export function ConfirmHost() {
  const [ask, setAsk] = useState(null);
  const input = useRef(null);
  useEffect(() => {
    askHost = setAsk;
    return () => { askHost = null; };
  }, []);
  if (!ask) return null;
  const done = (value) => {
    setAsk(null);
    ask.resolve(value);
  };
  const submit = (e) => {
    e.preventDefault();
    done(ask.input ? input.current.value : true);
  };
  // A question on a destructive action focuses Cancel: Enter keeps the VM.
  return html`<${Modal} id="confirm-dialog" labelledBy="confirm-title" onClose=${() => done(null)}>
    <form onSubmit=${submit}>
      <h2 id="confirm-title">${ask.title}</h2>
      <p id="confirm-text">${ask.text}</p>
      ${ask.input ? html`<label>${ask.input} <input id="confirm-input" ref=${input} type="password" required autofocus
        autocomplete="off" /></label>` : null}
      <div class="buttons">
        <button type="button" id="confirm-cancel" autofocus=${!ask.input} onClick=${() => done(null)}>Cancel</button>
        <button type="submit" id="confirm-ok" class=${ask.danger ? 'danger' : 'primary'}>${ask.okLabel}</button>
      </div>
    </form>
  <//>`;
}

// ---------------------------------------------------------------- create

// Create's steps (each progress event with a step begins one; one without
// is a note on the step under way).
const STEP_LABELS = {
  claim: 'Reserve the name',
  pool: 'Storage pool',
  secret: 'Disk key',
  volume: 'Disk',
  'boot-files': 'Kernel and initrd',
  define: 'Define the VM',
  nvram: 'Firmware variables',
  start: 'Start',
  finish: 'Finish',
};

function addProgress(steps, p) {
  if (p && p.step) return [...steps, { step: p.step, notes: p.message ? [p.message] : [] }];
  if (!p || !p.message) return steps;
  if (!steps.length) return [{ step: null, notes: [p.message] }];
  const last = steps[steps.length - 1];
  return [...steps.slice(0, -1), { ...last, notes: [...last.notes, p.message] }];
}

let osCache = null;

const blankForm = {
  name: '', os: '', memory: '', cpus: '', disk_size: '', iso: '', network: '', encryption: 'secret',
  passphrase: '', passphrase2: '', kernel: '', initrd: '', cmdline: '', start: true,
  secure_boot: false, drivers: '', disk_bus: '', force: false,
};

// The Secure Boot switch of an OS (GET /api/v1/os): whether it is on, whether the person may change it, and why.
export function secureBootOf(p, asked) {
  if (!p) return { on: !!asked, fixed: false, note: '' };
  switch (p.secure_boot) {
    case 'required': return { on: true, fixed: true, note: `always on for ${p.name}: it refuses to install without it` };
    case 'preferred': return { on: true, fixed: true, note: 'on when this host has secure-boot firmware with Microsoft keys' };
    case 'off': return {
      on: !!asked,
      fixed: false,
      note: asked ? 'on, with Microsoft keys (for shim-signed kernels): the host needs that firmware'
        : 'off by default: unsigned kernels and modules just work',
    };
    default: return { on: false, fixed: true, note: `${p.name} starts from BIOS, which has no Secure Boot` };
  }
}

function Field({ label, wide, children }) {
  return html`<label class=${wide ? 'wide' : ''}>${label} ${children}</label>`;
}

function Options({ list, blank }) {
  return [
    blank !== undefined ? html`<option value="">${blank}</option>` : null,
    ...list.map(([value, text]) => html`<option value=${value}>${text}</option>`),
  ];
}

function networkLabel(n) {
  if (n.name === 'default' && n.forward === 'nat') return 'default (libvirt NAT)';
  return `${n.name} (libvirt${n.forward && n.forward !== 'none' ? ` ${n.forward}` : ', isolated'})`;
}

function osHint(p) {
  const d = (p.description || '').trim();
  const min = p.min_cpus ? `, at least ${p.min_cpus} vCPU${p.min_cpus > 1 ? 's' : ''}` : '';
  const rec = `Recommended: ${sizeFromMib(p.recommended_memory_mib) || '?'} memory, ${p.recommended_disk_gib || '?'}G disk${min}.`;
  return d ? `${d}${/[.!?]$/.test(d) ? '' : '.'} ${rec}` : rec;
}

// The OS the form starts with: generic Linux when the catalog has it.
const defaultOs = (list) => (list.some((p) => p.id === 'linux') ? 'linux' : (list[0] && list[0].id) || '');

export function CreateDialog({ onClose, onOpenVm }) {
  const [form, setForm] = useState(blankForm);
  // Fields the person typed in keep their value when the OS changes.
  const touched = useRef(new Set());
  const [os, setOs] = useState(osCache);
  const [media, setMedia] = useState(null);
  const mediaRef = useRef(null);
  mediaRef.current = media;
  const [networks, setNetworks] = useState(null);
  const [loadError, setLoadError] = useState('');
  const [phase, setPhase] = useState('form'); // form | running | done | failed
  const [steps, setSteps] = useState([]);
  const [result, setResult] = useState(null);
  const [error, setError] = useState('');
  const progressRef = useRef(null);
  const nextRef = useRef(null);

  const profileOf = (id, list) => (list || []).find((p) => p.id === id);
  // An ISO of the folder, with what the server read from it (os, os_name, boot).
  const isoOf = (name) => (name && mediaRef.current && mediaRef.current.files || [])
    .find((f) => f.kind === 'iso' && f.name === name);
  // The OS the VM gets: the one picked, or (left to "detect from ISO") the ISO's.
  const osOf = (f) => f.os || (isoOf(f.iso) || {}).os || '';

  const applyDefaults = (f, list) => {
    const p = profileOf(osOf(f), list);
    if (!p) return f;
    const g = { ...f };
    if (!touched.current.has('memory')) g.memory = sizeFromMib(p.recommended_memory_mib);
    if (!touched.current.has('disk_size')) g.disk_size = p.recommended_disk_gib ? `${p.recommended_disk_gib}G` : '';
    return g;
  };

  useEffect(() => {
    let gone = false;
    (async () => {
      try {
        const list = osCache || (await api('GET', '/api/v1/os'));
        osCache = list;
        if (gone) return;
        setOs(list);
        setForm((f) => {
          // An ISO picked meanwhile chose already (possibly "detect from ISO").
          const id = f.os || (f.iso ? '' : defaultOs(list));
          return applyDefaults({ ...f, os: id }, list);
        });
      } catch (e) {
        if (!gone) setLoadError(`The OS catalog could not be read: ${e.message}`);
      }
    })();
    api('GET', '/api/v1/media').then((m) => !gone && setMedia(m))
      .catch((e) => !gone && setMedia({ files: [], dir: '', exists: false, error: e.message }));
    api('GET', '/api/v1/networks')
      .then((list) => !gone && setNetworks({ list: list.filter((n) => n.active), inactive: list.filter((n) => !n.active) }))
      // A server without the list: offer libvirt's usual network.
      .catch(() => !gone && setNetworks({ list: [{ name: 'default', active: true, forward: 'nat' }], inactive: [], guessed: true }));
    return () => { gone = true; };
  }, []);

  // The network picked once the list is known: libvirt's default if it runs.
  useEffect(() => {
    if (!networks || form.network) return;
    const names = networks.list.map((n) => n.name);
    setForm((f) => ({ ...f, network: names.includes('default') ? 'default' : names[0] || 'user' }));
  }, [networks]);

  useEffect(() => {
    if (phase === 'running' && progressRef.current) progressRef.current.focus();
    if ((phase === 'done' || phase === 'failed') && nextRef.current) nextRef.current.focus();
  }, [phase]);

  const set = (k) => (e) => {
    const v = e.target.type === 'checkbox' ? e.target.checked : e.target.value;
    touched.current.add(k);
    setForm((f) => {
      if (k === 'os') return applyDefaults({ ...f, os: v }, os);
      if (k === 'iso') return withIso(f, v);
      return { ...f, [k]: v };
    });
  };

  // Picking an ISO whose OS is known picks that OS (the person may change
  // it); "detect from ISO" needs an ISO, so without one the OS is a choice again.
  const withIso = (f, name) => {
    const iso = isoOf(name);
    const g = { ...f, iso: name };
    if (iso && iso.os && profileOf(iso.os, os)) g.os = iso.os;
    else if (!name && !g.os) g.os = defaultOs(os || []);
    return applyDefaults(g, os);
  };

  const submit = async (e) => {
    e.preventDefault();
    const body = { name: form.name.trim(), network: form.network || 'default', encryption: form.encryption, start: form.start };
    // No OS: the server reads it from the ISO.
    if (form.os) body.os = form.os;
    for (const k of ['memory', 'disk_size', 'iso', 'kernel', 'initrd', 'cmdline']) {
      if (String(form[k]).trim()) body[k] = String(form[k]).trim();
    }
    if (String(form.cpus).trim()) body.cpus = Number(form.cpus);
    if (profile && profile.secure_boot === 'off' && form.secure_boot) body.secure_boot = true;
    if (form.drivers) body.drivers = form.drivers;
    if (form.disk_bus) body.disk_bus = form.disk_bus;
    if (form.force) body.force = true;
    if (form.encryption === 'prompt') {
      if (form.passphrase !== form.passphrase2) {
        setError('The two passphrases differ.');
        return;
      }
      body.passphrase = form.passphrase;
    }
    setError('');
    setSteps([]);
    setResult(null);
    setPhase('running');
    let done = 0;
    try {
      const created = await createVm(body, (p) => {
        done += 1;
        setSteps((s) => addProgress(s, p));
      });
      setResult(created || { name: body.name });
      setPhase('done');
    } catch (err) {
      setError(err.message);
      // Refused before anything was done (a bad field, a name in use): back to the form.
      setPhase(done === 0 && err.status >= 400 && err.status < 500 ? 'form' : 'failed');
    }
  };

  const profile = profileOf(osOf(form), os);
  const files = (media && media.files) || [];
  const pick = (kinds) => files.filter((f) => kinds.includes(f.kind)).map((f) => [f.name, f.name]);
  const isoChoices = files.filter((f) => f.kind === 'iso')
    .map((f) => [f.name, f.os_name ? `${f.name} (${f.os_name})` : f.virtio_win ? `${f.name} (driver disc)` : f.name]);
  const iso = isoOf(form.iso);
  let detected = null;
  if (iso) {
    if (iso.os_name) detected = `detected: ${iso.os_name}`;
    else if (iso.boot) detected = 'not recognised from the ISO: pick the OS';
    else detected = 'the ISO could not be read';
  }
  const osChoices = (os || []).map((p) => [p.id, `${p.name} (${p.id})`]);
  if (form.iso) osChoices.unshift(['', iso && iso.os_name ? `detect from ISO (${iso.os_name})` : 'detect from ISO']);
  const minCpus = profile && profile.min_cpus;
  const busy = phase === 'running';
  const sb = secureBootOf(profile, form.secure_boot);
  // Driver discs first (known by their content), then the other ISOs.
  const driverChoices = files.filter((f) => f.kind === 'iso')
    .sort((a, b) => Number(!!b.virtio_win) - Number(!!a.virtio_win))
    .map((f) => [f.name, f.virtio_win ? `${f.name} (driver disc)` : f.name]);

  const fields = html`
    <div class="grid">
      ${Field({ label: 'Name', children: html`<input name="name" required autofocus value=${form.name} onInput=${set('name')}
        pattern="[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}" maxlength="64" placeholder="letters, digits, . _ -" autocomplete="off" />` })}
      ${Field({ label: 'Installer ISO', children: html`<select name="iso" value=${form.iso} onInput=${set('iso')}>
        ${Options({ list: isoChoices, blank: '(none)' })}</select>` })}
      ${Field({ label: 'Operating system', children: html`<select name="os" required=${!form.iso} value=${form.os} onInput=${set('os')}>
        ${Options({ list: osChoices })}</select>
        ${detected ? html`<span class=${`field-note${iso.os_name ? '' : ' warn'}`} id="os-detected" data-testid="os-detected"
          data-os=${iso.os || ''}>${detected}${iso.boot ? ` · boots ${bootText(iso.boot)}` : ''}</span>` : null}` })}
      ${Field({ label: 'Memory', children: html`<input name="memory" value=${form.memory} onInput=${set('memory')} placeholder="e.g. 4G" />` })}
      ${Field({ label: 'vCPUs', children: html`<input name="cpus" type="number" min=${minCpus || 1} max="256" value=${form.cpus}
        onInput=${set('cpus')} placeholder=${minCpus ? `auto (at least ${minCpus})` : 'auto'} />` })}
      ${Field({ label: 'Disk size', children: html`<input name="disk_size" value=${form.disk_size} onInput=${set('disk_size')} placeholder="e.g. 64G" />` })}
      ${Field({ label: 'Network', children: html`<select name="network" value=${form.network} onInput=${set('network')}>
        ${Options({ list: [...((networks && networks.list) || []).map((n) => [n.name, networkLabel(n)]),
                            ['user', 'user (QEMU NAT, no libvirt network)'], ['none', 'none']] })}</select>` })}
      ${Field({ label: 'Disk encryption', children: html`<select name="encryption" value=${form.encryption} onInput=${set('encryption')}>
        <option value="secret">encrypted (random key)</option>
        <option value="prompt">encrypted (passphrase at each start)</option>
        <option value="none">not encrypted</option></select>` })}
      ${Field({ label: 'Secure Boot', children: html`<span class="check switch">
        <input name="secure_boot" type="checkbox" role="switch" id="create-secure-boot" data-testid="create-secure-boot"
          checked=${sb.on} disabled=${sb.fixed} aria-describedby="create-secure-boot-note" onChange=${set('secure_boot')} />
        <span class="hint" id="create-secure-boot-note" data-testid="create-secure-boot-note">${sb.note}</span></span>` })}
      ${form.encryption === 'prompt' ? [
        Field({ label: 'Disk passphrase', children: html`<input name="passphrase" type="password" required autocomplete="new-password"
          value=${form.passphrase} onInput=${set('passphrase')} />` }),
        Field({ label: 'Passphrase again', children: html`<input name="passphrase2" type="password" required autocomplete="new-password"
          value=${form.passphrase2} onInput=${set('passphrase2')} />` }),
      ] : null}
    </div>
    ${profile ? html`<p class="hint" id="os-hint">${osHint(profile)}</p>` : null}
    <details open=${!!(form.kernel || form.initrd || form.cmdline)}>
      <summary>Direct kernel boot</summary>
      <div class="grid">
        ${Field({ label: 'Kernel', children: html`<select name="kernel" value=${form.kernel} onInput=${set('kernel')}>
          ${Options({ list: pick(['kernel', 'other']), blank: '(none)' })}</select>` })}
        ${Field({ label: 'Initrd', children: html`<select name="initrd" value=${form.initrd} onInput=${set('initrd')}>
          ${Options({ list: pick(['initrd', 'other']), blank: '(none)' })}</select>` })}
        ${Field({ label: 'Kernel command line', wide: true, children: html`<input name="cmdline" value=${form.cmdline}
          onInput=${set('cmdline')} placeholder="console=ttyS0" />` })}
      </div>
    </details>
    <details id="create-more" open=${!!(form.drivers || form.disk_bus || form.force)}>
      <summary>Drivers, disk bus, size check</summary>
      <div class="grid">
        ${Field({ label: 'Driver ISO', children: html`<select name="drivers" value=${form.drivers} onInput=${set('drivers')}>
          ${Options({ list: driverChoices, blank: '(auto: the ISO folder\'s virtio-win disc, for Windows)' })}</select>` })}
        ${Field({ label: 'Disk bus', children: html`<select name="disk_bus" value=${form.disk_bus} onInput=${set('disk_bus')}>
          ${Options({ list: [['virtio', 'virtio'], ['sata', 'SATA (guests without virtio drivers)']], blank: '(the OS\'s choice)' })}</select>` })}
      </div>
      <label class="check"><input name="force" type="checkbox" checked=${form.force} onChange=${set('force')} />
        Create even if the disk is smaller than the OS's usual minimum</label>
    </details>
    <label class="check"><input name="start" type="checkbox" checked=${form.start} onChange=${set('start')} /> Start it once created</label>
    <p class="hint" id="media-hint">${media === null ? 'Reading the ISO folder…'
      : media.error ? `The ISO folder could not be read: ${media.error}`
      : media.exists ? `Installer media come from ${media.dir} on the host. `
      : `Put installer ISOs in ${media.dir} on the host to offer them here, or `}
      ${media && !media.error ? html`<a href="#/media" id="create-media-link" onClick=${onClose}>${media.exists ? 'Upload one on the Media page' : 'upload one on the Media page'}</a>.` : null}
      ${networks && networks.inactive.length ? ` Inactive libvirt networks (not offered): ${networks.inactive.map((n) => n.name).join(', ')}.` : ''}</p>`;

  const current = busy ? steps.length - 1 : -1;
  const progress = html`
    <p id="create-summary">${phase === 'done' ? 'Created' : phase === 'failed' ? 'Could not create' : 'Creating'}
      ${' '}<strong>${form.name.trim()}</strong> (${form.os || 'OS from the ISO'}${form.memory ? `, ${form.memory}` : ''}${form.disk_size ? `, ${form.disk_size} disk` : ''})</p>
    <ol id="create-progress" data-testid="create-progress" tabindex="-1" aria-live="polite" aria-busy=${busy ? 'true' : 'false'}>
      ${steps.map((s, i) => html`<li data-step=${s.step || 'note'}
          class=${i === current ? 'current' : phase === 'failed' && i === steps.length - 1 ? 'failed' : 'done'}>
        <span class="step-name">${s.step ? STEP_LABELS[s.step] || s.step : 'Note'}</span>
        <span class="step-message">${s.notes.join(' ')}</span></li>`)}
      ${busy && steps.length === 0 ? html`<li class="current waiting"><span class="step-name">Checking</span>
        <span class="step-message">the request…</span></li>` : null}
    </ol>
    ${phase === 'done' && result ? html`<div id="create-result" data-testid="create-result" role="status">
      <p class="ok">${result.name || form.name.trim()} was created${result.started ? ' and started' : ''}${result.vcpus ? `: ${result.vcpus} vCPU${result.vcpus > 1 ? 's' : ''}` : ''}${result.memory_mib ? `, ${sizeFromMib(result.memory_mib)} memory` : ''}${result.disk_gib ? `, ${result.disk_gib}G disk` : ''}${result.encryption ? `, encryption ${result.encryption}` : ''}.</p>
      ${result.detected ? html`<p id="create-detected">Operating system read from the ISO: ${result.detected}</p>` : null}
      ${result.warnings && result.warnings.length ? html`<ul class="warnings" id="create-warnings">
        ${result.warnings.map((w) => html`<li>${w}</li>`)}</ul>` : null}
    </div>` : null}`;

  let buttons;
  if (phase === 'form') {
    buttons = html`<button key="create-cancel" type="button" id="create-cancel" onClick=${onClose}>Cancel</button>
      <button key="create-submit" type="submit" id="create-submit" class="primary" disabled=${!os}>Create</button>`;
  } else if (phase === 'running') {
    buttons = html`<button key="create-running" type="button" id="create-submit" class="primary" disabled>Creating…</button>`;
  } else if (phase === 'done') {
    const name = (result && result.name) || form.name.trim();
    buttons = html`<button key="create-close" type="button" id="create-close" onClick=${onClose}>Close</button>
      <button key="create-open" type="button" id="create-open" class="primary" ref=${nextRef} onClick=${() => onOpenVm(name)}>Open ${name}</button>`;
  } else {
    buttons = html`<button key="create-close" type="button" id="create-close" onClick=${onClose}>Close</button>
      <button key="create-back" type="button" id="create-back" class="primary" ref=${nextRef} onClick=${() => setPhase('form')}>Back to the form</button>`;
  }

  return html`<${Modal} id="create-dialog" labelledBy="create-title" busy=${busy} onClose=${onClose}>
    <form id="create-form" onSubmit=${submit}>
      <h2 id="create-title">New virtual machine</h2>
      ${phase === 'form' ? fields : progress}
      ${loadError ? html`<p class="error" role="alert">${loadError}</p>` : null}
      <p id="create-error" class="error" role="alert">${error}</p>
      <div class="buttons">${buttons}</div>
    </form>
  <//>`;
}
