//! The server's view of what the VMs use: one thread takes a sample every
//! second (one libvirt call for all running VMs, see `phyllome_engine::stats`),
//! keeps the latest report for `GET /api/v1/stats` and `/metrics`, and the
//! last ten minutes of each VM in a fixed ring for the UI's charts.
//!
//! Memory stays bounded: a ring holds at most [`RING_POINTS`] points of 40
//! bytes, and the ring of a VM that is gone (or stopped) for longer than the
//! window is dropped.

use phyllome_engine::stats::{self, HostFacts, Sample, Sampler, StatsReport, VmStats};
use phyllome_libvirt::Libvirt;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Ten minutes at one sample a second.
pub const RING_POINTS: usize = 600;

/// One chart point, as compact as it can be: figures are f32 (NaN: unknown).
#[derive(Debug, Clone, Copy)]
struct Point {
    /// Unix milliseconds.
    t_ms: u64,
    v: [f32; 8],
}

const FIELDS: [&str; 8] = [
    "cpu_percent",
    "memory_used_bytes",
    "memory_assigned_bytes",
    "host_rss_bytes",
    "disk_read_bytes_per_sec",
    "disk_write_bytes_per_sec",
    "net_rx_bytes_per_sec",
    "net_tx_bytes_per_sec",
];

impl Point {
    fn of(t_ms: u64, s: &VmStats) -> Point {
        let f = |v: Option<f64>| v.map_or(f32::NAN, |v| v as f32);
        let b = |v: Option<u64>| v.map_or(f32::NAN, |v| v as f32);
        Point {
            t_ms,
            v: [
                f(s.cpu_percent),
                b(s.memory.used_bytes),
                b(s.memory.assigned_bytes),
                b(s.memory.host_rss_bytes),
                f(s.disk.read_bytes_per_sec),
                f(s.disk.write_bytes_per_sec),
                f(s.network.rx_bytes_per_sec),
                f(s.network.tx_bytes_per_sec),
            ],
        }
    }
}

impl Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(FIELDS.len() + 1))?;
        m.serialize_entry("t", &(self.t_ms as f64 / 1000.0))?;
        for (k, v) in FIELDS.iter().zip(self.v) {
            let v = f64::from(v);
            if v.is_nan() {
                m.serialize_entry(k, &None::<u64>)?;
            } else if *k == "cpu_percent" {
                m.serialize_entry(k, &((v * 10.0).round() / 10.0))?;
            } else {
                // Bytes in whole units (an f32 keeps 7 digits: a chart needs no more).
                m.serialize_entry(k, &(v.round().max(0.0) as u64))?;
            }
        }
        m.end()
    }
}

/// `GET /api/v1/vms/{name}/stats`: a VM's last ten minutes.
#[derive(Serialize, utoipa::ToSchema)]
pub struct History {
    pub interval_secs: f64,
    /// Oldest first: `t` (Unix seconds, to the millisecond) and one figure a field (null: unknown).
    #[schema(value_type = Vec<Object>)]
    points: Vec<Point>,
    /// Its figures now; null when it is not running.
    pub current: Option<VmStats>,
}

#[derive(Default)]
struct State {
    facts: Option<HostFacts>,
    sample: Option<Arc<Sample>>,
    report: Option<Arc<StatsReport>>,
    rings: HashMap<String, VecDeque<Point>>,
    /// libvirtd could not be reached at the last try (no connection, or it went away).
    unreachable: bool,
}

/// How old the latest sample may be while libvirtd answers, slowly: a VM that is
/// killed holds libvirt's lock on it for as long as its QEMU takes to die, and the
/// statistics of every VM wait for it. Seconds of that must not turn a scrape
/// into 503; a libvirtd that answers nothing for this long has no current figures.
const STALE_AFTER: Duration = Duration::from_secs(30);

/// The samples the server keeps.
pub struct Hub {
    state: Mutex<State>,
    pub interval: Duration,
}

impl Hub {
    /// Starts the sampling thread on its own libvirt connection.
    pub fn start(uri: &str, interval: Duration) -> Arc<Hub> {
        let hub = Arc::new(Hub { state: Mutex::new(State::default()), interval });
        let (uri, h) = (uri.to_string(), Arc::clone(&hub));
        let _ = std::thread::Builder::new().name("stats".into()).spawn(move || h.run(&uri));
        hub
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, uri: &str) {
        let mut conn: Option<(Libvirt, Sampler)> = None;
        let mut prev: Option<Sample> = None;
        let mut next = std::time::Instant::now();
        loop {
            next += self.interval;
            if conn.as_ref().is_none_or(|(lv, _)| !lv.is_alive()) {
                prev = None;
                conn = Libvirt::connect(uri).ok().and_then(|lv| Sampler::new(&lv).ok().map(|s| (lv, s)));
                if conn.is_none() {
                    self.lock().unreachable = true;
                }
            }
            if let Some((lv, sampler)) = conn.as_mut() {
                let began = std::time::Instant::now();
                let sampled = sampler.sample(lv);
                if began.elapsed() > self.interval {
                    tracing::debug!(ms = began.elapsed().as_millis() as u64, ok = sampled.is_ok(), "slow stats sample");
                }
                match sampled {
                    Ok(cur) => {
                        let report = stats::report(&sampler.host, prev.as_ref(), &cur);
                        self.record(&sampler.host, &cur, report);
                        prev = Some(cur);
                    }
                    Err(e) => {
                        // One failed sample (libvirt's own retries and fallbacks are behind it) keeps the
                        // connection and the previous sample: only a connection that died is made again.
                        tracing::debug!(error = %e, "stats sample failed");
                        let gone = phyllome_engine::errors::Classify::kind(&e)
                            == phyllome_engine::errors::ErrorKind::Unavailable;
                        if gone || !lv.is_alive() {
                            self.lock().unreachable = true;
                            conn = None;
                        }
                    }
                }
            }
            let now = std::time::Instant::now();
            match next.checked_duration_since(now) {
                Some(wait) => std::thread::sleep(wait),
                // A slow libvirt: a whole interval from now rather than a catch-up
                // sample at once, whose rates would stand on a few milliseconds.
                None => {
                    std::thread::sleep(self.interval);
                    next = std::time::Instant::now();
                }
            }
        }
    }

    fn record(&self, facts: &HostFacts, cur: &Sample, report: StatsReport) {
        let window_ms = RING_POINTS as u64 * self.interval.as_millis().max(1000) as u64;
        let mut st = self.lock();
        if report.interval_secs.is_some() {
            for v in &report.vms {
                let ring = st.rings.entry(v.name.clone()).or_insert_with(|| VecDeque::with_capacity(RING_POINTS));
                if ring.len() == RING_POINTS {
                    ring.pop_front();
                }
                ring.push_back(Point::of(cur.unix_ms, v));
            }
        }
        let now = cur.unix_ms;
        st.rings.retain(|_, r| r.back().is_some_and(|p| now.saturating_sub(p.t_ms) <= window_ms));
        st.facts = Some(facts.clone());
        st.unreachable = false;
        st.sample = Some(Arc::new(cur.clone()));
        st.report = Some(Arc::new(report));
    }

    /// How old the latest sample may be and still be shown: once libvirtd cannot
    /// be reached, five intervals (figures from then would pass for current ones);
    /// while it answers, however slowly, [`STALE_AFTER`].
    fn max_age(&self, st: &State) -> Duration {
        if st.unreachable {
            (self.interval * 5).max(Duration::from_secs(5))
        } else {
            STALE_AFTER.max(self.interval * 5)
        }
    }

    fn fresh(&self, st: &State) -> bool {
        st.sample.as_ref().is_some_and(|s| s.taken.elapsed() <= self.max_age(st))
    }

    /// The latest report (None before the first sample, or when it is stale).
    pub fn report(&self) -> Option<Arc<StatsReport>> {
        let st = self.lock();
        if !self.fresh(&st) {
            return None;
        }
        st.report.clone()
    }

    /// A VM's ring and current figures; None when nothing is known of it (it may still exist).
    pub fn history(&self, name: &str) -> Option<History> {
        let st = self.lock();
        let current = if self.fresh(&st) {
            st.report.as_ref().and_then(|r| r.vms.iter().find(|v| v.name == name).cloned())
        } else {
            None
        };
        let ring = st.rings.get(name);
        if ring.is_none() && current.is_none() {
            return None;
        }
        Some(History {
            interval_secs: self.interval.as_secs_f64(),
            points: ring.map(|r| r.iter().copied().collect()).unwrap_or_default(),
            current,
        })
    }

    /// An empty history, for a VM that exists but was not seen running.
    pub fn empty(&self) -> History {
        History { interval_secs: self.interval.as_secs_f64(), points: Vec::new(), current: None }
    }

    /// Points kept in all rings (for the bench's bound).
    pub fn points(&self) -> usize {
        self.lock().rings.values().map(VecDeque::len).sum()
    }

    /// `/metrics`: the latest sample in the Prometheus text format (None before
    /// the first, or when it is stale).
    pub fn metrics(&self) -> Option<String> {
        let (facts, sample) = {
            let st = self.lock();
            if !self.fresh(&st) {
                return None;
            }
            (st.facts.clone()?, st.sample.clone()?)
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Metrics { facts, sample }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).ok()?;
        Some(out)
    }
}

/// The classic Prometheus text format (0.0.4) of prometheus-client's
/// OpenMetrics text, for scrapers that do not ask for OpenMetrics (promtool,
/// curl, older Prometheus). The two differ, for counters and gauges without
/// units or exemplars, in the name a counter's HELP and TYPE lines carry
/// (`x_total`, not `x`) and in OpenMetrics' `# EOF`.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta.and_then(|(p, rest)| rest.split_once(' ').map(|(name, tail)| (p, name, tail))) {
            Some((p, name, tail)) if counters.contains(name) => {
                out.push_str(&format!("{p}{name}_total {tail}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A label value escaped as the text format wants (`\\`, `\"`, `\n`):
/// prometheus-client 0.24 writes label values as they are, and a VM name may
/// hold a quote.
struct Escaped<'a>(&'a str);

impl prometheus_client::encoding::EncodeLabelValue for Escaped<'_> {
    fn encode(&self, enc: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => enc.write_str("\\\\")?,
                '"' => enc.write_str("\\\"")?,
                '\n' => enc.write_str("\\n")?,
                c => enc.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// The metrics of one sample. Names follow Prometheus' conventions: base
/// units (seconds, bytes) in the name, counters end in `_total` (the encoder
/// adds it), and the only labels are `host` and `vm`.
#[derive(Debug)]
struct Metrics {
    facts: HostFacts,
    sample: Arc<Sample>,
}

impl prometheus_client::collector::Collector for Metrics {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        use stats::Counters;
        let host = self.facts.hostname.as_str();
        let vms = &self.sample.vms;
        type Get = fn(&Counters) -> Option<f64>;
        let per_vm: [(&str, &str, prometheus_client::metrics::MetricType, Get); 15] = [
            ("phyllome_vm_cpu_seconds", "CPU time of the VM's QEMU process", Counter, |c| {
                c.cpu_ns.map(|n| n as f64 / 1e9)
            }),
            ("phyllome_vm_cpu_steal_seconds", "time the VM's vCPUs waited for a host CPU", Counter, |c| {
                c.steal_ns.map(|n| n as f64 / 1e9)
            }),
            ("phyllome_vm_vcpus", "vCPUs the VM has", Gauge, |c| c.vcpus.map(|v| v as f64)),
            ("phyllome_vm_memory_assigned_bytes", "memory the VM has now (its balloon's size)", Gauge, |c| {
                c.assigned_kib.map(|k| (k * 1024) as f64)
            }),
            (
                "phyllome_vm_memory_used_bytes",
                "memory the guest uses, caches aside (from its balloon driver)",
                Gauge,
                |c| c.used_kib().map(|k| (k * 1024) as f64),
            ),
            ("phyllome_vm_memory_available_bytes", "the guest's total memory (from its balloon driver)", Gauge, |c| {
                c.available_kib.map(|k| (k * 1024) as f64)
            }),
            ("phyllome_vm_memory_host_rss_bytes", "resident memory of the VM's QEMU process on the host", Gauge, |c| {
                c.rss_kib.map(|k| (k * 1024) as f64)
            }),
            ("phyllome_vm_disk_read_bytes", "bytes read from the VM's disks", Counter, |c| {
                c.disk_read_bytes.map(|v| v as f64)
            }),
            ("phyllome_vm_disk_written_bytes", "bytes written to the VM's disks", Counter, |c| {
                c.disk_write_bytes.map(|v| v as f64)
            }),
            ("phyllome_vm_disk_read_requests", "read requests to the VM's disks", Counter, |c| {
                c.disk_read_reqs.map(|v| v as f64)
            }),
            ("phyllome_vm_disk_write_requests", "write requests to the VM's disks", Counter, |c| {
                c.disk_write_reqs.map(|v| v as f64)
            }),
            ("phyllome_vm_network_receive_bytes", "bytes the VM's interfaces received", Counter, |c| {
                Some(c.net_rx_bytes as f64)
            }),
            ("phyllome_vm_network_transmit_bytes", "bytes the VM's interfaces sent", Counter, |c| {
                Some(c.net_tx_bytes as f64)
            }),
            ("phyllome_vm_start_time_seconds", "when the VM's QEMU process started (Unix time)", Gauge, |c| {
                c.started_unix.map(|s| s as f64)
            }),
            (
                "phyllome_vm_stuck",
                "1 when the VM's QEMU has not answered libvirt for over a second (stopped or hung): its disk \
                 counters and QEMU's RSS are left out until it answers",
                Gauge,
                |c| Some(if c.monitor == phyllome_libvirt::Monitor::Stuck { 1.0 } else { 0.0 }),
            ),
        ];
        for (name, help, kind, get) in per_vm {
            let values: Vec<(&str, f64)> = vms.iter().filter_map(|c| get(c).map(|v| (c.name.as_str(), v))).collect();
            if values.is_empty() {
                continue;
            }
            let mut m = enc.encode_descriptor(name, help, None, kind)?;
            for (vm, v) in values {
                let labels = [("host", Escaped(host)), ("vm", Escaped(vm))];
                let f = m.encode_family(&labels)?;
                if matches!(kind, Counter) {
                    ConstCounter::new(v).encode(f)?;
                } else {
                    ConstGauge::new(v).encode(f)?;
                }
            }
        }
        let running = vms.iter().filter(|c| c.state == "running").count() as f64;
        let committed = vms.iter().filter_map(|c| c.assigned_kib).sum::<u64>() as f64 * 1024.0;
        let vcpus = vms.iter().filter_map(|c| c.vcpus).sum::<u64>() as f64;
        let per_host: [(&str, &str, f64); 5] = [
            ("phyllome_host_vms_running", "VMs running", running),
            ("phyllome_host_memory_bytes", "the host's memory", self.facts.memory_bytes as f64),
            ("phyllome_host_memory_committed_bytes", "memory the running VMs have", committed),
            ("phyllome_host_cpus", "the host's logical CPUs", self.facts.cpus as f64),
            ("phyllome_host_vcpus_committed", "vCPUs of the running VMs", vcpus),
        ];
        for (name, help, v) in per_host {
            let mut m = enc.encode_descriptor(name, help, None, Gauge)?;
            ConstGauge::new(v).encode(m.encode_family(&[("host", Escaped(host))])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use phyllome_engine::stats::Counters;
    use std::time::Instant;

    fn hub() -> Hub {
        Hub { state: Mutex::new(State::default()), interval: Duration::from_secs(1) }
    }

    fn counters(name: &str, cpu_s: u64) -> Counters {
        Counters {
            name: name.into(),
            uuid: format!("u-{name}"),
            state: "running",
            cpu_ns: Some(cpu_s * 1_000_000_000),
            vcpus: Some(2),
            assigned_kib: Some(1 << 20),
            rss_kib: Some(1 << 18),
            disk_write_bytes: Some(cpu_s * 1000),
            ..Default::default()
        }
    }

    fn feed(h: &Hub, secs: u64, names: &[&str]) {
        let facts = HostFacts { hostname: "h\"1".into(), memory_bytes: 8 << 30, cpus: 4 };
        let t0 = Instant::now();
        let mut prev: Option<Sample> = None;
        for i in 0..secs {
            let cur = Sample {
                taken: t0 + Duration::from_secs(i),
                unix: 1_000_000 + i,
                unix_ms: (1_000_000 + i) * 1000,
                vms: names.iter().map(|n| counters(n, i)).collect(),
            };
            let r = stats::report(&facts, prev.as_ref(), &cur);
            h.record(&facts, &cur, r);
            prev = Some(cur);
        }
    }

    #[test]
    fn rings_are_bounded_and_forget_vms_that_are_gone() {
        let h = hub();
        feed(&h, 2000, &["a", "b"]);
        assert_eq!(h.points(), 2 * RING_POINTS, "ten minutes a VM, whatever the uptime");
        let hist = h.history("a").unwrap();
        assert_eq!(hist.points.len(), RING_POINTS);
        assert_eq!(hist.points[0].t_ms, (1_000_000 + 2000 - RING_POINTS as u64) * 1000);
        let json = serde_json::to_value(&hist).unwrap();
        assert_eq!(json["points"][0]["cpu_percent"], 100.0);
        assert_eq!(json["points"][0]["memory_used_bytes"], serde_json::Value::Null, "unknown stays null");
        assert_eq!(json["points"][0]["memory_assigned_bytes"], 1u64 << 30, "bytes are whole numbers");
        assert_eq!(json["current"]["name"], "a");
        // b stops (absent from later samples): its ring goes once the window has passed.
        let facts = HostFacts { hostname: "h".into(), memory_bytes: 1, cpus: 1 };
        let base = Instant::now();
        let mk = |i: u64| Sample {
            taken: base + Duration::from_secs(i) - Duration::from_secs(2000 + RING_POINTS as u64 + 2),
            unix: 1_000_000 + i,
            unix_ms: (1_000_000 + i) * 1000,
            vms: vec![counters("a", i)],
        };
        let mut prev = mk(1999);
        for i in 2000..2000 + RING_POINTS as u64 + 2 {
            let s = mk(i);
            let r = stats::report(&facts, Some(&prev), &s);
            h.record(&facts, &s, r);
            prev = s;
        }
        assert!(h.history("b").is_none(), "the ring of a VM gone for the window is dropped");
        assert_eq!(h.history("a").unwrap().points.len(), RING_POINTS, "a's ring goes on");
        assert_eq!(h.points(), RING_POINTS);
        assert!(h.report().is_some() && h.metrics().is_some());
        // libvirtd stopped answering a minute ago: no figures pass for current ones.
        if let Some(then) = Instant::now().checked_sub(Duration::from_secs(60)) {
            let s = Sample { taken: then, ..mk(2000 + RING_POINTS as u64 + 2) };
            let r = stats::report(&facts, None, &s);
            h.record(&facts, &s, r);
            assert!(h.report().is_none() && h.metrics().is_none(), "a stale sample is not served");
            assert!(h.history("a").unwrap().current.is_none(), "the points stay, without current figures");
        }
    }

    #[test]
    fn metrics_have_conventional_names_and_escaped_labels() {
        let h = hub();
        assert!(h.metrics().is_none(), "nothing before the first sample");
        feed(&h, 3, &["web", "a\\b\nc"]);
        let m = h.metrics().unwrap();
        assert!(m.contains("# TYPE phyllome_vm_cpu_seconds counter"), "{m}");
        assert!(m.contains("phyllome_vm_cpu_seconds_total{host=\"h\\\"1\",vm=\"web\"} 2.0"), "{m}");
        assert!(m.contains("phyllome_vm_disk_written_bytes_total{host=\"h\\\"1\",vm=\"web\"} 2000.0"), "{m}");
        assert!(m.contains("phyllome_host_vcpus_committed{host=\"h\\\"1\"} 4.0"), "{m}");
        assert!(!m.contains("phyllome_vm_memory_used_bytes"), "no made-up figure for a silent guest:\n{m}");
        assert!(m.contains("phyllome_vm_vcpus{host=\"h\\\"1\",vm=\"a\\\\b\\nc\"} 2.0"), "{m}");
        assert!(m.trim_end().ends_with("# EOF"));
        let c = classic_text(&m);
        assert!(c.contains("# HELP phyllome_vm_cpu_seconds_total CPU time"), "{c}");
        assert!(c.contains("# TYPE phyllome_vm_cpu_seconds_total counter\n"), "{c}");
        assert!(c.contains("# TYPE phyllome_vm_vcpus gauge\n"), "gauges keep their names:\n{c}");
        assert!(!c.contains("# EOF"));
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(samples(&c), samples(&m), "the samples are the same");
    }

    #[test]
    fn a_slow_libvirtd_keeps_the_last_sample_and_an_unreachable_one_does_not() {
        let h = hub();
        let facts = HostFacts { hostname: "h".into(), memory_bytes: 1, cpus: 1 };
        let Some(then) = Instant::now().checked_sub(Duration::from_secs(8)) else { return };
        let s = Sample { taken: then, unix: 1, unix_ms: 1000, vms: vec![counters("a", 1)] };
        h.record(&facts, &s, stats::report(&facts, None, &s));
        assert!(h.metrics().is_some() && h.report().is_some(), "8 s old while libvirtd answers slowly: served");
        h.lock().unreachable = true;
        assert!(h.metrics().is_none() && h.report().is_none(), "8 s old once libvirtd is gone: not current");
    }

    #[test]
    fn a_stuck_vm_is_a_series_of_its_own_and_the_others_are_served() {
        let h = hub();
        let facts = HostFacts { hostname: "h".into(), memory_bytes: 8 << 30, cpus: 4 };
        let stuck = Counters {
            monitor: phyllome_libvirt::Monitor::Stuck,
            disk_write_bytes: None,
            rss_kib: None,
            ..counters("frozen", 3)
        };
        let cur = Sample { taken: Instant::now(), unix: 1, unix_ms: 1000, vms: vec![counters("web", 3), stuck] };
        h.record(&facts, &cur, stats::report(&facts, None, &cur));
        let m = h.metrics().unwrap();
        assert!(m.contains("phyllome_vm_stuck{host=\"h\",vm=\"frozen\"} 1"), "{m}");
        assert!(m.contains("phyllome_vm_stuck{host=\"h\",vm=\"web\"} 0"), "{m}");
        assert!(m.contains("phyllome_vm_disk_written_bytes_total{host=\"h\",vm=\"web\"} 3000.0"), "{m}");
        assert!(!m.contains("phyllome_vm_disk_written_bytes_total{host=\"h\",vm=\"frozen\"}"), "no made-up zero:\n{m}");
        assert_eq!(h.report().unwrap().vms.iter().find(|v| v.name == "frozen").unwrap().state, "stuck");
    }
}
