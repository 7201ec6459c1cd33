//! `phyllome serve`: a REST API, a web UI and VM consoles in the browser,
//! over the same core as the CLI (`phyllome_engine::vm`, the OS catalog, the host
//! check and the device inventory), so the API refuses what the CLI refuses.
//!
//! - [`routes`]: the route table; the router and the OpenAPI document both come from it;
//! - [`http`]: the request pipeline: origin check, authentication, CSRF, dispatch;
//! - [`api`]: the handlers;
//! - [`auth`]: accounts, API tokens, sessions, login throttling;
//! - [`inventory`]: the VM list, kept current by libvirt lifecycle events;
//! - [`ws`]: WebSocket framing and the VNC console proxy;
//! - [`tls`]: rustls, with a kept self-signed certificate by default;
//! - [`assets`]: the UI's files and noVNC's.
//!
//! A current-thread tokio runtime serves HTTP/1.1 (the host has few cores
//! and the VM list is answered from memory); libvirt calls, which block, run
//! on its blocking pool over one shared connection; two more threads run
//! libvirt's event loop and the VM list watcher.

pub mod api;
pub mod assets;
pub mod auth;
pub mod crypto;
pub mod http;
pub mod inventory;
pub mod routes;
pub mod tls;
pub mod ws;

use phyllome_libvirt::Libvirt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where `phyllome serve` keeps accounts, tokens and its certificate.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/phyllome/serve";
/// The host's ISO folder: installer media the web UI offers.
pub const DEFAULT_MEDIA_DIR: &str = "/var/lib/phyllome/isos";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7440";

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// libvirt URI.
    pub uri: String,
    pub state_dir: PathBuf,
    pub tls: tls::TlsMode,
    /// The ISO folder (installer ISOs, kernels and initrds create may use).
    pub media_dir: PathBuf,
    pub novnc_dir: Option<PathBuf>,
    /// A session ends after this long without a request...
    pub session_idle: Duration,
    /// ...and at the latest this long after login.
    pub session_max: Duration,
    /// How often the VM list is re-read in full (events keep it current in between).
    pub resync: Duration,
    /// Benchmarks only: every console connects here (a loopback address)
    /// instead of the VM's display.
    pub console_override: Option<SocketAddr>,
}

impl Config {
    pub fn new(listen: SocketAddr, uri: &str) -> Config {
        Config {
            listen,
            uri: uri.to_string(),
            state_dir: DEFAULT_STATE_DIR.into(),
            tls: tls::TlsMode::Off,
            media_dir: DEFAULT_MEDIA_DIR.into(),
            novnc_dir: None,
            session_idle: Duration::from_secs(3600),
            session_max: Duration::from_secs(12 * 3600),
            resync: Duration::from_secs(30),
            console_override: None,
        }
    }
}

/// What the server tells its caller once it listens.
#[derive(Debug, Clone)]
pub struct Started {
    pub addr: SocketAddr,
    pub url: String,
    pub tls: Option<tls::TlsInfo>,
    pub users: usize,
    pub novnc: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Libvirt(#[from] phyllome_libvirt::Error),
    #[error(transparent)]
    Inventory(#[from] inventory::InventoryError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The server's shared state.
pub struct App {
    pub config: Config,
    pub auth: auth::Auth,
    pub inventory: inventory::Inventory,
    pub openapi: bytes::Bytes,
    pub tls: bool,
    pub novnc: Option<PathBuf>,
    /// Password checks running at once (each takes 12 MiB and ~50 ms of CPU).
    pub login_slots: tokio::sync::Semaphore,
    lv: Mutex<Option<Arc<Libvirt>>>,
}

impl App {
    /// The shared libvirt connection (libvirt connections are thread-safe),
    /// reopened when libvirtd went away. Blocking: call from blocking threads.
    pub fn libvirt(&self) -> Result<Arc<Libvirt>, phyllome_libvirt::Error> {
        let mut slot = self.lv.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lv) = slot.as_ref().filter(|l| l.is_alive()) {
            return Ok(Arc::clone(lv));
        }
        let lv = Arc::new(Libvirt::connect(&self.config.uri)?);
        *slot = Some(Arc::clone(&lv));
        Ok(lv)
    }

    /// The cookie that carries the session id (`__Host-` under TLS: Secure, host-only, Path=/).
    pub fn cookie_name(&self) -> &'static str {
        if self.tls {
            "__Host-phyllome_session"
        } else {
            "phyllome_session"
        }
    }
}

/// A line in the server's log (standard error). Never given secrets.
pub fn log(msg: &str) {
    eprintln!("phyllome serve: {msg}");
}

/// Runs the server until SIGINT or SIGTERM. `on_ready` is called once it listens.
pub fn serve(config: Config, on_ready: impl FnOnce(&Started)) -> Result<(), ServeError> {
    if let Some(t) = config.console_override {
        if !t.ip().is_loopback() {
            return Err(ServeError::Config(format!("the console override {t} must be a loopback address")));
        }
    }
    let mode = match (&config.tls, tls::plain_http_allowed(&config.listen)) {
        (tls::TlsMode::Off, false) => tls::TlsMode::SelfSigned,
        (m, _) => m.clone(),
    };
    let store = auth::Store::open(&config.state_dir)?;
    let tls = tls::load(&mode, &config.state_dir, &config.listen)?;
    // Before any libvirt connection, so the watcher's connection gets events.
    phyllome_libvirt::start_event_loop()?;
    let inventory = inventory::Inventory::start(&config.uri, config.resync)?;
    let auth = auth::Auth::new(store, config.session_idle, config.session_max);
    let novnc = assets::find_novnc(config.novnc_dir.as_deref());
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(64)
        .thread_keep_alive(Duration::from_secs(30))
        .enable_all()
        .build()?;
    let app = Arc::new(App {
        openapi: bytes::Bytes::from(serde_json::to_vec_pretty(&routes::openapi()).expect("serializable")),
        tls: tls.is_some(),
        novnc: novnc.clone(),
        login_slots: tokio::sync::Semaphore::new(2),
        lv: Mutex::new(None),
        config,
        auth,
        inventory,
    });
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(app.config.listen)
            .await
            .map_err(|e| ServeError::Listen(app.config.listen, e))?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shown = if addr.ip().is_unspecified() { "HOST".to_string() } else { addr.ip().to_string() };
        let url = if addr.is_ipv6() {
            format!("{scheme}://[{shown}]:{}/", addr.port())
        } else {
            format!("{scheme}://{shown}:{}/", addr.port())
        };
        on_ready(&Started {
            addr,
            url,
            tls: tls.as_ref().map(|(_, info)| info.clone()),
            users: app.auth.user_count(),
            novnc,
        });
        let acceptor = tls.map(|(cfg, _)| tokio_rustls::TlsAcceptor::from(cfg));
        http::run(app, listener, acceptor).await;
        Ok(())
    });
    // Let running creates finish their rollback (they watch SIGTERM too).
    rt.shutdown_timeout(Duration::from_secs(30));
    result
}
