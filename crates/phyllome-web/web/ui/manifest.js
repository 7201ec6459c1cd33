// A VM's manifest (docs/manifest.md): the TOML `phyllome manifest NAME`
// prints, the notes on what could not be told, and a download as NAME.toml
// (a blob: URL the page makes; the CSP governs what a page loads, not a download).

import { html, useState, useEffect, api, vmPath } from './lib.js';

// A file name for the download: the VM's name, with what a file name cannot hold made '_'.
export function manifestFileName(name) {
  const safe = String(name || 'vm').replace(/[\u0000-\u001f\u007f/\\:*?"<>|]/g, '_').replace(/^\.+/, '_');
  return `${safe || 'vm'}.toml`;
}

// VERSION changes whenever the VM's row does (its autostart, its state): the manifest is read again.
export function ManifestPanel({ name, version }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState('');
  const [url, setUrl] = useState(null);

  useEffect(() => {
    let gone = false;
    api('GET', `${vmPath(name)}/manifest`)
      .then((d) => { if (!gone) { setData(d); setError(''); } })
      .catch((e) => { if (!gone) setError(e.message); });
    return () => { gone = true; };
  }, [name, version]);

  const toml = data ? data.toml : null;
  useEffect(() => {
    if (toml === null) return undefined;
    const u = URL.createObjectURL(new Blob([toml], { type: 'application/toml' }));
    setUrl(u);
    return () => { URL.revokeObjectURL(u); setUrl(null); };
  }, [toml]);

  const file = manifestFileName(name);
  let body;
  if (error && !data) {
    body = html`<p class="error" id="manifest-error" role="alert">${error}</p>`;
  } else if (!data) {
    body = html`<p class="hint" id="manifest-loading">Reading the manifest…</p>`;
  } else {
    body = html`
      ${data.notes && data.notes.length ? html`<ul class="note manifest-notes" id="manifest-notes" data-testid="manifest-notes">
        ${data.notes.map((n) => html`<li>${n}</li>`)}</ul>` : null}
      <div class="manifest-bar">
        <span class="hint">As <code>phyllome manifest ${name}</code> prints it.</span>
        <span class="spacer"></span>
        <a class="button" id="manifest-download" data-testid="manifest-download" href=${url || undefined}
          download=${file} aria-disabled=${url ? null : 'true'}>Download ${file}</a>
      </div>
      <pre id="manifest-toml" data-testid="manifest-toml" class="manifest" tabindex="0"
        aria-label=${`The manifest of ${name}`}>${data.toml}</pre>
      ${error ? html`<p class="error" id="manifest-error" role="alert">${error}</p>` : null}`;
  }
  return html`<div id="manifest" data-testid="manifest">
    <p class="hint" id="manifest-intro">${name} in Phyllome's terms: what was chosen for it (OS, sizes as they were asked,
      encryption, network, media, shares, autostart), never this host's paths or devices. It is the file that moves
      with a VM to another host.</p>
    ${body}
  </div>`;
}
