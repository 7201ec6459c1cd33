//! What the VMs use: CPU, memory, disk and network, per VM and for the host.
//!
//! Every running VM's counters come from one libvirt call (the bulk stats,
//! see `phyllome_libvirt::stats`); rates need two samples, so a report is the
//! difference of two [`Sample`]s. The arithmetic is pure ([`counters`],
//! [`report`]); [`Sampler::sample`] is the I/O.

use crate::vm::{Result, VmError};
use phyllome_libvirt::{DomainStats, Libvirt, Monitor, Value};
use serde::Serialize;
use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The raw counters of one running VM, as libvirt gave them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    pub name: String,
    pub uuid: String,
    /// `running`, `paused` or `other`.
    pub state: &'static str,
    /// CPU time of the whole QEMU process (vCPUs and emulator), ns.
    pub cpu_ns: Option<u64>,
    /// Time the vCPU threads were runnable but not running (`vcpu.N.delay`:
    /// what the guest sees as steal time), ns, summed over the vCPUs.
    pub steal_ns: Option<u64>,
    pub vcpus: Option<u64>,
    /// The balloon's current size: memory the VM has now, KiB.
    pub assigned_kib: Option<u64>,
    /// From the guest's balloon driver, when it reports (KiB).
    pub available_kib: Option<u64>,
    pub usable_kib: Option<u64>,
    pub unused_kib: Option<u64>,
    /// Resident memory of the QEMU process on the host, KiB.
    pub rss_kib: Option<u64>,
    /// Disk counters, from QEMU: None when it did not answer for this sample.
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
    pub disk_read_reqs: Option<u64>,
    pub disk_write_reqs: Option<u64>,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// When its QEMU process started (Unix seconds; local hosts only).
    pub started_unix: Option<u64>,
    /// Whether its QEMU answered for this sample (see `phyllome_libvirt::Monitor`).
    pub monitor: Monitor,
}

impl Counters {
    /// What the guest uses, caches aside: the balloon driver's available less
    /// usable (or less unused, from drivers that give no usable). None without a driver.
    pub fn used_kib(&self) -> Option<u64> {
        match (self.available_kib, self.usable_kib, self.unused_kib) {
            (Some(a), Some(u), _) | (Some(a), None, Some(u)) => Some(a.saturating_sub(u)),
            _ => None,
        }
    }
}

/// Reads libvirt's flat field list (`cpu.time`, `block.0.wr.bytes`...) into [`Counters`].
pub fn counters(d: &DomainStats) -> Counters {
    let mut c = Counters {
        name: d.name.clone(),
        uuid: d.uuid.clone(),
        state: "other",
        monitor: d.monitor,
        ..Default::default()
    };
    let mut steal: Option<u64> = None;
    let answered = d.monitor == Monitor::Answered;
    let add = |sum: &mut Option<u64>, v: u64| *sum = Some(sum.unwrap_or(0) + v);
    if answered {
        // Zero until a disk says otherwise (a VM may have none).
        c.disk_read_bytes = Some(0);
        c.disk_write_bytes = Some(0);
        c.disk_read_reqs = Some(0);
        c.disk_write_reqs = Some(0);
    }
    for (key, value) in &d.fields {
        let v = value.as_u64();
        match key.as_str() {
            // virDomainState: 1 running, 3 paused.
            "state.state" => {
                c.state = match value {
                    Value::Int(1) | Value::UInt(1) => "running",
                    Value::Int(3) | Value::UInt(3) => "paused",
                    _ => "other",
                }
            }
            "cpu.time" => c.cpu_ns = v,
            "vcpu.current" => c.vcpus = v,
            "balloon.current" => c.assigned_kib = v,
            "balloon.available" => c.available_kib = v,
            "balloon.usable" => c.usable_kib = v,
            "balloon.unused" => c.unused_kib = v,
            "balloon.rss" => c.rss_kib = v,
            _ => {
                let Some(v) = v else { continue };
                let mut parts = key.splitn(3, '.');
                let (Some(group), Some(index), Some(field)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                if index.parse::<u32>().is_err() {
                    continue;
                }
                match (group, field) {
                    ("vcpu", "delay") => steal = Some(steal.unwrap_or(0) + v),
                    ("block", "rd.bytes") if answered => add(&mut c.disk_read_bytes, v),
                    ("block", "wr.bytes") if answered => add(&mut c.disk_write_bytes, v),
                    ("block", "rd.reqs") if answered => add(&mut c.disk_read_reqs, v),
                    ("block", "wr.reqs") if answered => add(&mut c.disk_write_reqs, v),
                    ("net", "rx.bytes") => c.net_rx_bytes += v,
                    ("net", "tx.bytes") => c.net_tx_bytes += v,
                    _ => {}
                }
            }
        }
    }
    c.steal_ns = steal;
    c
}

/// The host's fixed facts, read once.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostFacts {
    pub hostname: String,
    pub memory_bytes: u64,
    pub cpus: u32,
}

/// Every running VM's counters at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    pub taken: Instant,
    /// Unix seconds.
    pub unix: u64,
    /// Unix milliseconds (charts want points a second apart to stay apart).
    pub unix_ms: u64,
    pub vms: Vec<Counters>,
}

/// CPU, memory, disk and network of one VM. Rates are per second over the
/// interval between two samples; they are absent in a VM's first sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmStats {
    pub name: String,
    /// `running`, `paused`, `shut off`, `other`, or `stuck`: running, but its QEMU has not
    /// answered libvirt for over a second (stopped or hung), so only what libvirt knows
    /// without it is given (CPU time, memory assigned, network).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub state: &'static str,
    pub vcpus: Option<u64>,
    pub uptime_secs: Option<u64>,
    /// CPU used, in percent of one host CPU (a busy 2-vCPU guest shows 200).
    pub cpu_percent: Option<f64>,
    /// Time its vCPUs waited for a host CPU, in percent of one host CPU (the guest's steal).
    pub steal_percent: Option<f64>,
    pub memory: MemoryStats,
    pub disk: DiskStats,
    pub network: NetworkStats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryStats {
    /// What the VM has now (the balloon's size).
    pub assigned_bytes: Option<u64>,
    /// In use by the guest (not counting its caches), from the balloon driver.
    pub used_bytes: Option<u64>,
    /// What the guest sees as its total memory, from the balloon driver.
    pub available_bytes: Option<u64>,
    /// What the host really spends: the resident memory of the VM's QEMU.
    pub host_rss_bytes: Option<u64>,
    /// Why `used_bytes` is missing, when it is.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub note: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DiskStats {
    pub read_bytes_per_sec: Option<f64>,
    pub write_bytes_per_sec: Option<f64>,
    pub read_iops: Option<f64>,
    pub write_iops: Option<f64>,
    /// Totals since the VM started (absent when its QEMU did not answer).
    pub read_bytes: Option<u64>,
    pub written_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkStats {
    pub rx_bytes_per_sec: Option<f64>,
    pub tx_bytes_per_sec: Option<f64>,
    /// Totals since the VM started.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The host as the VMs load it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostStats {
    pub hostname: String,
    pub vms_running: usize,
    pub memory_bytes: u64,
    /// Memory the running VMs have (their balloons' sizes), against `memory_bytes`.
    pub memory_committed_bytes: u64,
    pub cpus: u32,
    /// vCPUs of the running VMs, against `cpus`.
    pub vcpus_committed: u64,
    /// The CPU the VMs use together, in percent of one host CPU.
    pub cpu_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsReport {
    /// Unix seconds of the sample.
    pub at: u64,
    /// Seconds between the two samples the rates come from.
    pub interval_secs: Option<f64>,
    pub host: HostStats,
    pub vms: Vec<VmStats>,
}

pub const STUCK: &str = "its QEMU has not answered libvirt for over a second (stopped or hung): CPU, memory assigned and network are shown, disk figures and QEMU's RSS are not";

pub const NO_GUEST_MEMORY: &str = "the guest reports no memory use: its balloon driver has not reported yet (it does every 10 s), or it has none (Windows needs virtio-win's), or no balloon device";

/// Per second, when the counter did not go back (a VM that restarted starts from 0).
fn rate(prev: Option<u64>, cur: Option<u64>, secs: f64) -> Option<f64> {
    let (p, c) = (prev?, cur?);
    (c >= p && secs > 0.0).then(|| (c - p) as f64 / secs)
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The stats of one VM from its counters now and, for rates, `secs` ago.
pub fn vm_stats(prev: Option<&Counters>, cur: &Counters, secs: f64, now_unix: u64) -> VmStats {
    let p = prev.filter(|p| p.uuid == cur.uuid);
    let ns_percent = |a: Option<u64>, b: Option<u64>| rate(a, b, secs).map(|ns| round2(ns / 1e7));
    let per_sec = |a: Option<u64>, b: Option<u64>| rate(a, b, secs).map(round2);
    let kib = |v: Option<u64>| v.map(|k| k * 1024);
    let used_kib = cur.used_kib();
    VmStats {
        name: cur.name.clone(),
        state: if cur.monitor == Monitor::Stuck { "stuck" } else { cur.state },
        vcpus: cur.vcpus,
        uptime_secs: cur.started_unix.map(|s| now_unix.saturating_sub(s)),
        cpu_percent: ns_percent(p.and_then(|p| p.cpu_ns), cur.cpu_ns),
        steal_percent: ns_percent(p.and_then(|p| p.steal_ns), cur.steal_ns),
        memory: MemoryStats {
            assigned_bytes: kib(cur.assigned_kib),
            used_bytes: kib(used_kib),
            available_bytes: kib(cur.available_kib),
            host_rss_bytes: kib(cur.rss_kib),
            note: used_kib.is_none().then_some(NO_GUEST_MEMORY),
        },
        disk: DiskStats {
            read_bytes_per_sec: per_sec(p.and_then(|p| p.disk_read_bytes), cur.disk_read_bytes),
            write_bytes_per_sec: per_sec(p.and_then(|p| p.disk_write_bytes), cur.disk_write_bytes),
            read_iops: per_sec(p.and_then(|p| p.disk_read_reqs), cur.disk_read_reqs),
            write_iops: per_sec(p.and_then(|p| p.disk_write_reqs), cur.disk_write_reqs),
            read_bytes: cur.disk_read_bytes,
            written_bytes: cur.disk_write_bytes,
        },
        network: NetworkStats {
            rx_bytes_per_sec: per_sec(p.map(|p| p.net_rx_bytes), Some(cur.net_rx_bytes)),
            tx_bytes_per_sec: per_sec(p.map(|p| p.net_tx_bytes), Some(cur.net_tx_bytes)),
            rx_bytes: cur.net_rx_bytes,
            tx_bytes: cur.net_tx_bytes,
        },
    }
}

/// The report of `cur`, with rates against `prev` when there is one.
pub fn report(host: &HostFacts, prev: Option<&Sample>, cur: &Sample) -> StatsReport {
    let secs = prev.map(|p| cur.taken.saturating_duration_since(p.taken).as_secs_f64()).filter(|s| *s > 0.0);
    let before: HashMap<&str, &Counters> =
        prev.map(|p| p.vms.iter().map(|c| (c.uuid.as_str(), c)).collect()).unwrap_or_default();
    let vms: Vec<VmStats> = cur
        .vms
        .iter()
        .map(|c| vm_stats(before.get(c.uuid.as_str()).copied(), c, secs.unwrap_or(0.0), cur.unix))
        .collect();
    let cpu: Vec<f64> = vms.iter().filter_map(|v| v.cpu_percent).collect();
    StatsReport {
        at: cur.unix,
        interval_secs: secs.map(|s| (s * 1000.0).round() / 1000.0),
        host: HostStats {
            hostname: host.hostname.clone(),
            vms_running: cur.vms.iter().filter(|c| c.state == "running").count(),
            memory_bytes: host.memory_bytes,
            memory_committed_bytes: cur.vms.iter().filter_map(|c| c.assigned_kib).sum::<u64>() * 1024,
            cpus: host.cpus,
            vcpus_committed: cur.vms.iter().filter_map(|c| c.vcpus).sum(),
            cpu_percent: (secs.is_some() && !cur.vms.is_empty()).then(|| round2(cpu.iter().sum())),
        },
        vms,
    }
}

/// A shut-off VM's row: a name and a state, nothing measured.
pub fn stopped(name: &str) -> VmStats {
    VmStats {
        name: name.to_string(),
        state: "shut off",
        vcpus: None,
        uptime_secs: None,
        cpu_percent: None,
        steal_percent: None,
        memory: MemoryStats {
            assigned_bytes: None,
            used_bytes: None,
            available_bytes: None,
            host_rss_bytes: None,
            note: None,
        },
        disk: DiskStats {
            read_bytes_per_sec: None,
            write_bytes_per_sec: None,
            read_iops: None,
            write_iops: None,
            read_bytes: None,
            written_bytes: None,
        },
        network: NetworkStats { rx_bytes_per_sec: None, tx_bytes_per_sec: None, rx_bytes: 0, tx_bytes: 0 },
    }
}

/// The start time of a process, from `/proc/PID/stat` (field 22, clock ticks
/// since boot) and the boot time in `/proc/stat` (`btime`).
pub fn process_start(stat: &str, proc_stat: &str, ticks_per_sec: u64) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from its end.
    let after = stat.rsplit_once(')')?.1;
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(btime + start_ticks / ticks_per_sec.max(1))
}

/// Takes samples from one connection.
pub struct Sampler {
    pub host: HostFacts,
    local: bool,
    /// uuid -> (pid, start): a VM's start time is read once per QEMU process.
    started: HashMap<String, (u32, Option<u64>)>,
}

/// Where libvirt's system daemon writes each running domain's QEMU pid.
const QEMU_PID_DIR: &str = "/run/libvirt/qemu";

impl Sampler {
    pub fn new(lv: &Libvirt) -> Result<Sampler> {
        let (mut memory_bytes, cpus) = lv.node_memory_and_cpus()?;
        let local = lv.is_local();
        // libvirt counts the memory of its NUMA cells, which some hosts (VMs among
        // them) report short; a local host's own total is /proc/meminfo's.
        if local {
            if let Some(mib) =
                std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| phyllome_host::parse_meminfo(&m))
            {
                memory_bytes = mib << 20;
            }
        }
        let hostname = lv.hostname().unwrap_or_else(|_| "localhost".into());
        Ok(Sampler { host: HostFacts { hostname, memory_bytes, cpus }, local, started: HashMap::new() })
    }

    /// Every running VM's counters: one libvirt round trip.
    pub fn sample(&mut self, lv: &Libvirt) -> Result<Sample> {
        // libvirt reads the counters somewhere inside the call: its midpoint is
        // the best time to pin them to (off by half the call's time at most).
        let before = Instant::now();
        let raw = lv.running_domain_stats()?;
        let taken = before + before.elapsed() / 2;
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let unix = unix_ms / 1000;
        let mut vms: Vec<Counters> = raw.iter().map(counters).collect();
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        if self.local {
            let mut seen = HashMap::new();
            for c in &mut vms {
                c.started_unix = self.start_of(&c.name, &c.uuid);
                if let Some(v) = self.started.get(&c.uuid) {
                    seen.insert(c.uuid.clone(), *v);
                }
            }
            self.started = seen;
        }
        Ok(Sample { taken, unix, unix_ms, vms })
    }

    fn start_of(&mut self, name: &str, uuid: &str) -> Option<u64> {
        let pid: u32 = std::fs::read_to_string(format!("{QEMU_PID_DIR}/{name}.pid")).ok()?.trim().parse().ok()?;
        if let Some((p, start)) = self.started.get(uuid) {
            if *p == pid {
                return *start;
            }
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
        // USER_HZ is 100 on every Linux architecture Phyllome runs on.
        let start = process_start(&stat, &proc_stat, 100);
        self.started.insert(uuid.to_string(), (pid, start));
        start
    }
}

/// `phyllome stats [VM…]`: the report over one interval, for the named VMs
/// (all running ones when none is named). A named VM that is not running has
/// a row with its state only; an unknown name is an error.
pub fn measure(lv: &Libvirt, names: &[String], interval: std::time::Duration) -> Result<StatsReport> {
    let mut sampler = Sampler::new(lv)?;
    let first = sampler.sample(lv)?;
    std::thread::sleep(interval);
    let second = sampler.sample(lv)?;
    select(lv, report(&sampler.host, Some(&first), &second), names)
}

/// Keeps the named VMs of a report (all when `names` is empty), in the order named.
pub fn select(lv: &Libvirt, mut r: StatsReport, names: &[String]) -> Result<StatsReport> {
    if names.is_empty() {
        return Ok(r);
    }
    let mut by_name: HashMap<String, VmStats> = r.vms.drain(..).map(|v| (v.name.clone(), v)).collect();
    for n in names {
        match by_name.remove(n) {
            Some(v) => r.vms.push(v),
            None if lv.exists(n)? => r.vms.push(stopped(n)),
            None => return Err(VmError::NoSuchVm(n.clone())),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn raw(name: &str, fields: &[(&str, Value)]) -> DomainStats {
        DomainStats {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            fields: fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            monitor: Monitor::Answered,
        }
    }

    fn busy(cpu_ns: u64, wr: u64) -> DomainStats {
        raw(
            "a",
            &[
                ("state.state", Value::Int(1)),
                ("cpu.time", Value::UInt(cpu_ns)),
                ("vcpu.current", Value::UInt(2)),
                ("vcpu.0.delay", Value::UInt(cpu_ns / 10)),
                ("vcpu.1.delay", Value::UInt(cpu_ns / 10)),
                ("balloon.current", Value::UInt(1024 * 1024)),
                ("balloon.available", Value::UInt(1000 * 1024)),
                ("balloon.usable", Value::UInt(600 * 1024)),
                ("balloon.rss", Value::UInt(300 * 1024)),
                ("block.count", Value::UInt(2)),
                ("block.0.name", Value::Str("vda".into())),
                ("block.0.wr.bytes", Value::UInt(wr)),
                ("block.0.wr.reqs", Value::UInt(wr / 4096)),
                ("block.1.name", Value::Str("sda".into())),
                ("block.1.rd.bytes", Value::UInt(100)),
                ("net.count", Value::UInt(1)),
                ("net.0.rx.bytes", Value::UInt(5000)),
            ],
        )
    }

    #[test]
    fn counters_sum_every_disk_and_vcpu() {
        let c = counters(&busy(2_000_000_000, 8192));
        assert_eq!(c.state, "running");
        assert_eq!((c.cpu_ns, c.vcpus, c.steal_ns), (Some(2_000_000_000), Some(2), Some(400_000_000)));
        assert_eq!((c.disk_write_bytes, c.disk_write_reqs, c.disk_read_bytes), (Some(8192), Some(2), Some(100)));
        assert_eq!((c.net_rx_bytes, c.net_tx_bytes), (5000, 0));
        assert_eq!(counters(&raw("p", &[("state.state", Value::Int(3))])).state, "paused");
    }

    fn sample(at: Instant, unix: u64, vms: Vec<Counters>) -> Sample {
        Sample { taken: at, unix, unix_ms: unix * 1000, vms }
    }

    #[test]
    fn rates_come_from_two_samples() {
        let host = HostFacts { hostname: "h".into(), memory_bytes: 8 << 30, cpus: 4 };
        let t0 = Instant::now();
        let a = sample(t0, 100, vec![counters(&busy(1_000_000_000, 0))]);
        let b = sample(t0 + Duration::from_secs(2), 102, vec![counters(&busy(3_000_000_000, 4 << 20))]);
        let first = report(&host, None, &a);
        assert_eq!(first.vms[0].cpu_percent, None, "no rate from one sample");
        assert_eq!(first.interval_secs, None);
        let r = report(&host, Some(&a), &b);
        let v = &r.vms[0];
        assert_eq!(v.cpu_percent, Some(100.0), "2 s of CPU in 2 s is one full host CPU");
        assert_eq!(v.steal_percent, Some(20.0));
        assert_eq!(v.disk.write_bytes_per_sec, Some(2_097_152.0));
        assert_eq!(v.disk.write_iops, Some(512.0));
        assert_eq!(v.memory.used_bytes, Some(400 << 20), "available - usable");
        assert_eq!(v.memory.host_rss_bytes, Some(300 << 20));
        assert_eq!(v.memory.note, None);
        assert_eq!(r.host.vms_running, 1);
        assert_eq!(r.host.vcpus_committed, 2);
        assert_eq!(r.host.memory_committed_bytes, 1 << 30);
        assert_eq!(r.host.cpu_percent, Some(100.0));
    }

    #[test]
    fn a_restarted_vm_or_a_silent_guest_gives_no_made_up_figures() {
        let host = HostFacts { hostname: "h".into(), memory_bytes: 1, cpus: 1 };
        let t0 = Instant::now();
        let a = sample(t0, 0, vec![counters(&busy(5_000_000_000, 1 << 20))]);
        let mut c = counters(&busy(1_000_000_000, 0));
        c.available_kib = None;
        let b = sample(t0 + Duration::from_secs(1), 1, vec![c]);
        let v = &report(&host, Some(&a), &b).vms[0];
        assert_eq!(v.cpu_percent, None, "counters went back: the VM restarted");
        assert_eq!(v.disk.write_bytes_per_sec, None);
        assert_eq!(v.memory.used_bytes, None);
        assert_eq!(v.memory.note, Some(NO_GUEST_MEMORY));
        assert_eq!(v.memory.assigned_bytes, Some(1 << 30), "the balloon size is known without a driver");
    }

    #[test]
    fn a_vm_whose_qemu_does_not_answer_is_stuck_and_gives_no_made_up_disk_figures() {
        let host = HostFacts { hostname: "h".into(), memory_bytes: 1, cpus: 1 };
        let t0 = Instant::now();
        let a = sample(t0, 0, vec![counters(&busy(1_000_000_000, 1 << 20))]);
        // The next sample: libvirt read it without QEMU (no block counters, no RSS), and QEMU is stuck.
        let mut stuck = busy(1_000_000_000, 0);
        stuck.fields.retain(|(k, _)| !k.starts_with("block.") || k.ends_with(".name") || k == "block.count");
        stuck.monitor = Monitor::Stuck;
        let c = counters(&stuck);
        assert_eq!((c.disk_write_bytes, c.disk_read_reqs), (None, None), "unknown, not zero");
        let b = sample(t0 + Duration::from_secs(1), 1, vec![c.clone()]);
        let v = &report(&host, Some(&a), &b).vms[0];
        assert_eq!(v.state, "stuck");
        assert_eq!((v.disk.write_bytes_per_sec, v.disk.written_bytes), (None, None));
        assert_eq!(v.cpu_percent, Some(0.0), "CPU time comes without QEMU: a stopped QEMU uses none");
        // Answering again: no rate against the sample without figures (it would be a spike from zero).
        let back = sample(t0 + Duration::from_secs(2), 2, vec![counters(&busy(1_000_000_000, 2 << 20))]);
        let v = &report(&host, Some(&b), &back).vms[0];
        assert_eq!((v.state, v.disk.write_bytes_per_sec), ("running", None));
        // A busy VM (another job held it) keeps its state; its disk figures are unknown for that sample.
        let mut held = busy(1_000_000_000, 0);
        held.monitor = Monitor::Busy;
        let v = &report(&host, Some(&a), &sample(t0 + Duration::from_secs(1), 1, vec![counters(&held)])).vms[0];
        assert_eq!((v.state, v.disk.written_bytes), ("running", None));
    }

    #[test]
    fn a_process_start_time_is_read_past_a_command_with_spaces() {
        // Field 22 (starttime) is the 20th after the command's closing parenthesis.
        let stat = "1234 (qemu system x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4200 99 100";
        assert_eq!(process_start(stat, "cpu 1 2\nbtime 1700000000\n", 100), Some(1_700_000_042));
        assert_eq!(process_start("garbage", "btime 1\n", 100), None);
        assert_eq!(process_start(stat, "cpu 1\n", 100), None);
    }
}
