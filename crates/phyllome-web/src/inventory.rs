//! The VM list as the server shows it: the VMs of every host (`local`, then
//! the hosts of `phyllome host add`), each row with its host, kept current by
//! libvirt's lifecycle events. Each host has a thread of its own that owns a
//! libvirt connection to it, watches its events, reads a changed VM's row
//! through the core (`vm::row`) and publishes its part; the parts make one
//! list, as JSON. `GET /api/v1/vms` answers from it without a libvirt round
//! trip, and `GET /api/v1/events` streams it to open pages.
//!
//! A host that goes away leaves its VMs in the list, marked `unreachable`
//! (their last known rows), and touches no other host's part; its thread
//! reconnects every second and re-reads the host in full when it is back.
//! A full re-read every `resync` catches anything an event could not say
//! (a disk resized behind our back, a libvirtd restart).

use bytes::Bytes;
use phyllome_engine::remotes::{Remote, LOCAL};
use phyllome_engine::vm::{self, VmError, VmRow};
use phyllome_libvirt::Libvirt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

enum Cmd {
    /// libvirt says this domain changed.
    Changed(String),
    /// A request changed this VM: read it now and say when done.
    Refresh(String, mpsc::SyncSender<()>),
}

pub struct Inventory {
    list: watch::Receiver<Bytes>,
    status: watch::Receiver<Status>,
    hosts: watch::Receiver<Bytes>,
    /// Each host's watcher, by host name.
    cmds: HashMap<String, Sender<Cmd>>,
}

/// Whether this host's (`local`) list is live: while its libvirtd cannot be
/// reached it is the last one read, and says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `up` or `down`.
    pub libvirt: &'static str,
    /// True while libvirtd is unreachable: the list is the last one read.
    pub stale: bool,
    /// Since when libvirtd is unreachable (UNIX seconds).
    pub since: Option<u64>,
}

impl Status {
    const UP: Status = Status { libvirt: "up", stale: false, since: None };
}

/// One host of the list and whether its libvirt answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct HostState {
    /// `local` (this host's own connection) or a name of `phyllome host list`.
    pub name: String,
    /// `up`, `down` (its VMs are shown as last read, marked unreachable) or
    /// `connecting` (not read yet).
    pub state: &'static str,
    /// Since when it is unreachable (UNIX seconds).
    pub since: Option<u64>,
    /// Its VMs in the list.
    pub vms: usize,
    /// The last error connecting to it (libvirt's words).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A row of the list: the VM's row and the host it is on.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ListedVm {
    #[serde(flatten)]
    pub row: VmRow,
    /// The host's name (`local` or one of GET /api/v1/hosts).
    pub host: String,
    /// Its host does not answer now: the row is the last one read.
    pub unreachable: bool,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error("the VM watcher did not start: {0}")]
    Start(String),
}

/// One host's part of the list.
struct Part {
    host: String,
    /// Read at least once.
    read: bool,
    up: bool,
    since: Option<u64>,
    error: Option<String>,
    rows: Vec<VmRow>,
}

/// Every host's part, in the hosts' order, and where the joined list goes.
struct Joined {
    parts: Vec<Part>,
    out: watch::Sender<Bytes>,
    hosts: watch::Sender<Bytes>,
}

impl Joined {
    fn publish(&self) {
        let mut rows = Vec::new();
        for p in &self.parts {
            for r in &p.rows {
                rows.push(ListedVm { row: r.clone(), host: p.host.clone(), unreachable: !p.up });
            }
        }
        let json = Bytes::from(serde_json::to_vec(&rows).expect("rows serialize"));
        let states: Vec<HostState> = self
            .parts
            .iter()
            .map(|p| HostState {
                name: p.host.clone(),
                state: if p.up {
                    "up"
                } else if p.read || p.since.is_some() {
                    "down"
                } else {
                    "connecting"
                },
                since: if p.up { None } else { p.since },
                vms: p.rows.len(),
                error: if p.up { None } else { p.error.clone() },
            })
            .collect();
        let hosts = Bytes::from(serde_json::to_vec(&states).expect("hosts serialize"));
        for (tx, new) in [(&self.out, json), (&self.hosts, hosts)] {
            tx.send_if_modified(|cur| {
                if *cur == new {
                    false
                } else {
                    *cur = new;
                    true
                }
            });
        }
    }
}

struct Watcher {
    host: String,
    uri: String,
    /// Which part of `joined` is this host's.
    index: usize,
    resync: Duration,
    rows: BTreeMap<String, VmRow>,
    joined: Arc<Mutex<Joined>>,
    /// This host's status (`local` only: the list's `stale` and the `status` event).
    status: Option<watch::Sender<Status>>,
    me: Sender<Cmd>,
}

impl Watcher {
    fn connect(&self) -> Result<Libvirt, phyllome_libvirt::Error> {
        let lv = Libvirt::connect(&self.uri)?;
        let tx = self.me.clone();
        lv.watch_lifecycle(move |e| {
            let _ = tx.send(Cmd::Changed(e.name));
        })?;
        Ok(lv)
    }

    fn joined(&self) -> std::sync::MutexGuard<'_, Joined> {
        self.joined.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_up(&self, up: bool, error: Option<String>) {
        if let Some(status) = &self.status {
            status.send_if_modified(|cur| {
                let next = if up {
                    Status::UP
                } else if cur.stale {
                    *cur
                } else {
                    Status { libvirt: "down", stale: true, since: Some(now_secs()) }
                };
                let changed = *cur != next;
                *cur = next;
                changed
            });
        }
        let mut j = self.joined();
        let p = &mut j.parts[self.index];
        if up {
            (p.up, p.since, p.error) = (true, None, None);
        } else {
            if p.up || p.since.is_none() {
                p.since = Some(now_secs());
            }
            p.up = false;
            if error.is_some() {
                p.error = error;
            }
        }
        j.publish();
    }

    fn publish(&self) {
        let mut j = self.joined();
        let p = &mut j.parts[self.index];
        p.rows = self.rows.values().cloned().collect();
        p.read = true;
        j.publish();
    }

    /// Re-reads every VM through the engine's bulk list (which also finishes,
    /// through this connection only, what dead phyllome processes left on
    /// this host); a VM that cannot be read is left out.
    fn full(&mut self, lv: &Libvirt) -> Result<(), VmError> {
        self.rows = vm::list(lv)?.into_iter().map(|r| (r.name.clone(), r)).collect();
        Ok(())
    }

    fn one(&mut self, lv: &Libvirt, name: &str) {
        match vm::row(lv, name) {
            Ok(r) => {
                self.rows.insert(name.to_string(), r);
            }
            Err(VmError::NoSuchVm(_)) => {
                self.rows.remove(name);
            }
            // Half-defined or unreadable right now: the next event or resync settles it.
            Err(_) => {}
        }
    }

    /// `ready` gets the first full read's result (or the first failure to connect).
    fn run(mut self, rx: Receiver<Cmd>, ready: mpsc::SyncSender<Result<(), String>>) {
        let mut ready = Some(ready);
        let fatal = self.host == LOCAL;
        let mut lv: Option<Libvirt> = None;
        let mut next_full = Instant::now();
        loop {
            if lv.as_ref().is_none_or(|l| !l.is_alive()) {
                if lv.take().is_some() {
                    self.set_up(false, None);
                }
                match self.connect() {
                    Ok(l) => {
                        lv = Some(l);
                        next_full = Instant::now();
                    }
                    Err(e) => {
                        // libvirt's words, without the URI (the list names hosts, not their URIs).
                        self.set_up(false, Some(e.message.clone()));
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            // This host's libvirtd must answer at start; another host may come later.
                            if fatal {
                                return;
                            }
                        }
                    }
                }
            }
            if let Some(l) = &lv {
                if Instant::now() >= next_full {
                    let r = self.full(l);
                    if r.is_ok() {
                        self.publish();
                    }
                    let err = r.as_ref().err().map(|e| e.to_string());
                    self.set_up(r.is_ok() && l.is_alive(), err);
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(r.map_err(|e| e.to_string()));
                    }
                    next_full = Instant::now() + self.resync;
                }
            }
            // Every 2 s at most, the loop's top asks whether libvirtd is still there.
            let wait = if lv.is_some() {
                next_full.saturating_duration_since(Instant::now()).min(Duration::from_secs(2))
            } else {
                Duration::from_secs(1)
            };
            let first = match rx.recv_timeout(wait) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            // Take every command waiting, so a burst of events costs one publish.
            let mut names = BTreeSet::new();
            let mut acks = Vec::new();
            for c in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                match c {
                    Cmd::Changed(n) => {
                        names.insert(n);
                    }
                    Cmd::Refresh(n, ack) => {
                        names.insert(n);
                        acks.push(ack);
                    }
                }
            }
            if let Some(l) = &lv {
                for n in &names {
                    self.one(l, n);
                }
                self.publish();
                if !l.is_alive() {
                    self.set_up(false, None);
                }
            }
            for a in acks {
                let _ = a.send(());
            }
        }
    }
}

/// How long the start waits for the other hosts' first read (one that takes
/// longer comes into the list when it answers).
const OTHERS_WAIT: Duration = Duration::from_secs(10);

impl Inventory {
    /// Starts a watcher per host (`local` on `uri`, then `others`) and waits
    /// for the first full read of this host (so the list is right from the
    /// first request on) and, for a few seconds, of the others. Fails only
    /// when this host's libvirtd does not answer. Needs libvirt's event loop
    /// (`phyllome_libvirt::start_event_loop`) to be running.
    pub fn start(uri: &str, others: &[Remote], resync: Duration) -> Result<Inventory, InventoryError> {
        let (out, list) = watch::channel(Bytes::from_static(b"[]"));
        let (hosts_tx, hosts) = watch::channel(Bytes::from_static(b"[]"));
        let (status_tx, status) = watch::channel(Status::UP);
        let mut all = vec![Remote { name: LOCAL.into(), uri: uri.into() }];
        all.extend(others.iter().filter(|h| h.name != LOCAL).cloned());
        let parts = all
            .iter()
            .map(|h| Part { host: h.name.clone(), read: false, up: false, since: None, error: None, rows: vec![] })
            .collect();
        let joined = Arc::new(Mutex::new(Joined { parts, out, hosts: hosts_tx }));
        joined.lock().unwrap_or_else(|e| e.into_inner()).publish();
        let mut cmds = HashMap::new();
        let mut readies = Vec::new();
        let mut status_tx = Some(status_tx);
        for (index, h) in all.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let w = Watcher {
                host: h.name.clone(),
                uri: h.uri.clone(),
                index,
                resync,
                rows: BTreeMap::new(),
                joined: Arc::clone(&joined),
                status: if index == 0 { status_tx.take() } else { None },
                me: tx.clone(),
            };
            std::thread::Builder::new()
                .name(format!("vm-watcher-{index}"))
                .spawn(move || w.run(rx, ready_tx))
                .map_err(|e| InventoryError::Start(e.to_string()))?;
            cmds.insert(h.name.clone(), tx);
            readies.push(ready_rx);
        }
        let mut readies = readies.into_iter();
        match readies.next().map(|r| r.recv_timeout(Duration::from_secs(60))) {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(InventoryError::Start(e)),
            _ => return Err(InventoryError::Start("no answer from libvirtd within 60 s".into())),
        }
        let until = Instant::now() + OTHERS_WAIT;
        for r in readies {
            let _ = r.recv_timeout(until.saturating_duration_since(Instant::now()));
        }
        Ok(Inventory { list, status, hosts, cmds })
    }

    /// The VM list as JSON (an array of [`ListedVm`]).
    pub fn current(&self) -> Bytes {
        self.list.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Bytes> {
        self.list.clone()
    }

    /// This host's (`local`) status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    pub fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Every host and whether it answers, as JSON (an array of [`HostState`]).
    pub fn hosts(&self) -> Bytes {
        self.hosts.borrow().clone()
    }

    pub fn subscribe_hosts(&self) -> watch::Receiver<Bytes> {
        self.hosts.clone()
    }

    /// Re-reads one VM of this host now and waits (a little) until the list
    /// shows it; for request handlers, which run on blocking threads.
    pub fn refresh(&self, name: &str) {
        self.refresh_on(LOCAL, name)
    }

    /// [`Inventory::refresh`] on host `host`.
    pub fn refresh_on(&self, host: &str, name: &str) {
        let Some(cmd) = self.cmds.get(host) else { return };
        let (tx, rx) = mpsc::sync_channel(1);
        if cmd.send(Cmd::Refresh(name.to_string(), tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}
