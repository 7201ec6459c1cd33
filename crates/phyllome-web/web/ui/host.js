// The host check report and the devices that could be passed through.

import { html, useState, useEffect, api } from './lib.js';

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
  return html`<section id="host-page"><h1 tabindex="-1">Host check</h1>${body}</section>`;
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
