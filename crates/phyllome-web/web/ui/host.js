// The host: what the running VMs use of it (polled every 2 s), its check
// report, and the devices that could be passed through.

import {
  html, useState, useEffect, api, usePoll, vmHash, bytes, percent, stateClass,
} from './lib.js';

function useLoad(path) {
  const [state, setState] = useState({ data: null, error: null });
  useEffect(() => {
    let gone = false;
    api('GET', path).then((data) => !gone && setState({ data, error: null }))
      .catch((e) => !gone && setState({ data: null, error: e.message }));
    return () => { gone = true; };
  }, [path]);
  return state;
}

// A bar of VALUE out of MAX (an ARIA meter); past MAX it is full and marked.
function Bar({ value, max, label, text }) {
  const known = value !== null && value !== undefined && max > 0;
  const frac = known ? value / max : 0;
  const over = frac > 1;
  return html`<div class=${`bar${over ? ' over' : ''}${known ? '' : ' unknown'}`} role="meter"
    aria-label=${label} aria-valuemin="0" aria-valuemax=${max || 0} aria-valuenow=${known ? value : null}
    aria-valuetext=${text}>
    <span class="bar-fill" style=${{ width: `${(Math.min(1, Math.max(0, frac)) * 100).toFixed(1)}%` }}></span>
  </div>`;
}

function Meter({ testid, label, value, children }) {
  return html`<div class="meter" data-testid=${testid} id=${testid}>
    <div class="meter-label">${label}</div>
    <div class="meter-value">${value}</div>
    ${children}
  </div>`;
}

const ofHost = (part, whole) => (whole > 0 && part !== null && part !== undefined ? percent((100 * part) / whole) : '—');

// What the running VMs use of the host, from GET /api/v1/stats every 2 s.
export function HostUsage() {
  const { data: r, error, at } = usePoll('/api/v1/stats', 2000);
  let body;
  if (!r && error && error.status === 503) body = html`<p class="hint" id="host-usage-waiting">Measuring…</p>`;
  else if (!r && error) body = html`<p class="error" id="host-usage-error">${error.message}</p>`;
  else if (!r) body = html`<p class="hint" id="host-usage-waiting">Reading…</p>`;
  else {
    const h = r.host;
    const hostCpu = h.cpus * 100;
    // No VM running: they use none (the server measures nothing then).
    const cpu = h.cpu_percent ?? (r.vms.length === 0 ? 0 : null);
    body = html`
      <div class="meters">
        <${Meter} testid="host-vms-running" label="VMs running"
          value=${html`<span id="host-vms-running-count" data-value=${h.vms_running}>${h.vms_running}</span>`} />
        <${Meter} testid="host-memory" label="Memory committed" value=${`${bytes(h.memory_committed_bytes)} of ${bytes(h.memory_bytes)}`}>
          <${Bar} value=${h.memory_committed_bytes} max=${h.memory_bytes} label="Memory the running VMs have, of the host's"
            text=${`${bytes(h.memory_committed_bytes)} of ${bytes(h.memory_bytes)}`} />
          <div class="hint">${ofHost(h.memory_committed_bytes, h.memory_bytes)} of the host's memory</div>
        </${Meter}>
        <${Meter} testid="host-vcpus" label="vCPUs" value=${`${h.vcpus_committed} of ${h.cpus} CPUs`}>
          <${Bar} value=${h.vcpus_committed} max=${h.cpus} label="vCPUs of the running VMs, against the host's CPUs"
            text=${`${h.vcpus_committed} vCPUs on ${h.cpus} CPUs`} />
          <div class="hint">${h.vcpus_committed > h.cpus ? 'more vCPUs than CPUs (overcommitted)' : 'vCPUs of the running VMs'}</div>
        </${Meter}>
        <${Meter} testid="host-cpu" label="CPU used by VMs" value=${ofHost(cpu, hostCpu)}>
          <${Bar} value=${cpu} max=${hostCpu} label="CPU the VMs use, of all the host's CPUs"
            text=${`${ofHost(cpu, hostCpu)} of the host's CPUs`} />
          <div class="hint">${cpu === null ? 'measuring…' : `${percent(cpu)} of one CPU, ${h.cpus} CPUs`}</div>
        </${Meter}>
      </div>
      ${r.vms.length ? html`<table class="list" id="host-vm-usage">
        <thead><tr>${['VM', 'vCPUs', 'CPU', 'Memory (host RSS of assigned)'].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
        <tbody>${r.vms.map((v) => {
          const cpuMax = 100 * (v.vcpus || 1);
          const m = v.memory || {};
          const memText = `${bytes(m.host_rss_bytes)} of ${bytes(m.assigned_bytes)}`;
          return html`<tr key=${v.name} data-vm=${v.name} data-state=${v.state}>
            <td class="name"><a href=${vmHash(v.name, 'usage')}>${v.name}</a>${v.state !== 'running' ? html` <span class=${stateClass(v.state)}>${v.state}</span>` : null}</td>
            <td class="num">${v.vcpus ?? '—'}</td>
            <td class="usage-cell"><${Bar} value=${v.cpu_percent} max=${cpuMax} label=${`CPU of ${v.name}`}
              text=${`${percent(v.cpu_percent)} of one host CPU`} /><span class="num" data-field="cpu">${percent(v.cpu_percent)}</span></td>
            <td class="usage-cell"><${Bar} value=${m.host_rss_bytes} max=${m.assigned_bytes} label=${`Memory of ${v.name}`}
              text=${memText} /><span class="num" data-field="memory">${memText}</span></td>
          </tr>`;
        })}</tbody>
      </table>` : html`<p class="hint" id="host-no-vms">No VM is running.</p>`}`;
  }
  return html`<section id="host-usage" data-testid="host-dashboard" aria-labelledby="host-usage-title">
    <div class="toolbar">
      <h2 id="host-usage-title">Usage</h2>
      <span class="spacer"></span>
      ${r ? html`<span class="hint" id="host-usage-updated" data-updated=${r.at}>
        ${r.host.hostname} · sampled ${new Date(r.at * 1000).toLocaleTimeString()}${error && at ? ' (out of date)' : ''}</span>` : null}
    </div>
    ${body}
  </section>`;
}

export function HostCheck() {
  const { data: r, error } = useLoad('/api/v1/host/check');
  let body;
  if (error) body = html`<p class="error">${error}</p>`;
  else if (!r) body = html`<p class="hint">Checking…</p>`;
  else {
    const count = (s) => r.checks.filter((c) => c.status === s).length;
    body = html`
      <p id="verdict" class=${`verdict ${r.verdict}`}>
        Verdict: ${r.verdict} (${count('fail')} fail, ${count('warn')} warn, ${count('pass')} pass)</p>
      <table class="list" id="check-table">
        <thead><tr>${['', 'Check', 'Result', 'Fix'].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
        <tbody>${r.checks.map((c) => html`<tr data-check=${c.id}>
          <td><span class=${`badge ${c.status}`}>${c.status}</span></td>
          <td class="mono">${c.id}</td>
          <td>${c.summary}</td>
          <td class="fix">${c.fix || ''}</td></tr>`)}</tbody>
      </table>`;
  }
  return html`<section id="host-page"><h1 tabindex="-1">Host</h1>
    <${HostUsage} />
    <h2 id="host-check-title">Check</h2>
    ${body}</section>`;
}

export function Devices() {
  const { data: inv, error } = useLoad('/api/v1/devices');
  let body;
  if (error) body = html`<p class="error">${error}</p>`;
  else if (!inv) body = html`<p class="hint">Reading…</p>`;
  else {
    body = html`
      <p class="hint">${inv.iommu_groups
        ? `IOMMU on: ${inv.iommu_groups} groups.`
        : 'IOMMU off: nothing can be passed through (see the host check).'}</p>
      <h2>PCI</h2>
      <table class="list" id="pci-table">
        <thead><tr>${['Address', 'Group', 'Driver', 'Verdict', 'Device'].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
        <tbody>${inv.pci.map((d) => html`<tr>
          <td class="mono">${d.address}</td>
          <td>${d.iommu_group ?? '—'}</td>
          <td>${d.driver || '—'}</td>
          <td><span class=${`badge ${d.verdict}`}>${d.verdict}</span></td>
          <td>${d.class_name}: ${d.vendor} ${d.device}<div class="hint">${d.detail || ''}</div></td></tr>`)}</tbody>
      </table>
      <h2>USB</h2>
      ${inv.usb.length ? html`<table class="list" id="usb-table">
        <thead><tr>${['Bus path', 'ID', 'Device'].map((t) => html`<th scope="col">${t}</th>`)}</tr></thead>
        <tbody>${inv.usb.map((u) => html`<tr>
          <td class="mono">${u.bus_path}</td>
          <td class="mono">${u.vendor_id}:${u.product_id}</td>
          <td>${u.vendor} ${u.product}</td></tr>`)}</tbody>
      </table>` : html`<p class="hint">No USB devices.</p>`}`;
  }
  return html`<section id="devices-page"><h1 tabindex="-1">Devices</h1>${body}</section>`;
}
