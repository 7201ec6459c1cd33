// A VM's screen (noVNC) and serial console (xterm.js), each over its
// WebSocket. Neither connects to a VM that is not running: the page says
// "not running" and connects by itself once the VM runs.

import {
  html, useState, useEffect, useRef, api, vmPath, vmHash, wsUrl, wsProtocols, isActive,
} from './lib.js';

const NOVNC = '/vendor/novnc/core/rfb.js';
const XTERM = '/vendor/lib/@xterm/xterm/lib/xterm.mjs';
const XTERM_FIT = '/vendor/lib/@xterm/addon-fit/lib/addon-fit.mjs';

// What to say when a console closed: "not running" if the VM stopped meanwhile.
async function whyClosed(name, otherwise) {
  try {
    const d = await api('GET', vmPath(name));
    return isActive(d) ? otherwise : 'not running';
  } catch (e) {
    return e.status === 404 ? 'gone' : otherwise;
  }
}

function Status({ id, status, onRetry, vmName }) {
  return html`<span class="console-status">
    <span id=${id} class=${status.cls || ''} role="status">${status.text}</span>
    ${status.text === 'not running' ? html`<span class="hint"> Start ${vmName} to use its console; this page connects once it runs.</span>` : null}
    ${status.retry ? html`<button type="button" id=${`${id}-retry`} onClick=${onRetry}>Reconnect</button>` : null}
  </span>`;
}

// Whether the screen shows nothing: all but a few pixels (a cursor) of one colour.
function blankScreen(screen) {
  const c = screen && screen.querySelector('canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const first = (d[0] << 16) | (d[1] << 8) | d[2];
  let other = 0;
  let n = 0;
  for (let i = 0; i < d.length; i += 4 * 7) {
    n += 1;
    if (((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]) !== first) other += 1;
  }
  return other / n < 0.001;
}

// Seconds of a blank screen after which the console says where the guest's output may be.
const BLANK_SECS = 5;

export function VncConsole({ name, vm }) {
  const active = isActive(vm);
  const screenRef = useRef(null);
  const rfbRef = useRef(null);
  const [status, setStatus] = useState({ text: active ? 'connecting…' : 'not running' });
  const [connected, setConnected] = useState(false);
  const [attempt, setAttempt] = useState(0);
  const [blank, setBlank] = useState(false);

  // A guest that writes only to its serial port leaves the screen black: say so, and where to look.
  useEffect(() => {
    setBlank(false);
    if (!connected) return undefined;
    let since = null;
    const timer = setInterval(() => {
      if (!blankScreen(screenRef.current)) {
        since = null;
        setBlank(false);
        return;
      }
      since = since || Date.now();
      if (Date.now() - since >= BLANK_SECS * 1000) setBlank(true);
    }, 1000);
    return () => clearInterval(timer);
  }, [connected]);

  useEffect(() => {
    setConnected(false);
    if (!active) {
      setStatus({ text: 'not running' });
      return undefined;
    }
    let stopped = false;
    let rfb = null;
    setStatus({ text: 'connecting…' });
    (async () => {
      let RFB;
      try {
        ({ default: RFB } = await import(NOVNC));
      } catch (e) {
        if (!stopped) setStatus({ text: 'noVNC is not available on this server', cls: 'error' });
        return;
      }
      if (stopped) return;
      rfb = new RFB(screenRef.current, wsUrl(`${vmPath(name)}/console`), { wsProtocols: wsProtocols(), shared: true });
      rfb.scaleViewport = true;
      rfb.background = '#101418';
      rfb.addEventListener('connect', () => {
        if (stopped) return;
        setStatus({ text: 'connected', cls: 'ok' });
        setConnected(true);
      });
      rfb.addEventListener('disconnect', async (e) => {
        if (rfbRef.current === rfb) rfbRef.current = null;
        if (stopped) return;
        setConnected(false);
        const why = await whyClosed(name, e.detail.clean ? 'disconnected' : 'connection lost');
        if (!stopped) setStatus({ text: why, cls: why === 'not running' ? '' : 'error', retry: why !== 'not running' && why !== 'gone' });
      });
      rfb.addEventListener('securityfailure', (e) => {
        if (!stopped) setStatus({ text: `refused: ${e.detail.reason || 'security failure'}`, cls: 'error', retry: true });
      });
      rfb.addEventListener('desktopname', (e) => { if (screenRef.current) screenRef.current.title = e.detail.name; });
      rfbRef.current = rfb;
    })();
    return () => {
      stopped = true;
      rfbRef.current = null;
      if (rfb) {
        try { rfb.disconnect(); } catch (e) { /* closed already */ }
      }
    };
  }, [name, active, attempt]);

  return html`<div class="console" id="vnc-console">
    <div class="console-bar">
      <${Status} id="console-status" status=${status} vmName=${name} onRetry=${() => setAttempt((n) => n + 1)} />
      <span class="spacer"></span>
      <button type="button" id="ctrl-alt-del" disabled=${!connected}
        onClick=${() => rfbRef.current && rfbRef.current.sendCtrlAltDel()}>Send Ctrl-Alt-Del</button>
    </div>
    ${connected && blank ? html`<p class="hint" id="console-blank-hint" data-testid="console-blank-hint" role="status">
      The screen has shown nothing for ${BLANK_SECS} seconds: ${name}'s guest may write only to its serial port
      (a kernel started with <span class="mono">console=ttyS0</span>, a headless installer).
      ${' '}<a href=${vmHash(name, 'serial')} id="console-open-serial">Open the serial console</a>.</p>` : null}
    <div id="screen" ref=${screenRef} class=${active ? '' : 'off'}></div>
  </div>`;
}

// xterm.js styles the terminal through <style> elements whose text it sets;
// this page's CSP (style-src 'self', no 'unsafe-inline') refuses those, even
// empty. Constructed style sheets are not inline styles: while xterm.js
// builds a terminal (it makes its <style> elements then, in open()), each
// <style> it asks for is a hidden stand-in element whose text goes to a
// sheet adopted by the document, dropped again when xterm.js removes it.
function withAdoptedStyles(doc, build) {
  const canAdopt = 'adoptedStyleSheets' in doc && typeof CSSStyleSheet.prototype.replaceSync === 'function';
  if (!canAdopt) return build();
  const create = doc.createElement;
  doc.createElement = function createElement(tag, options) {
    if (String(tag).toLowerCase() !== 'style') return create.call(doc, tag, options);
    const el = create.call(doc, 'phyllome-style');
    el.hidden = true;
    const sheet = new CSSStyleSheet();
    let text = '';
    doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
    Object.defineProperty(el, 'textContent', {
      configurable: true,
      get: () => text,
      set: (v) => {
        text = v === null || v === undefined ? '' : String(v);
        sheet.replaceSync(text);
      },
    });
    el.remove = function removeStyle() {
      doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
      Element.prototype.remove.call(this);
    };
    return el;
  };
  try {
    return build();
  } finally {
    delete doc.createElement;
  }
}

const THEME = {
  background: '#101418', foreground: '#d8e0dc', cursor: '#9fe0ae', selectionBackground: '#3a5a44',
};

export function SerialConsole({ name, vm }) {
  const active = isActive(vm);
  const boxRef = useRef(null);
  const termRef = useRef(null);
  const [ready, setReady] = useState(false);
  const [status, setStatus] = useState({ text: 'loading the terminal…' });
  const [attempt, setAttempt] = useState(0);

  // The terminal: made once, kept across reconnects.
  useEffect(() => {
    let gone = false;
    let term = null;
    let onResize = null;
    (async () => {
      let Terminal;
      let FitAddon;
      try {
        [{ Terminal }, { FitAddon }] = await Promise.all([import(XTERM), import(XTERM_FIT)]);
      } catch (e) {
        if (!gone) setStatus({ text: 'xterm.js is not available on this server', cls: 'error' });
        return;
      }
      if (gone) return;
      term = new Terminal({
        cursorBlink: true, scrollback: 5000, fontSize: 14, theme: THEME,
        fontFamily: 'ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace',
      });
      const fit = new FitAddon();
      term.loadAddon(fit);
      withAdoptedStyles(document, () => term.open(boxRef.current));
      const refit = () => { try { fit.fit(); } catch (e) { /* hidden */ } };
      refit();
      onResize = refit;
      window.addEventListener('resize', onResize);
      termRef.current = term;
      setReady(true);
    })();
    return () => {
      gone = true;
      if (onResize) window.removeEventListener('resize', onResize);
      termRef.current = null;
      if (term) term.dispose();
    };
  }, []);

  // The connection: while the VM runs.
  useEffect(() => {
    if (!ready) return undefined;
    const term = termRef.current;
    if (!active) {
      setStatus({ text: 'not running' });
      return undefined;
    }
    let stopped = false;
    setStatus({ text: 'connecting…' });
    const ws = new WebSocket(wsUrl(`${vmPath(name)}/serial`), wsProtocols());
    ws.binaryType = 'arraybuffer';
    const enc = new TextEncoder();
    const send = (bytes) => { if (ws.readyState === WebSocket.OPEN) ws.send(bytes); };
    const subs = [
      term.onData((d) => send(enc.encode(d))),
      term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff))),
    ];
    ws.onopen = () => {
      if (stopped) return;
      setStatus({ text: 'connected', cls: 'ok' });
      term.focus();
    };
    ws.onmessage = (e) => term.write(typeof e.data === 'string' ? e.data : new Uint8Array(e.data));
    ws.onclose = async (e) => {
      if (stopped) return;
      let why;
      if (e.code === 1008) {
        why = 'session ended';
        api('GET', '/api/v1/session').catch(() => { /* the login shows */ });
      } else {
        const otherwise = e.code === 1000 ? 'console ended' : e.code === 1011 && e.reason ? e.reason : 'connection lost';
        why = await whyClosed(name, otherwise);
      }
      if (stopped) return;
      term.write(`\r\n\x1b[2m[${why}]\x1b[0m\r\n`);
      setStatus({ text: why, cls: why === 'not running' ? '' : 'error', retry: why !== 'not running' && why !== 'gone' && why !== 'session ended' });
    };
    return () => {
      stopped = true;
      for (const s of subs) s.dispose();
      ws.close();
    };
  }, [ready, name, active, attempt]);

  return html`<div class="console" id="serial-console">
    <div class="console-bar">
      <${Status} id="serial-status" status=${status} vmName=${name} onRetry=${() => setAttempt((n) => n + 1)} />
      <span class="spacer"></span>
      <span class="hint">The VM's first serial port (ttyS0). Keys typed here go to the guest.</span>
    </div>
    <div id="serial-term" ref=${boxRef} data-testid="serial-term"></div>
  </div>`;
}
