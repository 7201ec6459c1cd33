//! Several hosts in one place: `phyllome host add NAME URI`, `host list`,
//! `host remove NAME`, and `--host NAME` on every command.
//!
//! A host is only a name for a libvirt URI (`qemu+ssh://…`, `qemu+tls://…`,
//! `qemu+unix://…?socket=…`): there is no cluster, no agent and no copy of a
//! host's VMs here. Everything about a host's VMs is asked of its own libvirt
//! when it is needed. The list lives in one small TOML file in Phyllome's state
//! directory (`/var/lib/phyllome/hosts.toml`), written whole and renamed into
//! place, so a reader never sees half of it.
//!
//! The name `local` is this host's own connection (`--connect`, by default
//! `qemu:///system`) and cannot be added.

use crate::errors::Classify;
use phyllome_libvirt::Libvirt;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name of this host's own connection.
pub const LOCAL: &str = "local";
/// How long [`on_each`] waits for one host (connection and work) before calling it unreachable.
/// A dead unix socket or a refused TCP port fails at once; this bounds a silent network or an ssh
/// that waits for a password.
pub const REACH_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Remote {
    pub name: String,
    pub uri: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RemotesFile {
    #[serde(default)]
    host: Vec<Remote>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(
        "{0:?} is not a host name: use 1 to 63 lowercase letters, digits and '-' (starting with a letter or digit)"
    )]
    BadName(String),
    #[error("{0:?} is this host's own connection (--connect); it needs no entry")]
    Reserved(String),
    #[error("{0}")]
    BadUri(String),
    #[error("no host named {0:?} (phyllome host list shows them; phyllome host add NAME URI adds one)")]
    Unknown(String),
    #[error("a host named {0:?} exists already (with {1})")]
    Exists(String, String),
    #[error("{0} is host {1:?} already")]
    UriExists(String, String),
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("host {name:?} ({uri}) cannot be reached: {why}")]
    Unreachable { name: String, uri: String, why: String },
    #[error("on host {name:?}: {why}")]
    OnHost { name: String, why: String },
}

impl Classify for RemoteError {
    fn kind(&self) -> crate::errors::ErrorKind {
        use crate::errors::ErrorKind;
        match self {
            RemoteError::BadName(_) | RemoteError::Reserved(_) | RemoteError::BadUri(_) => ErrorKind::InvalidInput,
            RemoteError::Unknown(_) => ErrorKind::NotFound,
            RemoteError::Exists(..) | RemoteError::UriExists(..) => ErrorKind::Conflict,
            RemoteError::Unreachable { .. } => ErrorKind::Unavailable,
            RemoteError::File { .. } | RemoteError::OnHost { .. } => ErrorKind::Failed,
        }
    }
}

type Result<T> = std::result::Result<T, RemoteError>;

/// A host name: what a user types after `--host`, and what a list shows.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0] != b'-';
    if !ok {
        return Err(RemoteError::BadName(name.into()));
    }
    if name == LOCAL {
        return Err(RemoteError::Reserved(name.into()));
    }
    Ok(())
}

/// A libvirt URI of a QEMU driver: `qemu[+transport]://[user@]host[:port]/system|session[?…]`.
/// Checked before it is stored, so a typo is told at `host add`, not at first use.
pub fn check_uri(uri: &str) -> Result<()> {
    let bad = |why: &str| Err(RemoteError::BadUri(format!("{uri:?} is not a libvirt QEMU URI: {why}")));
    if uri.len() > 1024 {
        return Err(RemoteError::BadUri("the URI is longer than 1024 bytes".into()));
    }
    if uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return bad("it holds spaces or control characters");
    }
    let Some((scheme, rest)) = uri.split_once("://") else {
        return bad("no scheme (e.g. qemu+ssh://root@server/system)");
    };
    let (driver, transport) = scheme.split_once('+').unwrap_or((scheme, ""));
    if driver != "qemu" {
        return bad("only QEMU's driver (qemu://, qemu+ssh://, qemu+tls://…) runs Phyllome's VMs");
    }
    if !matches!(transport, "" | "ssh" | "tls" | "tcp" | "unix" | "libssh" | "libssh2" | "ext") {
        return bad(&format!("unknown transport {transport:?} (ssh, tls, tcp, unix, libssh)"));
    }
    let path = rest.split('?').next().unwrap_or_default();
    let path = &path[path.find('/').unwrap_or(path.len())..];
    if path != "/system" && path != "/session" {
        return bad("the path is /system (or /session)");
    }
    Ok(())
}

/// The list of hosts, in its file.
#[derive(Debug, Clone)]
pub struct Remotes {
    path: PathBuf,
}

impl Remotes {
    /// The state directory's list (in the tests' own build, `PHYLLOME_TEST_HOSTS_FILE` if set,
    /// so tests never touch the host's real list).
    pub fn open() -> Remotes {
        Remotes::at(&crate::paths::hosts_file())
    }

    pub fn at(path: &Path) -> Remotes {
        Remotes { path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, why: impl std::fmt::Display) -> RemoteError {
        RemoteError::File { path: self.path.display().to_string(), why: why.to_string() }
    }

    /// The hosts, in the order they were added. No file: none.
    pub fn list(&self) -> Result<Vec<Remote>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(self.err(e)),
        };
        let file: RemotesFile = toml::from_str(&text).map_err(|e| self.err(e.message()))?;
        Ok(file.host)
    }

    fn write(&self, hosts: &[Remote]) -> Result<()> {
        let text = toml::to_string(&RemotesFile { host: hosts.to_vec() }).map_err(|e| self.err(e))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let tmp = self.path.with_extension(format!("toml.{}", std::process::id()));
        let header = "# Phyllome's hosts (phyllome host add|list|remove): a name for each libvirt URI.\n";
        std::fs::write(&tmp, format!("{header}{text}")).map_err(|e| self.err(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.err(e)
        })
    }

    /// What [`Remotes::add`] would refuse, without adding (so a front end can tell it before
    /// connecting to the URI): a bad name or URI, a name or URI there already.
    pub fn check_add(&self, name: &str, uri: &str) -> Result<()> {
        self.checked(name, uri).map(drop)
    }

    fn checked(&self, name: &str, uri: &str) -> Result<Vec<Remote>> {
        check_name(name)?;
        check_uri(uri)?;
        let hosts = self.list()?;
        if let Some(h) = hosts.iter().find(|h| h.name == name) {
            return Err(RemoteError::Exists(name.into(), h.uri.clone()));
        }
        if let Some(h) = hosts.iter().find(|h| h.uri == uri) {
            return Err(RemoteError::UriExists(uri.into(), h.name.clone()));
        }
        Ok(hosts)
    }

    /// Adds a host. Its name and URI are checked; neither may be there already.
    pub fn add(&self, name: &str, uri: &str) -> Result<Remote> {
        let mut hosts = self.checked(name, uri)?;
        let host = Remote { name: name.into(), uri: uri.into() };
        hosts.push(host.clone());
        self.write(&hosts)?;
        Ok(host)
    }

    /// Removes a host from the list (nothing on the host itself changes).
    pub fn remove(&self, name: &str) -> Result<Remote> {
        let mut hosts = self.list()?;
        let Some(i) = hosts.iter().position(|h| h.name == name) else {
            return Err(RemoteError::Unknown(name.into()));
        };
        let host = hosts.remove(i);
        self.write(&hosts)?;
        Ok(host)
    }

    /// The URI of a host by name.
    pub fn uri(&self, name: &str) -> Result<String> {
        self.list()?
            .into_iter()
            .find(|h| h.name == name)
            .map(|h| h.uri)
            .ok_or_else(|| RemoteError::Unknown(name.into()))
    }

    /// The name a URI was added under, if any (for messages: a host's name says more than its URI).
    pub fn name_of(&self, uri: &str) -> Option<String> {
        self.list().ok()?.into_iter().find(|h| h.uri == uri).map(|h| h.name)
    }

    /// Every host to show in one list: this host's own connection first (as `local`),
    /// then the added ones (one whose URI is the local one is not repeated).
    pub fn all(&self, local_uri: &str) -> Result<Vec<Remote>> {
        let mut all = vec![Remote { name: LOCAL.into(), uri: local_uri.into() }];
        all.extend(self.list()?.into_iter().filter(|h| h.uri != local_uri));
        Ok(all)
    }
}

/// Connects to a host (no time bound: an ssh URI may ask for a password on the terminal).
/// Any failure is [`RemoteError::Unreachable`].
pub fn connect(host: &Remote) -> Result<Libvirt> {
    // libvirt's own words (the URI is in the error already).
    Libvirt::connect(&host.uri).map_err(|e| unreachable(host, e.message))
}

/// Connects to `uri`, giving up after `within` (a host that does not answer, an ssh
/// that would ask a password): libvirt's words, or that it did not answer in time. The
/// connection attempt that was given up ends in its own thread.
pub fn connect_within(uri: &str, within: Duration) -> std::result::Result<Libvirt, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let u = uri.to_string();
    std::thread::spawn(move || {
        let _ = tx.send(Libvirt::connect(&u).map_err(|e| e.message));
    });
    rx.recv_timeout(within).unwrap_or_else(|_| Err(format!("no answer within {} s", within.as_secs())))
}

fn unreachable(host: &Remote, why: impl std::fmt::Display) -> RemoteError {
    RemoteError::Unreachable { name: host.name.clone(), uri: host.uri.clone(), why: why.to_string() }
}

/// `f` on every host at once, each host's connection and work bounded by `within`: one host that
/// does not answer (or fails) does not hold back or fail the others. Results come in the hosts'
/// order: [`RemoteError::Unreachable`] when the host could not be connected to in time,
/// [`RemoteError::OnHost`] when `f` failed there. A host that never answers leaves its thread
/// waiting in libvirt; it ends with the process.
pub fn on_each<T, E, F>(hosts: &[Remote], within: Duration, f: F) -> Vec<(Remote, Result<T>)>
where
    T: Send + 'static,
    E: std::fmt::Display,
    F: Fn(&Libvirt) -> std::result::Result<T, E> + Send + Sync + 'static,
{
    let f = std::sync::Arc::new(f);
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, host) in hosts.iter().enumerate() {
        let (f, tx, host) = (f.clone(), tx.clone(), host.clone());
        std::thread::spawn(move || {
            let r = connect(&host)
                .and_then(|lv| f(&lv).map_err(|e| RemoteError::OnHost { name: host.name.clone(), why: e.to_string() }));
            let _ = tx.send((i, r));
        });
    }
    drop(tx);
    let mut results: Vec<Option<Result<T>>> = hosts.iter().map(|_| None).collect();
    let deadline = std::time::Instant::now() + within;
    while results.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, r)) => results[i] = Some(r),
            Err(_) => break,
        }
    }
    let late = format!("no answer within {} s", within.as_secs());
    hosts.iter().zip(results).map(|(h, r)| (h.clone(), r.unwrap_or_else(|| Err(unreachable(h, &late))))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> (PathBuf, Remotes) {
        let dir = std::env::temp_dir().join(format!(
            "phyllome-test-hosts-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        let h = Remotes::at(&dir.join("hosts.toml"));
        (dir, h)
    }

    #[test]
    fn add_list_remove_round_trip() {
        let (dir, h) = temp();
        assert!(h.list().unwrap().is_empty(), "no file: no hosts");
        h.add("b", "qemu+ssh://root@b.example/system").unwrap();
        h.add("a", "qemu+unix:///system?socket=/run/x/libvirt-sock").unwrap();
        let names: Vec<_> = h.list().unwrap().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["b", "a"], "the order they were added");
        assert_eq!(h.uri("a").unwrap(), "qemu+unix:///system?socket=/run/x/libvirt-sock");
        assert!(matches!(h.add("a", "qemu+tls://other/system"), Err(RemoteError::Exists(..))));
        assert!(matches!(h.add("c", "qemu+ssh://root@b.example/system"), Err(RemoteError::UriExists(..))));
        assert_eq!(h.remove("b").unwrap().name, "b");
        assert!(matches!(h.remove("b"), Err(RemoteError::Unknown(_))));
        assert!(matches!(h.uri("b"), Err(RemoteError::Unknown(_))));
        let all: Vec<_> = h.all("qemu:///system").unwrap().into_iter().map(|h| h.name).collect();
        assert_eq!(all, ["local", "a"]);
        // No temporary file stays beside it.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "lab-2", "0x"] {
            check_name(good).unwrap();
        }
        for bad in ["", "-a", "A", "a b", "a/b", "ä", &"x".repeat(64)] {
            assert!(matches!(check_name(bad), Err(RemoteError::BadName(_))), "{bad:?}");
        }
        assert!(matches!(check_name("local"), Err(RemoteError::Reserved(_))));
    }

    #[test]
    fn uris_are_checked() {
        for good in [
            "qemu:///system",
            "qemu+ssh://root@host/system",
            "qemu+tls://host.example:16514/system",
            "qemu+unix:///system?socket=/run/phyllome-test/libvirt-sock",
            "qemu+ssh://u@h/session?keyfile=/k",
        ] {
            check_uri(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "server",
            "xen+ssh://h/system",
            "qemu+ftp://h/system",
            "qemu+ssh://h/",
            "qemu+ssh://h",
            "qemu+ssh://h/system x",
            "qemu+ssh://h/system\n",
        ] {
            assert!(matches!(check_uri(bad), Err(RemoteError::BadUri(_))), "{bad:?}");
        }
    }

    #[test]
    fn a_dead_host_is_unreachable_at_once_and_in_order() {
        let dead = |n: &str| Remote {
            name: n.into(),
            uri: format!("qemu+unix:///system?socket=/nonexistent/phyllome-test-{n}/libvirt-sock"),
        };
        let hosts = [dead("a"), dead("b")];
        let t = std::time::Instant::now();
        let got = on_each(&hosts, REACH_WITHIN, |lv| lv.versions());
        assert!(t.elapsed() < REACH_WITHIN, "a dead socket fails at once");
        let names: Vec<_> = got.iter().map(|(h, _)| h.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        for (_, r) in got {
            let e = r.unwrap_err();
            assert!(matches!(e, RemoteError::Unreachable { .. }), "{e}");
            assert_eq!(e.kind(), crate::errors::ErrorKind::Unavailable);
        }
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let (dir, h) = temp();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(h.path(), "[[host]]\nname = 1\n").unwrap();
        let e = h.list().unwrap_err().to_string();
        assert!(e.contains("hosts.toml"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
