// A VM's usage: CPU, memory, disk and network over the last ten minutes
// (uPlot charts, fed by GET /api/v1/vms/NAME/stats every 2 s while shown),
// with the figures of the latest sample as text.
//
// uPlot draws on canvases and sizes its elements through element.style
// (CSSOM, which the page's CSP allows); its stylesheet is a <link> in
// index.html. Each chart is made once and then given new data in place.

import {
  html, useState, useEffect, useRef, usePoll, vmPath, isActive, bytes, perSec, percent, duration,
} from './lib.js';

const UPLOT = '/vendor/lib/uplot/dist/uPlot.esm.js';
const POLL_MS = 2000;
// What the charts span, in seconds (what the server keeps).
const WINDOW_SECS = 600;
const PLOT_HEIGHT = 150;

let uplotModule = null;
const loadUplot = () => {
  if (!uplotModule) {
    uplotModule = import(UPLOT).then((m) => m.default).catch((e) => {
      uplotModule = null;
      throw e;
    });
  }
  return uplotModule;
};

// The app's colours (app.css's custom properties), for the canvases.
function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// "#2f7a3f" with an alpha, for an area under a line.
function withAlpha(colour, a) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(colour);
  if (!m) return null;
  return `rgba(${parseInt(m[1], 16)}, ${parseInt(m[2], 16)}, ${parseInt(m[3], 16)}, ${a})`;
}

// What a chart spans at least: a VM that just started fills two minutes, not a sliver of ten.
const MIN_SPAN_SECS = 120;

// Tick steps for byte scales: powers of two below 1 KiB, then 1, 2, 5, 10, 20,
// 50, 100, 200, 500 of each unit.
const BYTE_INCRS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].concat(
  [1, 2, 3, 4].flatMap((k) => [1, 2, 5, 10, 20, 50, 100, 200, 500].map((m) => m * 1024 ** k)),
);

const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
const clockSecs = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit', second: '2-digit' });

const FORMATS = {
  percent: { value: percent, incrs: undefined },
  bytes: { value: bytes, incrs: BYTE_INCRS },
  rate: { value: perSec, incrs: BYTE_INCRS },
};

// One chart. `data` is uPlot's [times, ...series]; `ceiling` the least top
// of the y scale (the chart of an idle VM stays flat rather than zooming in
// on noise). The element with `testid` carries data-points (how many
// samples the chart has) and data-updated (the unix time of its latest).
function Chart({ testid, title, label, series, data, kind, ceiling, children }) {
  const boxRef = useRef(null);
  const figRef = useRef(null);
  const plotRef = useRef(null);
  const ceilingRef = useRef(ceiling);
  const dataRef = useRef(data);
  const [failed, setFailed] = useState(false);
  ceilingRef.current = ceiling;
  dataRef.current = data;

  const mark = (d) => {
    const fig = figRef.current;
    if (!fig) return;
    const n = d[0].length;
    fig.dataset.points = String(n);
    fig.dataset.updated = n ? String(d[0][n - 1]) : '';
  };

  // The chart: made once.
  useEffect(() => {
    let gone = false;
    let plot = null;
    let observer = null;
    loadUplot().then((UPlot) => {
      if (gone || !boxRef.current) return;
      const fmt = FORMATS[kind];
      const axis = {
        stroke: cssVar('--muted', '#5f6b66'),
        grid: { stroke: cssVar('--chart-grid', '#e8ecea'), width: 1 },
        ticks: { stroke: cssVar('--chart-grid', '#e8ecea'), width: 1, size: 4 },
        font: `11px ${getComputedStyle(document.body).fontFamily}`,
      };
      // The legend shows the latest values, or those under the pointer.
      const showLatest = (u) => {
        const n = u.data[0].length;
        if (n && u.cursor.idx == null) u.setLegend({ idx: n - 1 }, false);
      };
      const opts = {
        width: Math.max(200, boxRef.current.clientWidth),
        height: PLOT_HEIGHT,
        class: 'usage-plot',
        cursor: { drag: { x: false, y: false, setScale: false }, points: { size: 6 } },
        legend: { live: true },
        scales: {
          x: {
            time: true,
            // From the oldest sample (ten minutes at most), two minutes at least.
            range: (u, min, max) => {
              const end = max ?? Date.now() / 1000;
              const start = Math.max(end - WINDOW_SECS, Math.min(min ?? end, end - MIN_SPAN_SECS));
              return [start, end];
            },
          },
          y: {
            range: (u, min, max) => [0, Math.max(ceilingRef.current || 0, (max || 0) * 1.1, kind === 'percent' ? 1 : 1024)],
          },
        },
        axes: [
          {
            ...axis, size: 30, space: 80,
            values: (u, splits, i, space, incr) => splits.map(incr < 60 ? clockSecs : clock),
          },
          {
            ...axis, size: 72, space: 28, incrs: fmt.incrs,
            values: (u, splits) => splits.map((v) => fmt.value(v)),
          },
        ],
        series: [
          { label: 'Time', value: (u, t) => (t == null ? '—' : clockSecs(t)) },
          ...series.map((s) => {
            const stroke = cssVar(s.colour, '#2f7a3f');
            return {
              label: s.label,
              stroke,
              width: 1.5,
              dash: s.dash,
              fill: s.fill ? withAlpha(stroke, 0.12) : undefined,
              points: { show: false },
              value: (u, v) => fmt.value(v),
            };
          }),
        ],
        hooks: { setData: [showLatest], setCursor: [showLatest] },
      };
      plot = new UPlot(opts, dataRef.current, boxRef.current);
      plotRef.current = plot;
      showLatest(plot);
      const wrap = plot.root.querySelector('.u-wrap');
      if (wrap) {
        wrap.setAttribute('role', 'img');
        wrap.setAttribute('aria-label', label);
      }
      mark(dataRef.current);
      observer = new ResizeObserver(() => {
        const w = boxRef.current ? boxRef.current.clientWidth : 0;
        if (w > 0 && plot && Math.abs(w - plot.width) > 1) plot.setSize({ width: w, height: PLOT_HEIGHT });
      });
      observer.observe(boxRef.current);
    }).catch(() => { if (!gone) setFailed(true); });
    return () => {
      gone = true;
      if (observer) observer.disconnect();
      plotRef.current = null;
      if (plot) plot.destroy();
    };
  }, []);

  // New samples: the same chart, new data.
  useEffect(() => {
    if (!plotRef.current) return;
    plotRef.current.setData(data);
    mark(data);
  }, [data]);

  const titleId = `${testid}-title`;
  return html`<figure class="usage-card" data-testid=${testid} id=${testid} ref=${figRef} aria-labelledby=${titleId}>
    <figcaption>
      <h3 id=${titleId}>${title}</h3>
      <div class="usage-now">${children}</div>
    </figcaption>
    ${failed ? html`<p class="error">uPlot is not available on this server: no chart.</p>` : null}
    <div class="usage-plot-box" ref=${boxRef}></div>
  </figure>`;
}

// The points as uPlot's columns: times, then one array per key.
function columns(points, keys) {
  return [points.map((p) => p.t), ...keys.map((k) => points.map((p) => (p[k] === undefined ? null : p[k])))];
}

// "the guest reports…" -> "The guest reports….".
const sentence = (t) => `${t.charAt(0).toUpperCase()}${t.slice(1)}${/[.!?]$/.test(t) ? '' : '.'}`;

function Figure({ label, value, id }) {
  return html`<span class="figure"><span class="figure-label">${label}</span> <span class="figure-value" id=${id}>${value}</span></span>`;
}

export function UsagePanel({ name, vm }) {
  const active = isActive(vm);
  const { data, error } = usePoll(active ? `${vmPath(name)}/stats` : null, POLL_MS);
  const cols = useColumns(data);

  if (!vm) return html`<p class="hint">Reading…</p>`;
  if (!active) {
    return html`<div id="usage" data-testid="usage">
      <p class="empty-note" id="usage-not-running" data-testid="usage-not-running">
        ${name} is ${vm.state || 'not running'}: its usage shows while it runs (this page starts showing it once it does).</p>
    </div>`;
  }
  const now = data ? data.current : null;
  const vcpus = (now && now.vcpus) || vm.vcpus || 1;
  let status = null;
  if (error && error.status === 404) status = html`<p class="error" id="usage-error">There is no VM named ${name} (any more).</p>`;
  else if (error && error.status === 503) status = html`<p class="hint" id="usage-waiting">Measuring…</p>`;
  else if (error) status = html`<p class="error" id="usage-error">${error.message}</p>`;
  else if (!data) status = html`<p class="hint" id="usage-waiting">Reading the usage…</p>`;

  const m = now ? now.memory : {};
  const d = now ? now.disk : {};
  const n = now ? now.network : {};
  const steal = now && now.steal_percent;
  return html`<div id="usage" data-testid="usage">
    <div class="usage-head">
      <span class="hint">The last 10 minutes, one sample a second; updated every 2 s.</span>
      <span class="spacer"></span>
      ${now ? html`<span class="hint" id="usage-uptime">Up ${duration(now.uptime_secs)} · ${vcpus} vCPU${vcpus === 1 ? '' : 's'}</span>` : null}
    </div>
    ${status}
    ${m && m.note ? html`<p class="note" id="usage-note" data-testid="usage-note" role="note">${sentence(m.note)}</p>` : null}
    <div class="usage-grid">
      <${Chart} testid="usage-cpu-chart" title="CPU" kind="percent" ceiling=${100 * vcpus}
        label=${`CPU use of ${name} over the last 10 minutes, in percent of one host CPU`}
        series=${[{ label: 'CPU', colour: '--chart-1', fill: true }]} data=${cols.cpu}>
        <${Figure} label="now" value=${percent(now && now.cpu_percent)} id="usage-cpu-now" />
        ${steal ? html`<${Figure} label="steal" value=${percent(steal)} id="usage-steal-now" />` : null}
        <span class="hint">100 % = one host CPU</span>
      </${Chart}>
      <${Chart} testid="usage-memory-chart" title="Memory" kind="bytes" ceiling=${0}
        label=${`Memory of ${name} over the last 10 minutes: used by the guest, assigned, and the host's resident memory for it`}
        series=${[
          { label: 'Guest used', colour: '--chart-1', fill: true },
          { label: 'Assigned', colour: '--chart-3', dash: [5, 4] },
          { label: 'Host RSS', colour: '--chart-2' },
        ]} data=${cols.memory}>
        <${Figure} label="used" value=${bytes(m.used_bytes)} id="usage-memory-used" />
        <${Figure} label="assigned" value=${bytes(m.assigned_bytes)} id="usage-memory-assigned" />
        <${Figure} label="host RSS" value=${bytes(m.host_rss_bytes)} id="usage-memory-rss" />
      </${Chart}>
      <${Chart} testid="usage-disk-chart" title="Disk" kind="rate" ceiling=${0}
        label=${`Disk reads and writes of ${name} over the last 10 minutes, in bytes per second`}
        series=${[{ label: 'Read', colour: '--chart-2' }, { label: 'Write', colour: '--chart-4' }]} data=${cols.disk}>
        <${Figure} label="read" value=${perSec(d.read_bytes_per_sec)} id="usage-disk-read" />
        <${Figure} label="write" value=${perSec(d.write_bytes_per_sec)} id="usage-disk-write" />
        ${now ? html`<span class="hint">${bytes(d.read_bytes)} read, ${bytes(d.written_bytes)} written since start</span>` : null}
      </${Chart}>
      <${Chart} testid="usage-network-chart" title="Network" kind="rate" ceiling=${0}
        label=${`Network traffic of ${name} over the last 10 minutes, in bytes per second`}
        series=${[{ label: 'Received', colour: '--chart-2' }, { label: 'Sent', colour: '--chart-4' }]} data=${cols.network}>
        <${Figure} label="in" value=${perSec(n.rx_bytes_per_sec)} id="usage-net-rx" />
        <${Figure} label="out" value=${perSec(n.tx_bytes_per_sec)} id="usage-net-tx" />
        ${now ? html`<span class="hint">${bytes(n.rx_bytes)} in, ${bytes(n.tx_bytes)} out since start</span>` : null}
      </${Chart}>
    </div>
  </div>`;
}

// The charts' columns, made again only when an answer came (at most the
// server's 600 points: nothing is appended here).
function useColumns(data) {
  const last = useRef({ data: undefined, cols: null });
  if (last.current.data !== data || !last.current.cols) {
    const p = data && Array.isArray(data.points) ? data.points.slice(-WINDOW_SECS) : [];
    last.current = {
      data,
      cols: {
        cpu: columns(p, ['cpu_percent']),
        memory: columns(p, ['memory_used_bytes', 'memory_assigned_bytes', 'host_rss_bytes']),
        disk: columns(p, ['disk_read_bytes_per_sec', 'disk_write_bytes_per_sec']),
        network: columns(p, ['net_rx_bytes_per_sec', 'net_tx_bytes_per_sec']),
      },
    };
  }
  return last.current.cols;
}
