// What every part of the UI shares: Preact with htm (one vendored file with
// no imports of its own), the API client and small formatters.
//
// Text reaches the page only through htm/Preact, which sets it as text
// nodes and attributes: a VM name full of markup stays text.

import { useState, useEffect } from '/vendor/lib/htm/preact/standalone.module.js';

export {
  html, render, useState, useEffect, useLayoutEffect, useRef, useCallback, useMemo,
} from '/vendor/lib/htm/preact/standalone.module.js';

export class ApiError extends Error {
  constructor(status, message, kind) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

// The session's CSRF token, sent on every request that changes something.
let csrf = null;
let onUnauthorized = () => {};

export function setCsrf(token) { csrf = token; }
export function getCsrf() { return csrf; }
// Called when a request answers 401 (the session ended).
export function setUnauthorizedHandler(f) { onUnauthorized = f; }

function headersFor(method, extra) {
  const headers = { ...extra };
  if (method !== 'GET' && csrf) headers['X-CSRF-Token'] = csrf;
  return headers;
}

async function errorOf(r, path) {
  const isJson = (r.headers.get('content-type') || '').includes('application/json');
  const data = isJson ? await r.json().catch(() => null) : null;
  if (r.status === 401 && path !== '/api/v1/login') onUnauthorized();
  return new ApiError(r.status, (data && data.error) || r.statusText || `HTTP ${r.status}`, data && data.kind);
}

export async function api(method, path, body) {
  const opts = { method, headers: headersFor(method, {}), credentials: 'same-origin' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (!r.ok) throw await errorOf(r, path);
  const isJson = (r.headers.get('content-type') || '').includes('application/json');
  return isJson ? r.json() : null;
}

// Reads a text/event-stream body: calls onEvent(name, data) for each event
// (data parsed as JSON), until the stream ends.
export async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let name = 'message';
  let data = [];
  const line = (l) => {
    if (l === '') {
      if (data.length) {
        let parsed;
        try { parsed = JSON.parse(data.join('\n')); } catch (e) { parsed = data.join('\n'); }
        onEvent(name, parsed);
      }
      name = 'message';
      data = [];
    } else if (l.startsWith(':')) {
      // A comment (keep-alive).
    } else {
      const i = l.indexOf(':');
      const field = i < 0 ? l : l.slice(0, i);
      const value = i < 0 ? '' : l.slice(i + 1).replace(/^ /, '');
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    }
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      line(buf.slice(0, nl).replace(/\r$/, ''));
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) line(buf.replace(/\r$/, ''));
  line('');
}

// The HTTP status the server gives each kind of error (http::status_of).
const STATUS_OF_KIND = {
  'invalid-input': 400, usage: 400, 'not-found': 404, conflict: 409, unsupported: 422, unavailable: 503, interrupted: 503,
};

// POSTs BODY to PATH asking for live progress (Accept: text/event-stream):
// onProgress(data) for each `progress` event; resolves to the data of the
// DONE event (a server that answers without events: the JSON answer at
// once); throws ApiError for a refusal (before anything was done) or an
// `error` event (kind from the server; the status its kind has, so a refusal
// found once under way is a 4xx). WHAT names the operation in the messages.
export async function postWithProgress(path, body, onProgress, { done = 'done', what = 'the operation' } = {}) {
  const r = await fetch(path, {
    method: 'POST',
    credentials: 'same-origin',
    headers: headersFor('POST', { 'Content-Type': 'application/json', Accept: 'text/event-stream' }),
    body: JSON.stringify(body),
  });
  if (!r.ok) {
    const type = r.headers.get('content-type') || '';
    if (type.includes('text/plain')) {
      // A refusal in plain text (not the server's own JSON): its words as they are.
      const said = (await r.text().catch(() => '')).trim();
      if (r.status === 401) onUnauthorized();
      throw new ApiError(r.status, said || r.statusText || `HTTP ${r.status}`);
    }
    throw await errorOf(r, path);
  }
  const type = r.headers.get('content-type') || '';
  if (!type.includes('text/event-stream')) return r.json();
  let result = null;
  let failure = null;
  await readEvents(r.body, (event, data) => {
    if (event === 'progress') onProgress(data);
    else if (event === done) result = data;
    else if (event === 'error') {
      const kind = data && data.kind;
      const message = typeof data === 'string' ? data : (data && data.error) || `${what} failed`;
      failure = new ApiError(STATUS_OF_KIND[kind] || 500, message, kind);
    }
  });
  if (failure) throw failure;
  if (!result) throw new ApiError(0, `the connection ended before ${what} finished`);
  return result;
}

// POST /api/v1/vms with live progress: onProgress({step, message}) for each
// step; resolves to the Created JSON, throws ApiError for a refusal or a
// failure (see postWithProgress; an ISO whose OS is unknown is a 4xx).
export function createVm(body, onProgress) {
  return postWithProgress('/api/v1/vms', body, onProgress, { done: 'created', what: 'the create' })
    .catch((e) => {
      if (e.status === 0 && !e.kind) throw new ApiError(0, 'the connection ended before the create finished; see the VM list');
      throw e;
    });
}

// PUT FILE as PATH's body with XMLHttpRequest (fetch reports no upload
// progress): onProgress({loaded, total}) as the bytes go, then
// onProgress({loaded: total, total, sent: true}) once all are sent (the server
// still checks the image). Returns { promise, abort }: the promise resolves
// to the JSON answer, or rejects with an ApiError (kind 'cancelled' after
// abort(); status 0 when the connection broke). Options: `method` (PUT) and
// more `headers`.
export function uploadFile(path, file, onProgress, { method = 'PUT', headers: extra = {} } = {}) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open(method, path);
    // The browser sets Content-Length from the file.
    const headers = headersFor(method, { 'Content-Type': 'application/octet-stream', ...extra });
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    const total = file.size;
    xhr.upload.onprogress = (e) => onProgress({ loaded: e.loaded, total: e.lengthComputable ? e.total : total });
    xhr.upload.onload = () => onProgress({ loaded: total, total, sent: true });
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(data);
        return;
      }
      if (xhr.status === 401) onUnauthorized();
      reject(new ApiError(xhr.status, (data && data.error) || xhr.statusText || `HTTP ${xhr.status}`, data && data.kind));
    };
    xhr.onerror = () => reject(new ApiError(0, 'the connection to the server broke off'));
    xhr.onabort = () => reject(new ApiError(0, 'cancelled', 'cancelled'));
    xhr.send(file);
  });
  return { promise, abort: () => xhr.abort() };
}

export const mediaPath = (name) => `/api/v1/media/${encodeURIComponent(name)}`;

// "BIOS and UEFI", "UEFI", "BIOS", "does not boot"; null: not known.
export function bootText(boot) {
  if (!boot) return null;
  if (boot.bios && boot.uefi) return 'BIOS and UEFI';
  if (boot.uefi) return 'UEFI';
  if (boot.bios) return 'BIOS';
  return 'does not boot';
}


export const vmPath = (name) => `/api/v1/vms/${encodeURIComponent(name)}`;

// The host a row of the list is on ('local': this host's own libvirt).
export const LOCAL = 'local';
export const isRemote = (vm) => !!vm && !!vm.host && vm.host !== LOCAL;
// `?host=NAME` for a VM of another host (the API's libvirt-only routes take it), '' for this host's.
export const hostQuery = (vm) => (isRemote(vm) ? `?host=${encodeURIComponent(vm.host)}` : '');
// A row's key in the list: the same name may be on two hosts.
export const vmKey = (vm) => `${vm.host || LOCAL}/${vm.name}`;
export const vmHash = (name, tab) => `#/vm/${encodeURIComponent(name)}${tab && tab !== 'overview' ? `/${tab}` : ''}`;

export function wsUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

// The subprotocols a console WebSocket sends: the CSRF token travels as one.
export const wsProtocols = () => ['binary', `phyllome-csrf.${csrf}`];

export function mib(n) {
  if (n === null || n === undefined) return '—';
  if (n >= 1024) return `${+(n / 1024).toFixed(1)} GiB`;
  return `${n} MiB`;
}

export function gib(n) {
  return n === null || n === undefined ? '—' : `${n} GiB`;
}

// A size the create form can send: 4096 -> "4G", 1536 -> "1536M".
export function sizeFromMib(n) {
  if (!n) return '';
  return n % 1024 === 0 ? `${n / 1024}G` : `${n}M`;
}

// Whether a VM's consoles can be reached (its display and serial port exist).
export const isActive = (vm) => !!vm && (vm.state === 'running' || vm.state === 'paused');

// "running", "paused: I/O error".
export function stateText(vm) {
  if (!vm) return 'gone';
  if (vm.unreachable) return `unreachable (was ${vm.state})`;
  return vm.state_reason ? `${vm.state}: ${vm.state_reason}` : vm.state;
}

export const stateClass = (state) => `state ${String(state || 'other').replace(/ /g, '-')}`;

// ---------------------------------------------------------------- usage figures

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

// 1536 -> "1.5 KiB", 536870912 -> "512 MiB": three significant digits at most.
export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  let v = Math.abs(n);
  let i = 0;
  while (v >= 1024 && i < BYTE_UNITS.length - 1) {
    v /= 1024;
    i += 1;
  }
  let digits = 0;
  if (i > 0) digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${n < 0 ? '-' : ''}${+v.toFixed(digits)} ${BYTE_UNITS[i]}`;
}

export const perSec = (n) => (n === null || n === undefined || !Number.isFinite(n) ? '—' : `${bytes(n)}/s`);

// 12.345 -> "12 %", 0.42 -> "0.4 %".
export function percent(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—';
  return `${+n.toFixed(Math.abs(n) >= 10 ? 0 : 1)} %`;
}

// 4000 -> "1 h 6 min".
export function duration(secs) {
  if (secs === null || secs === undefined || !Number.isFinite(secs)) return '—';
  const s = Math.max(0, Math.floor(secs));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

// GETs PATH now and every MS milliseconds after each answer, while the page
// is visible (a hidden tab pauses it; it polls at once on coming back), until
// the component unmounts or PATH changes. PATH null: no polling.
// Returns { data, error, at }: the last answer, the last failure (an
// ApiError, cleared by the next answer) and when the last answer came (ms).
export function usePoll(path, ms) {
  const [state, setState] = useState({ data: null, error: null, at: null });
  useEffect(() => {
    setState({ data: null, error: null, at: null });
    if (!path) return undefined;
    let stopped = false;
    let timer = null;
    let inFlight = false;
    const tick = async () => {
      timer = null;
      if (stopped || inFlight || document.hidden) return;
      inFlight = true;
      try {
        const data = await api('GET', path);
        if (!stopped) setState({ data, error: null, at: Date.now() });
      } catch (e) {
        if (!stopped) setState((s) => ({ ...s, error: e }));
      } finally {
        inFlight = false;
      }
      if (!stopped && !document.hidden) timer = setTimeout(tick, ms);
    };
    const onVisibility = () => {
      if (!document.hidden && !timer && !inFlight) tick();
    };
    document.addEventListener('visibilitychange', onVisibility);
    tick();
    return () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisibility);
    };
  }, [path, ms]);
  return state;
}
