// The VM list (with import), a VM's page (overview, usage, shares, snapshots, manifest, console, serial) and the
// actions on a VM (with, on its page, clone, export and autostart).

import {
  html, useState, useEffect, api, vmPath, vmHash, mib, gib, stateText, stateClass, isActive, isRemote, hostQuery, vmKey,
} from './lib.js';
import { confirmDialog, passphraseDialog } from './dialogs.js';
import { VncConsole, SerialConsole } from './consoles.js';
import { UsagePanel } from './usage.js';
import { SharesPanel } from './shares.js';
import { SnapshotsPanel } from './snapshots.js';
import { CloneDialog } from './clone.js';
import { ExportDialog, ImportDialog } from './bundle.js';
import { ManifestPanel } from './manifest.js';
import { MigrateDialog } from './migrate.js';

const QUESTIONS = {
  stop: (n) => ['Stop', `Shut down ${n}? Its guest gets the ACPI power button and up to a minute to power off.`, 'Stop'],
  kill: (n) => ['Force stop', `Power ${n} off at once? Whatever the guest has not saved is lost.`, 'Force stop'],
  delete: (n) => ['Delete', `Delete ${n} with its disk and disk key? This cannot be undone.`, 'Delete'],
};

const BUSY_LABELS = {
  start: 'Starting…', stop: 'Stopping…', kill: 'Stopping…', pause: 'Pausing…', resume: 'Resuming…', delete: 'Deleting…',
};

const askPassphrase = (name) => passphraseDialog('Unlock the disk',
  `${name}'s disk is encrypted with a passphrase. It unlocks the disk for this start only and is not kept.`, 'Start');

// Start, pause or resume, stop, force stop, delete (and, in the list, the console; on the VM's page, clone,
// export, and migrate when there are other hosts). A VM of another host: pause or resume, stop and force stop only
// (libvirt calls there); none while its host does not answer.
export function VmActions({ vm, inList, onError, onDeleted, onClone, onExport, onMigrate }) {
  const [busy, setBusy] = useState(null);
  const remote = isRemote(vm);
  const s = vm.unreachable ? 'unreachable' : vm.state;
  const run = async (action) => {
    onError('');
    const q = QUESTIONS[action];
    if (q && !(await confirmDialog(...q(vm.name)))) return;
    let body;
    if (action === 'stop') body = { timeout_secs: 60 };
    if (action === 'start' && vm.encryption === 'prompt') {
      const passphrase = await askPassphrase(vm.name);
      if (passphrase === null) return;
      body = { passphrase };
    }
    setBusy(action);
    try {
      if (action === 'delete') await api('DELETE', vmPath(vm.name));
      else await startOr(action, body);
      if (action === 'delete' && onDeleted) onDeleted();
    } catch (e) {
      onError(`${vm.name}: ${e.message}`);
    } finally {
      setBusy(null);
    }
  };
  // A start that turns out to need the disk's passphrase asks for it once.
  const startOr = async (action, body) => {
    try {
      await api('POST', `${vmPath(vm.name)}/${action}${hostQuery(vm)}`, body);
    } catch (e) {
      if (action !== 'start' || body || !/passphrase/i.test(e.message) || e.status >= 500) throw e;
      const passphrase = await askPassphrase(vm.name);
      if (passphrase === null) return;
      await api('POST', `${vmPath(vm.name)}/start`, { passphrase });
    }
  };
  const button = (action, label, enabled, cls) => html`<button type="button" class=${cls || ''} data-action=${action}
      disabled=${!!busy || !enabled} aria-label=${inList ? `${label} ${vm.name}` : null}
      onClick=${() => run(action)}>${busy === action ? BUSY_LABELS[action] : label}</button>`;
  if (remote) {
    return html`<div class="actions" role="group" aria-label=${`Actions on ${vm.name} (host ${vm.host})`}>
      ${s === 'paused' ? button('resume', 'Resume', true) : button('pause', 'Pause', s === 'running')}
      ${button('stop', 'Stop', s === 'running')}
      ${button('kill', 'Force stop', s === 'running' || s === 'paused', 'danger-text')}
    </div>`;
  }
  return html`<div class="actions" role="group" aria-label=${`Actions on ${vm.name}`}>
    ${button('start', 'Start', s === 'shut off')}
    ${s === 'paused' ? button('resume', 'Resume', true) : button('pause', 'Pause', s === 'running')}
    ${button('stop', 'Stop', s === 'running')}
    ${button('kill', 'Force stop', s === 'running' || s === 'paused', 'danger-text')}
    ${onClone ? html`<button type="button" data-action="clone" data-testid="vm-clone" disabled=${!!busy || s !== 'shut off'}
        title=${s === 'shut off' ? `Make a full copy of ${vm.name}` : `Only a shut-off VM can be cloned (${vm.name} is ${s})`}
        onClick=${() => { onError(''); onClone(); }}>Clone</button>` : null}
    ${onExport ? html`<button type="button" data-action="export" data-testid="vm-export" disabled=${!!busy || s !== 'shut off'}
        title=${s === 'shut off' ? `Save ${vm.name} as one encrypted file, to import on another host`
          : `Only a shut-off VM can be exported (${vm.name} is ${s})`}
        onClick=${() => { onError(''); onExport(); }}>Export</button>` : null}
    ${onMigrate ? html`<button type="button" data-action="migrate" data-testid="vm-migrate" disabled=${!!busy}
        title=${`Move ${vm.name} to another host (the check comes first)`}
        onClick=${() => { onError(''); onMigrate(); }}>Migrate</button>` : null}
    ${button('delete', 'Delete', s === 'shut off', 'danger-text')}
    ${inList ? html`<button type="button" data-action="console" disabled=${!isActive(vm)}
        aria-label=${`Console of ${vm.name}`}
        title=${isActive(vm) ? `The screen of ${vm.name}` : `${vm.name} is ${s}: its screen shows once it runs`}
        onClick=${() => { location.hash = vmHash(vm.name, 'console'); }}>Console</button>` : null}
  </div>`;
}

function StateBadge({ vm, id, loading }) {
  if (!vm && loading) return html`<span id=${id} class="state" data-state="">…</span>`;
  const state = vm && vm.unreachable ? 'unreachable' : vm && vm.state;
  return html`<span id=${id} class=${stateClass(state)} data-state=${vm ? state : 'gone'}
    title=${vm && vm.unreachable ? `host ${vm.host} does not answer: this is its last known state` : null}>${stateText(vm)}</span>`;
}

// Whether the page shows hosts: other hosts are configured, or the list has their VMs.
const manyHosts = (vms, hosts) => (hosts || []).length > 1 || (vms || []).some(isRemote);

export function VmList({ vms, hosts, onNew }) {
  const [error, setError] = useState('');
  const [importing, setImporting] = useState(false);
  const many = manyHosts(vms, hosts);
  let body;
  if (vms === null) {
    body = html`<p class="hint" id="vm-loading">Reading the VM list…</p>`;
  } else if (vms.length === 0) {
    body = html`<div id="vm-empty" class="empty card-plain">
      <h2>No virtual machines yet</h2>
      <p>A new VM gets the devices its operating system runs best with, and an encrypted disk.</p>
      <button type="button" class="primary" id="empty-new-vm" onClick=${onNew}>Create a VM</button>
    </div>`;
  } else {
    const heads = ['Name', many ? 'Host' : null, 'OS', 'State', 'vCPUs', 'Memory', 'Disk', 'Encryption', 'Snapshots', 'Actions'];
    body = html`<table id="vm-table" class="list">
      <thead><tr>${heads.filter(Boolean).map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
      <tbody id="vm-rows">
        ${vms.map((vm) => html`<tr key=${vmKey(vm)} data-vm=${vm.name} data-host=${vm.host || 'local'}
            data-state=${vm.state} data-unreachable=${vm.unreachable ? 'true' : 'false'} class=${vm.unreachable ? 'unreachable' : ''}>
          <td class="name">${isRemote(vm) ? html`<span>${vm.name}</span>` : html`<a href=${vmHash(vm.name)}>${vm.name}</a>`}</td>
          ${many ? html`<td class="host" data-field="host">${vm.host || 'local'}</td>` : null}
          <td>${vm.os || '—'}</td>
          <td class="state-cell">${StateBadge({ vm })}${vm.autostart ? html` <span class="badge autostart" data-field="autostart"
            title="libvirt starts it when the host boots">autostart</span>` : null}</td>
          <td class="num">${vm.vcpus}</td>
          <td class="num">${mib(vm.memory_mib)}</td>
          <td class="num">${gib(vm.disk_gib)}</td>
          <td>${vm.encrypted ? 'encrypted' : 'none'}</td>
          <td class="num" data-field="snapshots" data-count=${vm.snapshots === undefined ? '' : vm.snapshots}>${vm.snapshots && !isRemote(vm)
            ? html`<a class="badge snapshots" href=${vmHash(vm.name, 'snapshots')}
                aria-label=${`${vm.snapshots} snapshot${vm.snapshots === 1 ? '' : 's'} of ${vm.name}`}>${vm.snapshots}</a>`
            : html`<span class="hint">${vm.snapshots === 0 ? 'none' : '—'}</span>`}</td>
          <td class="actions-cell"><${VmActions} vm=${vm} inList onError=${setError} /></td>
        </tr>`)}
      </tbody>
    </table>`;
  }
  return html`<section id="vm-page">
    <div class="toolbar">
      <h1 tabindex="-1">Virtual machines</h1>
      <span class="spacer"></span>
      <button id="import-vm" data-testid="import-vm" type="button" title="Make a VM from a bundle (Export on a VM's page)"
        onClick=${() => setImporting(true)}>Import…</button>
      <button id="new-vm" class="primary" type="button" onClick=${onNew}>New VM</button>
    </div>
    <p id="vm-error" class="error" role="alert">${error}</p>
    ${body}
    ${importing ? html`<${ImportDialog} onClose=${() => setImporting(false)} />` : null}
  </section>`;
}

// ---------------------------------------------------------------- one VM

const ENCRYPTION = {
  secret: 'encrypted (random key in a libvirt secret)',
  prompt: 'encrypted (passphrase asked at start)',
  none: 'not encrypted',
};

function Facts({ rows }) {
  return html`<dl class="facts">${rows.filter(Boolean).map(([k, v, id, wide]) => html`<div class=${wide ? 'wide' : ''}>
    <dt>${k}</dt><dd id=${id}>${v === null || v === undefined || v === '' ? '—' : v}</dd></div>`)}</dl>`;
}

function diskSource(d) {
  if (d.path) return d.path;
  if (d.file) return d.file;
  if (d.pool && d.volume) return `${d.pool} / ${d.volume}`;
  return d.volume || '—';
}

function Overview({ vm, d }) {
  const encryption = d.changed_outside ? `changed outside Phyllome, not all encrypted: ${d.changed_outside}`
    : d.encryption ? ENCRYPTION[d.encryption] || d.encryption : (d.encrypted ? 'encrypted' : 'not encrypted');
  const disks = d.disks || [];
  const hasBus = disks.some((k) => k.bus);
  return html`<div id="overview" data-testid="overview">
    ${Facts({ rows: [
      ['State', stateText(d), 'ov-state'],
      ['Operating system', d.os, 'ov-os'],
      ['vCPUs', d.vcpus, 'ov-vcpus'],
      ['Memory', mib(d.memory_mib), 'ov-memory'],
      ['Disk size', gib(d.disk_gib), 'ov-disk'],
      ['Encryption', encryption, 'ov-encryption'],
      ['Display', d.display || (isActive(vm) ? 'none' : 'none while shut off'), 'ov-display'],
      d.autostart === undefined ? null : ['Starts with the host', d.autostart ? 'yes (autostart)' : 'no', 'ov-autostart'],
      d.snapshots === undefined ? null : ['Snapshots', String(d.snapshots), 'ov-snapshots'],
      ['UUID', html`<span class="mono">${d.uuid}</span>`, 'ov-uuid', true],
      d.created_by ? ['Made by', `Phyllome ${d.created_by}`, 'ov-created-by'] : null,
    ] })}

    <h2>Disks</h2>
    ${disks.length ? html`<table class="list" id="disk-table">
      <thead><tr>${['Target', hasBus ? 'Bus' : null, 'Device', 'Source', 'Encrypted'].filter(Boolean)
        .map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
      <tbody>${disks.map((k) => html`<tr data-disk=${k.target}>
        <td class="mono">${k.target}</td>${hasBus ? html`<td>${k.bus || '—'}</td>` : null}<td>${k.device || 'disk'}</td>
        <td class="mono wrap">${diskSource(k)}</td><td>${k.encrypted ? 'yes' : 'no'}</td></tr>`)}</tbody>
    </table>` : html`<p class="hint">No disks.</p>`}

    <h2>Network interfaces</h2>
    ${!d.nics ? html`<p class="hint">This server does not report network interfaces.</p>`
      : d.nics.length ? html`<table class="list" id="nic-table">
        <thead><tr>${['Model', 'Network', 'MAC'].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
        <tbody>${d.nics.map((n) => html`<tr><td>${n.model || '—'}</td><td>${n.network || '—'}</td>
          <td class="mono">${n.mac || '—'}</td></tr>`)}</tbody>
      </table>` : html`<p class="hint" id="no-nics">No network interface.</p>`}

    <h2>Why these devices</h2>
    ${!d.choices ? html`<p class="hint">This server does not report the device choices.</p>`
      : d.choices.length ? html`<table class="list" id="choice-table">
        <thead><tr>${['Item', 'Choice', 'Why'].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
        <tbody>${d.choices.map((c) => html`<tr data-item=${c.item}><td>${c.item}</td><td class="mono wrap">${c.choice}</td>
          <td class="why">${c.why}</td></tr>`)}</tbody>
      </table>` : html`<p class="hint">Phyllome did not make this VM, so there is no record of why it has its devices.</p>`}
  </div>`;
}

const TABS = [['overview', 'Overview'], ['usage', 'Usage'], ['shares', 'Shares'], ['snapshots', 'Snapshots'],
  ['manifest', 'Manifest'], ['console', 'Console'], ['serial', 'Serial']];

// "Start when the host boots": libvirt's autostart. Shows what was asked until the live row says it.
function AutostartToggle({ vm, onError }) {
  const [asked, setAsked] = useState(null); // null, or the value sent
  const [busy, setBusy] = useState(false);
  const on = vm.autostart;
  // The row changed: it tells the truth again.
  useEffect(() => { setAsked(null); }, [on]);
  const change = async (e) => {
    const want = e.target.checked;
    onError('');
    setAsked(want);
    setBusy(true);
    try {
      await api('PUT', `${vmPath(vm.name)}/autostart`, { on: want });
    } catch (err) {
      setAsked(null);
      onError(`${vm.name}: ${err.message}`);
    } finally {
      setBusy(false);
    }
  };
  const checked = asked === null ? !!on : asked;
  return html`<label class="check switch" id="vm-autostart-label" title="libvirt's autostart">
    <input type="checkbox" role="switch" id="vm-autostart" data-testid="vm-autostart" checked=${checked} disabled=${busy}
      data-busy=${busy ? 'true' : 'false'} aria-describedby="vm-autostart-note" onChange=${change} />
    Start when the host boots
    <span class="hint" id="vm-autostart-note">${busy ? (checked ? 'turning on…' : 'turning off…')
      : checked ? '(on: libvirt starts it with the host)' : '(off)'}</span></label>`;
}

export function VmDetail({ name, tab, vms, hosts }) {
  const [error, setError] = useState('');
  const [cloning, setCloning] = useState(false);
  const [exporting, setExporting] = useState(false);
  const [migrating, setMigrating] = useState(false);
  const [details, setDetails] = useState(null);
  const [loadError, setLoadError] = useState(null);
  // A VM's page is this host's VM of that name.
  const row = vms ? vms.find((v) => v.name === name && !isRemote(v)) || null : null;
  // Read the details again whenever the live list shows a change to this VM.
  const rowKey = row ? JSON.stringify(row) : vms === null ? 'loading' : 'gone';
  useEffect(() => {
    let gone = false;
    api('GET', vmPath(name))
      .then((d) => { if (!gone) { setDetails(d); setLoadError(null); } })
      .catch((e) => { if (!gone) setLoadError(e); });
    return () => { gone = true; };
  }, [name, rowKey]);
  useEffect(() => { document.title = `${name} · Phyllome`; return () => { document.title = 'Phyllome'; }; }, [name]);

  const back = html`<a class="button quiet-link" id="back-to-list" href="#/vms">← All VMs</a>`;
  if (!row && (vms !== null || (loadError && loadError.status === 404))) {
    return html`<section id="vm-detail">${back}
      <h1 tabindex="-1">${name}</h1>
      <p class="error" id="vm-gone">There is no VM named ${name} (any more).</p></section>`;
  }
  // The live row is fresher than the details for what both have.
  const vm = row ? { ...(details || {}), ...row } : details;
  const current = TABS.some(([t]) => t === tab) ? tab : 'overview';
  let panel;
  if (current === 'console') panel = html`<${VncConsole} name=${name} vm=${vm} />`;
  else if (current === 'serial') panel = html`<${SerialConsole} name=${name} vm=${vm} />`;
  else if (current === 'usage') panel = html`<${UsagePanel} name=${name} vm=${vm} />`;
  else if (current === 'shares') panel = html`<${SharesPanel} name=${name} vm=${vm} />`;
  else if (current === 'snapshots') panel = html`<${SnapshotsPanel} name=${name} vm=${vm} />`;
  else if (current === 'manifest') panel = html`<${ManifestPanel} name=${name} version=${rowKey} />`;
  else if (details) panel = html`<${Overview} vm=${vm} d=${{ ...details, ...(row || {}) }} />`;
  else panel = loadError ? html`<p class="error">${loadError.message}</p>` : html`<p class="hint">Reading…</p>`;

  return html`<section id="vm-detail" data-vm=${name}>
    ${back}
    <div class="toolbar">
      <h1 tabindex="-1" id="vm-name">${name}</h1>
      ${StateBadge({ vm, id: 'vm-state', loading: !loadError })}
      <span class="spacer"></span>
      ${vm ? html`<${VmActions} vm=${vm} onError=${setError} onDeleted=${() => { location.hash = '#/vms'; }}
        onClone=${() => setCloning(true)} onExport=${() => setExporting(true)}
        onMigrate=${manyHosts(vms, hosts) ? () => setMigrating(true) : null} />` : null}
    </div>
    ${vm && vm.autostart !== undefined ? html`<div class="vm-options"><${AutostartToggle} vm=${vm} onError=${setError} /></div>` : null}
    <p id="vm-error" class="error" role="alert">${error}</p>
    <nav class="tabs" aria-label="VM views">
      ${TABS.map(([t, label]) => html`<a id=${`tab-${t}`} data-testid=${`${t}-tab`} href=${vmHash(name, t)}
        aria-current=${t === current ? 'page' : null} class=${t === current ? 'active' : ''}>${label}</a>`)}
    </nav>
    <div class="panel" id=${`panel-${current}`}>${panel}</div>
    ${cloning && vm ? html`<${CloneDialog} vm=${vm} onClose=${() => setCloning(false)} />` : null}
    ${exporting && vm ? html`<${ExportDialog} vm=${vm} onClose=${() => setExporting(false)} />` : null}
    ${migrating && vm ? html`<${MigrateDialog} vm=${vm} hosts=${hosts} onClose=${() => setMigrating(false)} />` : null}
  </section>`;
}
