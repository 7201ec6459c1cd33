// Phyllome's web UI: one page, no framework. Every piece of data (VM
// names above all) reaches the page through textContent or attribute
// setters, never parsed as HTML.

const $ = (sel) => document.querySelector(sel);
const state = { user: null, csrf: null, vms: [], events: null, rfb: null, os: null };

// h('tr', {className: 'x', dataset: {vm: name}}, 'text', child): builds elements; strings become text nodes.
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {};
  if (method !== 'GET' && state.csrf) headers['X-CSRF-Token'] = state.csrf;
  const opts = { method, headers, credentials: 'same-origin' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const isJson = (r.headers.get('content-type') || '').includes('application/json');
  const data = isJson ? await r.json() : null;
  if (r.status === 401 && path !== '/api/v1/login') {
    showLogin();
  }
  if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.statusText);
  return data;
}

function mib(n) {
  return n >= 1024 ? `${+(n / 1024).toFixed(1)} GiB` : `${n} MiB`;
}

// ---------------------------------------------------------------- session

function showLogin(message) {
  stopEvents();
  closeConsole();
  state.user = state.csrf = null;
  $('#top').hidden = true;
  $('#view').replaceChildren();
  $('#login-view').hidden = false;
  $('#login-error').textContent = message || '';
  $('#login-user').focus();
}

async function onLogin(ev) {
  ev.preventDefault();
  $('#login-error').textContent = '';
  $('#login-submit').disabled = true;
  try {
    const s = await api('POST', '/api/v1/login', {
      username: $('#login-user').value,
      password: $('#login-password').value,
    });
    $('#login-password').value = '';
    enter(s);
  } catch (e) {
    $('#login-error').textContent = e.message;
  } finally {
    $('#login-submit').disabled = false;
  }
}

function enter(session) {
  state.user = session.user;
  state.csrf = session.csrf;
  $('#login-view').hidden = true;
  $('#top').hidden = false;
  $('#who').textContent = session.user;
  startEvents();
  route();
}

async function logout() {
  try { await api('POST', '/api/v1/logout'); } catch (e) { /* gone already */ }
  showLogin('Logged out.');
}

// ---------------------------------------------------------------- live VM list

function startEvents() {
  stopEvents();
  const es = new EventSource('/api/v1/events');
  state.events = es;
  es.addEventListener('vms', (e) => {
    state.vms = JSON.parse(e.data);
    setLive(true);
    renderVmRows();
    updateConsoleState();
  });
  es.addEventListener('logout', () => showLogin('Your session ended.'));
  es.onerror = async () => {
    setLive(false);
    if (es.readyState === EventSource.CLOSED) {
      // Refused (the session ended?) rather than a dropped connection.
      try { await api('GET', '/api/v1/session'); setTimeout(startEvents, 2000); } catch (e) { /* showLogin ran */ }
    }
  };
}

function stopEvents() {
  if (state.events) state.events.close();
  state.events = null;
  setLive(false);
}

function setLive(on) {
  const el = $('#live');
  el.textContent = on ? 'live' : 'offline';
  el.classList.toggle('on', on);
}

// ---------------------------------------------------------------- views

function route() {
  if (!state.user) return;
  const hash = location.hash || '#/vms';
  const [, view, arg] = hash.match(/^#\/([a-z]+)\/?(.*)$/) || [null, 'vms', ''];
  if (view !== 'console') closeConsole();
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.dataset.nav === view);
  }
  if (view === 'host') return showHost();
  if (view === 'devices') return showDevices();
  if (view === 'console') return showConsole(decodeURIComponent(arg));
  return showVms();
}

function showVms() {
  const table = h('table', { id: 'vm-table', className: 'list' },
    h('thead', {}, h('tr', {},
      ['Name', 'OS', 'State', 'vCPUs', 'Memory', 'Disk', 'Encrypted', ''].map((t) => h('th', {}, t)))),
    h('tbody', { id: 'vm-rows' }));
  $('#view').replaceChildren(
    h('div', { className: 'toolbar' },
      h('h1', {}, 'Virtual machines'),
      h('span', { className: 'spacer' }),
      h('button', { id: 'new-vm', className: 'primary', type: 'button', onclick: openCreate }, 'New VM')),
    h('p', { id: 'vm-error', className: 'error', role: 'alert' }),
    table,
    h('p', { id: 'vm-empty', className: 'hint', hidden: true }, 'No virtual machines yet.'));
  renderVmRows();
}

function renderVmRows() {
  const body = $('#vm-rows');
  if (!body) return;
  const rows = state.vms.map((vm) => {
    const running = vm.state === 'running';
    const paused = vm.state === 'paused';
    const off = vm.state === 'shut off';
    const act = (label, action, enabled, cls) => h('button', {
      type: 'button', className: cls || '', disabled: !enabled, dataset: { action },
      onclick: () => vmAction(vm.name, action),
    }, label);
    return h('tr', { dataset: { vm: vm.name } },
      h('td', { className: 'name' }, vm.name),
      h('td', {}, vm.os || '—'),
      h('td', {}, h('span', { className: `state ${vm.state.replace(' ', '-')}` }, vm.state)),
      h('td', {}, vm.vcpus),
      h('td', {}, mib(vm.memory_mib)),
      h('td', {}, vm.disk_gib === null ? '—' : `${vm.disk_gib} GiB`),
      h('td', {}, vm.encrypted ? 'yes' : 'no'),
      h('td', { className: 'actions' },
        act('Start', 'start', off || paused),
        act('Stop', 'stop', running),
        act('Kill', 'kill', running || paused, 'danger-text'),
        h('a', { className: `button${running ? '' : ' disabled'}`, href: `#/console/${encodeURIComponent(vm.name)}`,
                 dataset: { action: 'console' } }, 'Console'),
        act('Delete', 'delete', off, 'danger-text')));
  });
  body.replaceChildren(...rows);
  const empty = $('#vm-empty');
  if (empty) empty.hidden = state.vms.length > 0;
}

function confirmDialog(title, text, okLabel) {
  const d = $('#confirm-dialog');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  d.returnValue = '';
  d.showModal();
  return new Promise((resolve) => {
    d.addEventListener('close', () => resolve(d.returnValue === 'ok'), { once: true });
  });
}

async function vmAction(name, action) {
  const err = $('#vm-error');
  err.textContent = '';
  const questions = {
    stop: ['Stop', `Shut down ${name}? Its guest gets the ACPI power button.`, 'Stop'],
    kill: ['Kill', `Power ${name} off at once? Unsaved data in the guest is lost.`, 'Kill'],
    delete: ['Delete', `Delete ${name} with its disk? This cannot be undone.`, 'Delete'],
  };
  if (questions[action] && !(await confirmDialog(...questions[action]))) return;
  const path = `/api/v1/vms/${encodeURIComponent(name)}`;
  try {
    if (action === 'delete') await api('DELETE', path);
    else await api('POST', `${path}/${action}`, action === 'stop' ? { timeout_secs: 60 } : undefined);
  } catch (e) {
    err.textContent = `${name}: ${e.message}`;
  }
}

// ---------------------------------------------------------------- create

function fillSelect(sel, options, blank) {
  sel.replaceChildren(...(blank ? [h('option', { value: '' }, blank)] : []),
    ...options.map(([value, label]) => h('option', { value }, label)));
}

async function openCreate() {
  const form = $('#create-form');
  form.reset();
  $('#create-error').textContent = '';
  const d = $('#create-dialog');
  d.showModal();
  try {
    const [os, media] = await Promise.all([state.os || api('GET', '/api/v1/os'), api('GET', '/api/v1/media')]);
    state.os = os;
    fillSelect(form.elements.os, os.map((p) => [p.id, `${p.name} (${p.id})`]));
    form.elements.os.value = os.some((p) => p.id === 'linux') ? 'linux' : os[0].id;
    const files = media.files;
    const pick = (kinds) => files.filter((f) => kinds.includes(f.kind)).map((f) => [f.name, f.name]);
    fillSelect(form.elements.iso, pick(['iso']), '(none)');
    fillSelect(form.elements.kernel, pick(['kernel', 'other']), '(none)');
    fillSelect(form.elements.initrd, pick(['initrd', 'other']), '(none)');
    $('#media-hint').textContent = media.exists
      ? `Installer media come from ${media.dir} on the host.`
      : `Put installer ISOs in ${media.dir} on the host to offer them here.`;
  } catch (e) {
    $('#create-error').textContent = e.message;
  }
}

async function onCreate(ev) {
  ev.preventDefault();
  const f = ev.target.elements;
  const body = { name: f.name.value.trim(), os: f.os.value, network: f.network.value,
                 encryption: f.encryption.value, start: f.start.checked };
  for (const k of ['memory', 'disk_size', 'iso', 'kernel', 'initrd', 'cmdline']) {
    if (f[k].value.trim()) body[k] = f[k].value.trim();
  }
  if (f.cpus.value) body.cpus = Number(f.cpus.value);
  $('#create-error').textContent = '';
  $('#create-submit').disabled = true;
  $('#create-submit').textContent = 'Creating…';
  try {
    await api('POST', '/api/v1/vms', body);
    $('#create-dialog').close();
  } catch (e) {
    $('#create-error').textContent = e.message;
  } finally {
    $('#create-submit').disabled = false;
    $('#create-submit').textContent = 'Create';
  }
}

// ---------------------------------------------------------------- host check and devices

async function showHost() {
  $('#view').replaceChildren(h('h1', {}, 'Host check'), h('p', { className: 'hint' }, 'Checking…'));
  try {
    const r = await api('GET', '/api/v1/host/check');
    const count = (s) => r.checks.filter((c) => c.status === s).length;
    $('#view').replaceChildren(
      h('h1', {}, 'Host check'),
      h('p', { id: 'verdict', className: `verdict ${r.verdict}` },
        `Verdict: ${r.verdict} (${count('fail')} fail, ${count('warn')} warn, ${count('pass')} pass)`),
      h('table', { className: 'list', id: 'check-table' },
        h('thead', {}, h('tr', {}, ['', 'Check', 'Result', 'Fix'].map((t) => h('th', {}, t)))),
        h('tbody', {}, r.checks.map((c) => h('tr', { dataset: { check: c.id } },
          h('td', {}, h('span', { className: `badge ${c.status}` }, c.status)),
          h('td', { className: 'mono' }, c.id),
          h('td', {}, c.summary),
          h('td', { className: 'fix' }, c.fix || ''))))));
  } catch (e) {
    $('#view').replaceChildren(h('h1', {}, 'Host check'), h('p', { className: 'error' }, e.message));
  }
}

async function showDevices() {
  $('#view').replaceChildren(h('h1', {}, 'Devices'), h('p', { className: 'hint' }, 'Reading…'));
  try {
    const inv = await api('GET', '/api/v1/devices');
    const pci = h('table', { className: 'list', id: 'pci-table' },
      h('thead', {}, h('tr', {}, ['Address', 'Group', 'Driver', 'Verdict', 'Device'].map((t) => h('th', {}, t)))),
      h('tbody', {}, inv.pci.map((d) => h('tr', {},
        h('td', { className: 'mono' }, d.address),
        h('td', {}, d.iommu_group ?? '—'),
        h('td', {}, d.driver || '—'),
        h('td', {}, h('span', { className: `badge ${d.verdict}` }, d.verdict)),
        h('td', {}, `${d.class_name}: ${d.vendor} ${d.device}`, h('div', { className: 'hint' }, d.detail || ''))))));
    const usb = inv.usb.length
      ? h('table', { className: 'list', id: 'usb-table' },
        h('thead', {}, h('tr', {}, ['Bus path', 'ID', 'Device'].map((t) => h('th', {}, t)))),
        h('tbody', {}, inv.usb.map((u) => h('tr', {},
          h('td', { className: 'mono' }, u.bus_path),
          h('td', { className: 'mono' }, `${u.vendor_id}:${u.product_id}`),
          h('td', {}, `${u.vendor} ${u.product}`)))))
      : h('p', { className: 'hint' }, 'No USB devices.');
    $('#view').replaceChildren(
      h('h1', {}, 'Devices'),
      h('p', { className: 'hint' }, inv.iommu_groups
        ? `IOMMU on: ${inv.iommu_groups} groups.`
        : 'IOMMU off: nothing can be passed through (see the host check).'),
      h('h2', {}, 'PCI'), pci, h('h2', {}, 'USB'), usb);
  } catch (e) {
    $('#view').replaceChildren(h('h1', {}, 'Devices'), h('p', { className: 'error' }, e.message));
  }
}

// ---------------------------------------------------------------- console

function closeConsole() {
  if (state.rfb) {
    const r = state.rfb;
    state.rfb = null;
    try { r.disconnect(); } catch (e) { /* already closed */ }
  }
}

function updateConsoleState() {
  const el = $('#console-vm-state');
  if (!el) return;
  const vm = state.vms.find((v) => v.name === el.dataset.vm);
  el.textContent = vm ? vm.state : 'gone';
}

async function showConsole(name) {
  closeConsole();
  const status = h('span', { id: 'console-status' }, 'connecting…');
  const screen = h('div', { id: 'screen' });
  $('#view').replaceChildren(
    h('div', { className: 'toolbar' },
      h('h1', {}, 'Console: ', h('span', { id: 'console-name' }, name)),
      h('span', { id: 'console-vm-state', className: 'state', dataset: { vm: name } }),
      h('span', { className: 'spacer' }),
      status,
      h('button', { type: 'button', id: 'ctrl-alt-del', onclick: () => state.rfb && state.rfb.sendCtrlAltDel() },
        'Ctrl-Alt-Del'),
      h('a', { className: 'button', href: '#/vms' }, 'Back')),
    screen);
  updateConsoleState();
  let RFB;
  try {
    ({ default: RFB } = await import('/vendor/novnc/core/rfb.js'));
  } catch (e) {
    status.textContent = 'noVNC is not available on this server';
    return;
  }
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = `${scheme}//${location.host}/api/v1/vms/${encodeURIComponent(name)}/console`;
  const rfb = new RFB(screen, url, { wsProtocols: ['binary', `phyllome-csrf.${state.csrf}`], shared: true });
  rfb.scaleViewport = true;
  rfb.background = '#101418';
  rfb.addEventListener('connect', () => { status.textContent = 'connected'; status.className = 'ok'; });
  rfb.addEventListener('disconnect', (e) => {
    status.textContent = e.detail.clean ? 'disconnected' : 'connection lost';
    status.className = 'error';
    if (state.rfb === rfb) state.rfb = null;
  });
  rfb.addEventListener('securityfailure', (e) => { status.textContent = `refused: ${e.detail.reason || ''}`; });
  rfb.addEventListener('desktopname', (e) => { screen.title = e.detail.name; });
  state.rfb = rfb;
}

// ---------------------------------------------------------------- start

async function boot() {
  $('#login-form').addEventListener('submit', onLogin);
  $('#logout').addEventListener('click', logout);
  $('#create-form').addEventListener('submit', onCreate);
  $('#create-cancel').addEventListener('click', () => $('#create-dialog').close());
  window.addEventListener('hashchange', route);
  try {
    enter(await api('GET', '/api/v1/session'));
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showLogin(e.message);
  }
}

boot();
