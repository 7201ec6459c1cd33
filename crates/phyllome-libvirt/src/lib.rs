//! The one crate that talks to libvirt. Everything else in Phyllome sees
//! plain strings and its own error type, never `virt` handles.

mod console;
mod events;
mod files;
mod hostdev;
mod jobs;
mod migrate;
mod node;
mod secret;
mod stats;
mod storage;

pub use console::{Console, Io};
pub use events::{start_event_loop, DomainEvent, Lifecycle};
pub use files::Perms;
pub use hostdev::Applied;
pub use jobs::Job;
pub use migrate::{MigrateAsk, MigrationStats};
pub use node::NodeMemory;
pub use stats::{DomainStats, Monitor, Value, STATS_MAX, STATS_WITHIN};
pub use storage::VolumeInfo;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::sys;

/// An error from libvirt, with the operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {message}")]
pub struct Error {
    pub op: String,
    pub message: String,
    /// libvirt's error code (`virErrorNumber`).
    pub code: i32,
}

impl Error {
    fn new(op: impl Into<String>, e: virt::error::Error) -> Self {
        Error { op: op.into(), message: e.message().to_string(), code: e.code().to_raw() as i32 }
    }

    /// True when libvirt said the domain does not exist.
    pub fn is_no_domain(&self) -> bool {
        self.code == sys::VIR_ERR_NO_DOMAIN as i32
    }

    /// True when libvirtd cannot be reached: no connection, or it went away.
    pub fn is_unavailable(&self) -> bool {
        self.op.starts_with("cannot connect")
            || self.code == sys::VIR_ERR_NO_CONNECT as i32
            || self.code == sys::VIR_ERR_RPC as i32
            || self.message.contains("client socket is closed")
    }

    /// True when the object's state forbids the operation (a network that is not active...).
    pub fn is_invalid_state(&self) -> bool {
        self.code == sys::VIR_ERR_OPERATION_INVALID as i32
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Formats libvirt's packed version numbers (major * 1,000,000 + minor * 1,000 + release).
pub fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

/// Undefine with everything libvirt keeps beside the definition.
const UNDEFINE_ALL: u32 = sys::VIR_DOMAIN_UNDEFINE_NVRAM
    | sys::VIR_DOMAIN_UNDEFINE_TPM
    | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | sys::VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA;

/// Threads [`Libvirt::list_all`] and [`Listed::capacities`] ask libvirtd from.
const LIST_THREADS: usize = 4;

/// `f` of every item, in order, from a few threads at once: libvirtd answers
/// the calls of one connection with several workers, so their round trips overlap.
fn fan_out<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = LIST_THREADS.min(items.len().max(1));
    let f = &f;
    let mut parts: Vec<Vec<R>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || items.iter().skip(t).step_by(threads).map(f).collect::<Vec<R>>()))
            .collect();
        workers.into_iter().map(|w| w.join().expect("a listing thread panicked")).collect()
    });
    // Item i went to thread i % threads, as its (i / threads)-th result.
    let mut iters: Vec<_> = parts.iter_mut().map(|p| std::mem::take(p).into_iter()).collect();
    (0..items.len()).filter_map(|i| iters[i % threads].next()).collect()
}

/// A domain from [`Libvirt::list_all`].
pub struct Listed {
    pub name: String,
    pub state: State,
    /// Its live XML (the definition when it is shut off).
    pub xml: String,
    /// libvirt starts it when libvirtd starts.
    pub autostart: bool,
    dom: Domain,
}

impl Listed {
    /// The domain's UUID.
    pub fn uuid(&self) -> String {
        self.dom.uuid_string().unwrap_or_default()
    }

    /// The virtual size of its disk `target` (`vda`...), read by libvirt from
    /// the image (one round trip; None when the image cannot be read).
    pub fn capacity(&self, target: &str) -> Option<u64> {
        self.dom.block_info(target, 0).ok().map(|b| b.capacity)
    }

    /// [`Listed::capacity`] of many domains' disks, asked from a few threads at once.
    pub fn capacities(asks: &[(&Listed, &str)]) -> Vec<Option<u64>> {
        fan_out(asks, |(d, target)| d.capacity(target))
    }
}

fn state_of(d: &Domain) -> Result<State> {
    let (state, _) = d.state().map_err(|e| Error::new("domain state", e))?;
    Ok(match state.to_raw() {
        sys::VIR_DOMAIN_RUNNING => State::Running,
        sys::VIR_DOMAIN_PAUSED => State::Paused,
        sys::VIR_DOMAIN_SHUTOFF => State::Shutoff,
        _ => State::Other,
    })
}

/// A connection to libvirtd.
pub struct Libvirt {
    conn: Connect,
    /// Whether the files its domains use are this machine's ([`uri_is_local`] of its URI).
    local: bool,
}

/// libvirt's own sockets for `qemu:///system` (monolithic and modular daemons): a URI that
/// names one of them reaches the usual daemon of this machine.
const SYSTEM_SOCKETS: &[&str] = &[
    "/run/libvirt/libvirt-sock",
    "/run/libvirt/virtqemud-sock",
    "/var/run/libvirt/libvirt-sock",
    "/var/run/libvirt/virtqemud-sock",
];

/// Whether the libvirtd a URI reaches uses this machine's files: no host name
/// (`qemu:///system`, `qemu+unix:///system`), and no socket of its own. A
/// `socket=` parameter naming another socket may lead to a daemon in another
/// mount namespace (a container, or scripts/second-host.sh), whose domains'
/// paths name its files, not this machine's: such a host counts as remote, and
/// its files are reached through its libvirt only.
pub fn uri_is_local(uri: &str) -> bool {
    let Some((_, rest)) = uri.split_once("://") else { return false };
    if !rest.starts_with('/') {
        return false;
    }
    let query = rest.split_once('?').map(|(_, q)| q).unwrap_or_default();
    query.split('&').filter_map(|kv| kv.strip_prefix("socket=")).all(|s| SYSTEM_SOCKETS.contains(&decode(s).as_str()))
}

/// A URI query value with its `%XX` escapes decoded.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Domain lifecycle state, as libvirt reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Paused,
    Shutoff,
    Other,
}

impl Libvirt {
    /// Connects to `uri` (e.g. `qemu:///system`).
    pub fn connect(uri: &str) -> Result<Self> {
        // libvirt prints every error to stderr by default; we report them ourselves.
        virt::error::clear_error_callback();
        let conn = Connect::open(Some(uri)).map_err(|e| Error::new(format!("cannot connect to {uri}"), e))?;
        let local = uri_is_local(&conn.uri().unwrap_or_else(|_| uri.to_string()));
        Ok(Libvirt { conn, local })
    }

    /// The URI of this connection, as libvirt canonicalized it.
    pub fn uri(&self) -> String {
        self.conn.uri().unwrap_or_default()
    }

    /// Whether the files its domains use are this machine's files ([`uri_is_local`]).
    /// Otherwise they are reached through this connection's libvirt only.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// libvirt's and the hypervisor's versions.
    pub fn versions(&self) -> Result<(String, String)> {
        let lib = self.conn.lib_version().map_err(|e| Error::new("libvirt version", e))?;
        let hyp = self.conn.hyp_version().map_err(|e| Error::new("hypervisor version", e))?;
        Ok((version_string(lib), version_string(hyp)))
    }

    /// The libvirt library this process is linked against (the daemon's may differ).
    pub fn library_version() -> Result<String> {
        Connect::version().map(version_string).map_err(|e| Error::new("libvirt library version", e))
    }

    /// `virsh capabilities`: the host's capabilities XML.
    pub fn capabilities(&self) -> Result<String> {
        self.conn.capabilities().map_err(|e| Error::new("host capabilities", e))
    }

    /// `virsh domcapabilities --virttype VIRTTYPE --machine MACHINE --arch x86_64`.
    pub fn domain_capabilities(&self, virttype: &str, machine: &str) -> Result<String> {
        self.conn
            .domain_capabilities(None, Some("x86_64"), Some(machine), Some(virttype), 0)
            .map_err(|e| Error::new(format!("domain capabilities for {virttype}"), e))
    }

    /// Defines a persistent domain; libvirt validates it against its schema first.
    /// Returns the new domain's UUID, the identity rollback acts on.
    pub fn define(&self, xml: &str) -> Result<String> {
        let d = self
            .conn
            .define_domain_xml_flags(xml, sys::VIR_DOMAIN_DEFINE_VALIDATE)
            .map_err(|e| Error::new("define domain", e))?;
        d.uuid_string().map_err(|e| Error::new("domain uuid", e))
    }

    /// Stops (if running) and undefines, with its NVRAM and TPM state, the domain
    /// with this UUID, whatever it is named now. A missing one is not an error.
    pub fn remove_domain_by_uuid(&self, uuid: &str) -> Result<bool> {
        let d = match self.conn.lookup_domain_by_uuid_string(uuid) {
            Ok(d) => d,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => return Ok(false),
            Err(e) => return Err(Error::new(format!("domain {uuid}"), e)),
        };
        if d.is_active().unwrap_or(false) {
            let _ = d.destroy();
        }
        d.undefine_flags(UNDEFINE_ALL).map_err(|e| Error::new(format!("undefine {uuid}"), e))?;
        Ok(true)
    }

    fn domain(&self, name: &str) -> Result<Domain> {
        self.conn.lookup_domain_by_name(name).map_err(|e| Error::new(format!("domain {name}"), e))
    }

    pub fn exists(&self, name: &str) -> Result<bool> {
        match self.domain(name) {
            Ok(_) => Ok(true),
            Err(e) if e.is_no_domain() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn start(&self, name: &str) -> Result<()> {
        self.domain(name)?.create().map(|_| ()).map_err(|e| Error::new(format!("start {name}"), e))
    }

    /// Starts a domain paused: QEMU holds its disks open (and their keys) but no guest code runs.
    pub fn start_paused(&self, name: &str) -> Result<()> {
        self.domain(name)?
            .create_with_flags(sys::VIR_DOMAIN_START_PAUSED)
            .map(|_| ())
            .map_err(|e| Error::new(format!("start {name} paused"), e))
    }

    /// The name and state of the domain with this UUID, whatever it is named now (None: no such domain).
    pub fn by_uuid(&self, uuid: &str) -> Result<Option<(String, State)>> {
        let d = match self.conn.lookup_domain_by_uuid_string(uuid) {
            Ok(d) => d,
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_DOMAIN => return Ok(None),
            Err(e) => return Err(Error::new(format!("domain {uuid}"), e)),
        };
        let name = d.name().map_err(|e| Error::new(format!("domain {uuid}"), e))?;
        Ok(Some((name, state_of(&d)?)))
    }

    /// Powers off the domain with this UUID if it is paused (what [`Libvirt::start_paused`] left).
    pub fn destroy_paused_uuid(&self, uuid: &str) -> Result<bool> {
        let Ok(d) = self.conn.lookup_domain_by_uuid_string(uuid) else { return Ok(false) };
        let (state, _) = d.state().map_err(|e| Error::new("domain state", e))?;
        if state.to_raw() != sys::VIR_DOMAIN_PAUSED {
            return Ok(false);
        }
        d.destroy().map_err(|e| Error::new("destroy", e))?;
        Ok(true)
    }

    /// Whether libvirt starts the domain when libvirtd starts (the host boots).
    pub fn autostart(&self, name: &str) -> Result<bool> {
        self.domain(name)?.autostart().map_err(|e| Error::new(format!("autostart of {name}"), e))
    }

    pub fn set_autostart(&self, name: &str, on: bool) -> Result<()> {
        self.domain(name)?.set_autostart(on).map(|_| ()).map_err(|e| Error::new(format!("set autostart of {name}"), e))
    }

    /// Stops a domain at once (power cord).
    pub fn destroy(&self, name: &str) -> Result<()> {
        self.domain(name)?.destroy().map_err(|e| Error::new(format!("destroy {name}"), e))
    }

    pub fn state(&self, name: &str) -> Result<State> {
        state_of(&self.domain(name)?).map_err(|e| Error { op: format!("state of {name}"), ..e })
    }

    /// Why a paused domain is paused, in words, when the reason is one a user must know.
    pub fn pause_reason(&self, name: &str) -> Result<Option<&'static str>> {
        let (state, reason) = self.domain(name)?.state().map_err(|e| Error::new(format!("state of {name}"), e))?;
        use virt::domain::{DomainPausedReason as P, DomainStateReason as R};
        use virt::enumutil::Enum;
        let _ = state;
        Ok(match reason {
            Enum::Known(R::Paused(Enum::Known(p))) => match p {
                P::IOError => Some("I/O error"),
                // libvirt writes its memory to a file (virDomainSave), then stops it.
                P::Save => Some("saving"),
                P::Watchdog => Some("watchdog"),
                P::Crashed => Some("guest crashed"),
                P::PostCopyFailed => Some("post-copy migration failed"),
                P::APIError => Some("libvirt API error"),
                _ => None,
            },
            _ => None,
        })
    }

    /// The domain's live (or inactive) XML.
    pub fn xml(&self, name: &str) -> Result<String> {
        self.domain(name)?.xml_desc(0).map_err(|e| Error::new(format!("XML of {name}"), e))
    }

    /// Defines anew an existing domain from its edited XML (libvirt validates it).
    pub fn redefine(&self, xml: &str) -> Result<()> {
        self.conn
            .define_domain_xml_flags(xml, sys::VIR_DOMAIN_DEFINE_VALIDATE)
            .map(|_| ())
            .map_err(|e| Error::new("define domain", e))
    }

    /// Removes a stopped domain's definition with its NVRAM and TPM state.
    pub fn undefine(&self, name: &str) -> Result<()> {
        self.domain(name)?.undefine_flags(UNDEFINE_ALL).map_err(|e| Error::new(format!("undefine {name}"), e))
    }

    /// The target directory of a storage pool, if the pool exists.
    pub fn pool_path(&self, pool: &str) -> Result<Option<String>> {
        match self.conn.lookup_storage_pool_by_name(pool) {
            Ok(p) => {
                let xml = p.xml_desc(0).map_err(|e| Error::new(format!("pool {pool}"), e))?;
                Ok(xml
                    .split_once("<path>")
                    .and_then(|(_, rest)| rest.split_once("</path>"))
                    .map(|(path, _)| path.trim().to_string()))
            }
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_STORAGE_POOL => Ok(None),
            Err(e) => Err(Error::new(format!("pool {pool}"), e)),
        }
    }

    /// Asks the guest to shut down: ACPI power button, or the guest agent.
    pub fn shutdown(&self, name: &str, agent: bool) -> Result<()> {
        let flags = if agent { sys::VIR_DOMAIN_SHUTDOWN_GUEST_AGENT } else { sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN };
        self.domain(name)?.shutdown_flags(flags).map_err(|e| Error::new(format!("shut down {name}"), e))
    }

    pub fn suspend(&self, name: &str) -> Result<()> {
        self.domain(name)?.suspend().map_err(|e| Error::new(format!("pause {name}"), e))
    }

    pub fn resume(&self, name: &str) -> Result<()> {
        self.domain(name)?.resume().map_err(|e| Error::new(format!("resume {name}"), e))
    }

    /// The inactive (persistent) XML, with secure info such as VNC passwords left out.
    /// Sets this domain's metadata element of namespace `uri` (stored under the prefix `key`)
    /// in its persistent definition only: what its next start reads; a running one is not changed.
    pub fn set_config_metadata(&self, name: &str, uri: &str, key: &str, xml: &str) -> Result<()> {
        self.domain(name)?
            .set_metadata(
                sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some(xml),
                Some(key),
                Some(uri),
                sys::VIR_DOMAIN_AFFECT_CONFIG,
            )
            .map_err(|e| Error::new(format!("metadata of {name}"), e))
    }

    pub fn inactive_xml(&self, name: &str) -> Result<String> {
        self.domain(name)?.xml_desc(sys::VIR_DOMAIN_XML_INACTIVE).map_err(|e| Error::new(format!("XML of {name}"), e))
    }

    /// Names of all domains, running or not.
    /// Every domain with its state and XML, in few round trips: four listings
    /// (all, running, paused, autostart) give every state at once, then one XML call a
    /// domain. The handles stay, for [`Listed::capacity`].
    pub fn list_all(&self) -> Result<Vec<Listed>> {
        let list = |flags| self.conn.list_all_domains(flags).map_err(|e| Error::new("list domains", e));
        let uuids = |doms: Vec<Domain>| -> std::collections::HashSet<String> {
            doms.iter().filter_map(|d| d.uuid_string().ok()).collect()
        };
        let running = uuids(list(sys::VIR_CONNECT_LIST_DOMAINS_RUNNING)?);
        let paused = uuids(list(sys::VIR_CONNECT_LIST_DOMAINS_PAUSED)?);
        let active = uuids(list(sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)?);
        let autostart = uuids(list(sys::VIR_CONNECT_LIST_DOMAINS_AUTOSTART)?);
        let doms = list(0)?;
        let mut out: Vec<Listed> = fan_out(&doms, |dom| {
            let (Ok(name), Ok(uuid)) = (dom.name(), dom.uuid_string()) else { return None };
            let state = if running.contains(&uuid) {
                State::Running
            } else if paused.contains(&uuid) {
                State::Paused
            } else if active.contains(&uuid) {
                State::Other
            } else {
                State::Shutoff
            };
            // Undefined between the listing and now: left out.
            let xml = dom.xml_desc(0).ok()?;
            Some(Listed { name, state, xml, autostart: autostart.contains(&uuid), dom: dom.clone() })
        })
        .into_iter()
        .flatten()
        .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn domain_names(&self) -> Result<Vec<String>> {
        let doms = self.conn.list_all_domains(0).map_err(|e| Error::new("list domains", e))?;
        let mut names: Vec<String> = doms.iter().filter_map(|d| d.name().ok()).collect();
        names.sort();
        Ok(names)
    }

    pub fn uuid(&self, name: &str) -> Result<String> {
        self.domain(name)?.uuid_string().map_err(|e| Error::new(format!("uuid of {name}"), e))
    }

    /// Takes a screenshot of the first display; returns the image bytes and libvirt's MIME type.
    pub fn screenshot(&self, name: &str) -> Result<(Vec<u8>, String)> {
        let dom = self.domain(name)?;
        let stream = virt::stream::Stream::new(&self.conn, 0).map_err(|e| Error::new("new stream", e))?;
        let mime = dom.screenshot(&stream, 0, 0).map_err(|e| Error::new(format!("screenshot of {name}"), e))?;
        let mut data = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = stream.recv(&mut buf).map_err(|e| Error::new("read screenshot", e))?;
            if n <= 0 {
                break;
            }
            data.extend_from_slice(&buf[..n as usize]);
        }
        stream.finish().map_err(|e| Error::new("finish screenshot", e))?;
        Ok((data, mime))
    }

    /// Whether a libvirt network exists, and whether it is active.
    /// Every libvirt network: name, whether it is active, and its forward
    /// mode (`nat`, `route`, `bridge`...; None for an isolated network).
    pub fn networks(&self) -> Result<Vec<(String, bool, Option<String>)>> {
        let nets = self.conn.list_all_networks(0).map_err(|e| Error::new("list networks", e))?;
        let mut out = Vec::new();
        for n in nets {
            let name = n.name().map_err(|e| Error::new("network name", e))?;
            let active = n.is_active().map_err(|e| Error::new(format!("network {name}"), e))?;
            let xml = n.xml_desc(0).unwrap_or_default();
            let forward = roxmltree::Document::parse(&xml).ok().and_then(|d| {
                d.descendants()
                    .find(|x| x.has_tag_name("forward"))
                    .map(|f| f.attribute("mode").unwrap_or("nat").to_string())
            });
            out.push((name, active, forward));
        }
        out.sort();
        Ok(out)
    }

    pub fn network_state(&self, name: &str) -> Result<Option<bool>> {
        match self.conn.lookup_network_by_name(name) {
            Ok(n) => Ok(Some(n.is_active().map_err(|e| Error::new(format!("network {name}"), e))?)),
            Err(e) if e.code().to_raw() == sys::VIR_ERR_NO_NETWORK => Ok(None),
            Err(e) => Err(Error::new(format!("network {name}"), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_name_or_a_socket_of_its_own_is_another_host() {
        for local in [
            "qemu:///system",
            "qemu:///session",
            "qemu+unix:///system",
            "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
            "qemu+unix:///system?socket=%2Frun%2Flibvirt%2Fvirtqemud-sock",
            "qemu+unix:///system?mode=legacy&socket=/var/run/libvirt/libvirt-sock",
        ] {
            assert!(super::uri_is_local(local), "{local}");
        }
        for remote in [
            "qemu+ssh://root@lab/system",
            "qemu+tls://lab.example/system",
            "qemu+tcp://localhost/system",
            "qemu+unix:///system?socket=/var/lib/phyllome-test-hosts/h2/run/libvirt-sock",
            "qemu+unix:///system?no_tty=1&socket=%2Fsrv%2Fc1%2Flibvirt-sock",
            "qemu:system",
        ] {
            assert!(!super::uri_is_local(remote), "{remote}");
        }
    }

    #[test]
    fn fan_out_keeps_the_order() {
        for n in [0usize, 1, 3, 4, 5, 17] {
            let items: Vec<usize> = (0..n).collect();
            assert_eq!(super::fan_out(&items, |i| i * 10), items.iter().map(|i| i * 10).collect::<Vec<_>>(), "{n}");
        }
    }
}
