// Phyllome's web UI: Preact components written with htm (no build step).
// Every piece of data (VM names above all) reaches the page as text nodes
// or attribute values set by Preact, never parsed as HTML.
//
// Pages (hash routes): #/vms (with Import), #/vm/NAME[/usage|/shares|/snapshots|/manifest|/console|/serial], #/media, #/host, #/devices.

import {
  html, render, useState, useEffect, useRef, api, setCsrf, setUnauthorizedHandler, vmHash,
} from './ui/lib.js';
import { ConfirmHost, CreateDialog } from './ui/dialogs.js';
import { VmList, VmDetail } from './ui/vms.js';
import { HostCheck, Devices } from './ui/host.js';
import { MediaPage } from './ui/media.js';

function parseRoute(hash) {
  const parts = (hash || '').replace(/^#\/?/, '').split('/');
  let decoded;
  try {
    decoded = parts.map(decodeURIComponent);
  } catch (e) {
    return { view: 'vms' };
  }
  const [view, arg, tab] = decoded;
  if (view === 'vm' && arg) return { view: 'vm', name: arg, tab: tab || 'overview' };
  // The console's address before VM pages existed.
  if (view === 'console' && arg) return { view: 'vm', name: arg, tab: 'console', redirect: vmHash(arg, 'console') };
  if (view === 'host' || view === 'devices' || view === 'media') return { view };
  return { view: 'vms' };
}

function useRoute() {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  useEffect(() => { if (route.redirect) history.replaceState(null, '', route.redirect); }, [route]);
  return route;
}

function Login({ message, onLogin }) {
  const [error, setError] = useState(message || '');
  const [busy, setBusy] = useState(false);
  const user = useRef(null);
  const pass = useRef(null);
  useEffect(() => { setError(message || ''); }, [message]);
  useEffect(() => { if (user.current) user.current.focus(); }, []);
  const submit = async (e) => {
    e.preventDefault();
    setError('');
    setBusy(true);
    try {
      const s = await api('POST', '/api/v1/login', { username: user.current.value, password: pass.current.value });
      pass.current.value = '';
      onLogin(s);
    } catch (err) {
      setError(err.message);
      setBusy(false);
    }
  };
  return html`<section id="login-view" class="login">
    <form id="login-form" class="card" autocomplete="on" onSubmit=${submit}>
      <h1><img src="/favicon.svg" alt="" width="28" height="28" /> Phyllome</h1>
      <label>User name <input id="login-user" ref=${user} name="username" autocomplete="username" required /></label>
      <label>Password <input id="login-password" ref=${pass} name="password" type="password" autocomplete="current-password" required /></label>
      <p id="login-error" class="error" role="alert">${error}</p>
      <button id="login-submit" type="submit" class="primary" disabled=${busy}>Log in</button>
    </form>
  </section>`;
}

function since(secs) {
  if (!secs) return '';
  const d = new Date(secs * 1000);
  return ` (since ${d.toLocaleTimeString()})`;
}

function Header({ user, live, route, onLogout }) {
  const nav = route.view === 'vm' ? 'vms' : route.view;
  const link = (to, label) => html`<a href=${`#/${to}`} data-nav=${to} class=${nav === to ? 'active' : ''}
    aria-current=${nav === to ? 'page' : null}>${label}</a>`;
  return html`<header id="top">
    <a class="brand" href="#/vms"><img src="/favicon.svg" alt="" width="22" height="22" /> Phyllome</a>
    <nav aria-label="Pages">
      ${link('vms', 'Virtual machines')}
      ${link('media', 'Media')}
      ${link('host', 'Host')}
      ${link('devices', 'Devices')}
    </nav>
    <span class="spacer"></span>
    <span id="live" class=${`live${live ? ' on' : ''}`} title="VM states update as they change">${live ? 'live' : 'offline'}</span>
    <span id="who">${user}</span>
    <button id="logout" type="button" class="quiet" onClick=${onLogout}>Log out</button>
  </header>`;
}

// The VM list (every host's), libvirt's status and the hosts', as the server pushes them.
function useEvents(session, endSession) {
  const [vms, setVms] = useState(null);
  const [live, setLive] = useState(false);
  const [status, setStatus] = useState(null);
  const [hosts, setHosts] = useState([]);
  useEffect(() => {
    if (!session) return undefined;
    let es = null;
    let retry = null;
    let stopped = false;
    const open = () => {
      es = new EventSource('/api/v1/events');
      es.addEventListener('vms', (e) => {
        setVms(JSON.parse(e.data));
        setLive(true);
      });
      es.addEventListener('status', (e) => setStatus(JSON.parse(e.data)));
      es.addEventListener('hosts', (e) => setHosts(JSON.parse(e.data)));
      es.addEventListener('logout', () => {
        es.close();
        endSession('Your session ended.');
      });
      es.onerror = async () => {
        setLive(false);
        if (es.readyState === EventSource.CLOSED && !stopped) {
          // Refused (the session ended?) rather than a dropped connection.
          try {
            await api('GET', '/api/v1/session');
            if (!stopped) retry = setTimeout(open, 2000);
          } catch (err) { /* the login shows */ }
        }
      };
    };
    open();
    return () => {
      stopped = true;
      clearTimeout(retry);
      if (es) es.close();
      setLive(false);
      setVms(null);
      setStatus(null);
      setHosts([]);
    };
  }, [session]);
  return { vms, live, status, hosts };
}

function App() {
  const [session, setSession] = useState(undefined); // undefined: not known yet
  const [loginMessage, setLoginMessage] = useState('');
  const [creating, setCreating] = useState(false);
  const route = useRoute();

  const endSession = (message) => {
    setCsrf(null);
    setCreating(false);
    setLoginMessage(message || '');
    setSession(null);
  };
  const enter = (s) => {
    setCsrf(s.csrf);
    setLoginMessage('');
    setSession(s);
  };

  useEffect(() => {
    setUnauthorizedHandler(() => endSession('Your session ended: log in again.'));
    api('GET', '/api/v1/session').then(enter).catch((e) => endSession(e.status === 401 ? '' : e.message));
  }, []);

  const { vms, live, status, hosts } = useEvents(session, endSession);

  if (session === undefined) return null;
  if (!session) return html`<${Login} message=${loginMessage} onLogin=${enter} />`;

  const logout = async () => {
    try { await api('POST', '/api/v1/logout'); } catch (e) { /* gone already */ }
    endSession('Logged out.');
  };

  let page;
  if (route.view === 'host') page = html`<${HostCheck} />`;
  else if (route.view === 'media') page = html`<${MediaPage} />`;
  else if (route.view === 'devices') page = html`<${Devices} />`;
  else if (route.view === 'vm') page = html`<${VmDetail} key=${route.name} name=${route.name} tab=${route.tab} vms=${vms} hosts=${hosts} />`;
  else page = html`<${VmList} vms=${vms} hosts=${hosts} onNew=${() => setCreating(true)} />`;
  // Other hosts that do not answer: their VMs show as last read.
  const down = hosts.filter((h) => h.name !== 'local' && h.state === 'down');

  return html`
    <${Header} user=${session.user} live=${live} route=${route} onLogout=${logout} />
    ${status && status.stale ? html`<div id="stale-banner" class="banner" role="alert">
      libvirtd is unreachable; the list may be out of date${since(status.since)}.</div>` : null}
    ${down.map((h) => html`<div class="banner hosts-banner" role="status" data-host=${h.name} key=${h.name}>
      Host ${h.name} is unreachable${since(h.since)}: its VMs show as last read.</div>`)}
    <main id="view">${page}</main>
    ${creating ? html`<${CreateDialog} onClose=${() => setCreating(false)}
      onOpenVm=${(name) => { setCreating(false); location.hash = vmHash(name); }} />` : null}
    <${ConfirmHost} />`;
}

// The static shell (a placeholder login card until the modules load) gives way to the app.
document.getElementById('shell')?.remove();
render(html`<${App} />`, document.getElementById('app'));
