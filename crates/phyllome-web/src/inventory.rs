//! The VM list as the server shows it, kept current by libvirt's lifecycle
//! events: one thread owns a libvirt connection that watches events, reads
//! the changed VM's row through the core (`vm::row`) and publishes the whole
//! list as JSON. `GET /api/v1/vms` answers from it without a libvirt round
//! trip, and `GET /api/v1/events` streams it to open pages.
//!
//! A full re-read every `resync` catches anything an event could not say
//! (a disk resized behind our back, a libvirtd restart).

use bytes::Bytes;
use phyllome_engine::vm::{self, VmError, VmRow};
use phyllome_libvirt::Libvirt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
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
    cmd: Sender<Cmd>,
}

/// Whether the list is live: while libvirtd cannot be reached it is the last
/// one read, and says so.
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

struct Watcher {
    uri: String,
    resync: Duration,
    rows: BTreeMap<String, VmRow>,
    out: watch::Sender<Bytes>,
    status: watch::Sender<Status>,
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

    fn set_up(&self, up: bool) {
        self.status.send_if_modified(|cur| {
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

    fn publish(&self) {
        let rows: Vec<&VmRow> = self.rows.values().collect();
        let json = Bytes::from(serde_json::to_vec(&rows).expect("rows serialize"));
        self.out.send_if_modified(|cur| {
            if *cur == json {
                false
            } else {
                *cur = json;
                true
            }
        });
    }

    /// Re-reads every VM (the engine's bulk list); a VM that cannot be read is left out.
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

    fn run(mut self, rx: Receiver<Cmd>, ready: mpsc::SyncSender<Result<(), String>>) {
        let mut ready = Some(ready);
        let mut lv: Option<Libvirt> = None;
        let mut next_full = Instant::now();
        loop {
            if lv.as_ref().is_none_or(|l| !l.is_alive()) {
                match self.connect() {
                    Ok(l) => {
                        lv = Some(l);
                        next_full = Instant::now();
                    }
                    Err(e) => {
                        lv = None;
                        self.set_up(false);
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e.to_string()));
                            return;
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
                    self.set_up(r.is_ok() && l.is_alive());
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
                    self.set_up(false);
                }
            }
            for a in acks {
                let _ = a.send(());
            }
        }
    }
}

impl Inventory {
    /// Starts the watcher and waits for its first full read (so the list is
    /// right from the first request on). Needs libvirt's event loop
    /// (`phyllome_libvirt::start_event_loop`) to be running.
    pub fn start(uri: &str, resync: Duration) -> Result<Inventory, InventoryError> {
        let (out, list) = watch::channel(Bytes::from_static(b"[]"));
        let (status_tx, status) = watch::channel(Status::UP);
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let w = Watcher { uri: uri.to_string(), resync, rows: BTreeMap::new(), out, status: status_tx, me: tx.clone() };
        std::thread::Builder::new()
            .name("vm-watcher".into())
            .spawn(move || w.run(rx, ready_tx))
            .map_err(|e| InventoryError::Start(e.to_string()))?;
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(Inventory { list, status, cmd: tx }),
            Ok(Err(e)) => Err(InventoryError::Start(e)),
            Err(_) => Err(InventoryError::Start("no answer from libvirtd within 60 s".into())),
        }
    }

    /// The VM list as JSON (an array of `VmRow`).
    pub fn current(&self) -> Bytes {
        self.list.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Bytes> {
        self.list.clone()
    }

    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    pub fn subscribe_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Re-reads one VM now and waits (a little) until the list shows it;
    /// for request handlers, which run on blocking threads.
    pub fn refresh(&self, name: &str) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.cmd.send(Cmd::Refresh(name.to_string(), tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}
