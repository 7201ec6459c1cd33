//! `phyllome serve`: a REST API, a web UI and VM consoles in the browser,
//! over the same engine as the CLI (`phyllome_engine`), so the API refuses
//! what the CLI refuses.
//!
//! - [`api`]: the handlers, one module per resource, each with its OpenAPI entry (utoipa);
//! - [`http`]: the request pipeline (Host and origin checks, authentication, CSRF, `?host=`)
//!   and what every handler shares: errors, extractors, libvirt on the blocking pool;
//! - [`job`]: long operations (create, snapshot, clone, migrate) as JSON or as event streams;
//! - [`openapi`]: what the document adds for every route;
//! - [`auth`]: accounts, API tokens, sessions, login throttling, hashing slots;
//! - [`inventory`]: the VM list of every host, kept current by each host's libvirt lifecycle events;
//! - [`ws`]: how the VNC and serial consoles' bytes move over WebSockets;
//! - [`stats`]: a sample of every running VM a second, for charts and `/metrics`;
//! - [`tls`]: rustls, with a kept self-signed certificate by default;
//! - [`assets`]: the UI's files, its libraries and noVNC.
//!
//! axum routes on hyper, on a current-thread tokio runtime (the host has
//! few cores and the VM list is answered from memory); libvirt calls, which
//! block, run on its blocking pool over one shared connection per host; more
//! threads run libvirt's event loop, one VM list watcher per host and the
//! password checks.

pub mod api;
pub mod assets;
pub mod auth;
pub mod crypto;
pub mod http;
pub mod inventory;
pub mod job;
pub mod openapi;
pub mod stats;
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
    /// libvirt URI: this host's own connection (the host named `local`).
    pub uri: String,
    /// The other hosts whose VMs the list shows too (`phyllome host add`; read at start), each
    /// with a connection and a watcher of its own. Actions on their VMs: the cheap ones only.
    pub hosts: Vec<phyllome_engine::remotes::Remote>,
    pub state_dir: PathBuf,
    pub tls: tls::TlsMode,
    /// The ISO folder (installer ISOs, kernels and initrds create may use).
    pub media_dir: PathBuf,
    pub novnc_dir: Option<PathBuf>,
    /// The npm folder the UI's libraries come from.
    pub vendor_dir: Option<PathBuf>,
    /// A session ends after this long without a request...
    pub session_idle: Duration,
    /// ...and at the latest this long after login.
    pub session_max: Duration,
    /// How often the VM list is re-read in full (events keep it current in between).
    pub resync: Duration,
    /// How often the VMs' statistics are sampled (charts, `/metrics`).
    pub stats_interval: Duration,
    /// Benchmarks only: every console connects here (a loopback address)
    /// instead of the VM's display.
    pub console_override: Option<SocketAddr>,
}

impl Config {
    pub fn new(listen: SocketAddr, uri: &str) -> Config {
        Config {
            listen,
            uri: uri.to_string(),
            hosts: Vec::new(),
            state_dir: DEFAULT_STATE_DIR.into(),
            tls: tls::TlsMode::Off,
            media_dir: DEFAULT_MEDIA_DIR.into(),
            novnc_dir: None,
            vendor_dir: None,
            session_idle: Duration::from_secs(3600),
            session_max: Duration::from_secs(12 * 3600),
            resync: Duration::from_secs(30),
            stats_interval: Duration::from_secs(1),
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

/// The server could not start or went down: the operation failed.
impl phyllome_engine::errors::Classify for ServeError {
    fn kind(&self) -> phyllome_engine::errors::ErrorKind {
        phyllome_engine::errors::ErrorKind::Failed
    }
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
    pub stats: Arc<stats::Hub>,
    pub openapi: bytes::Bytes,
    pub tls: bool,
    pub novnc: Option<PathBuf>,
    pub vendor: Option<PathBuf>,
    /// Export download tickets (passphrases in memory only).
    pub exports: api::bundle::Tickets,
    /// One import at a time (the engine stages imports in a folder named by the process).
    pub imports: Arc<tokio::sync::Semaphore>,
    /// One migration at a time per server.
    pub migrations: Arc<tokio::sync::Semaphore>,
    lv: Mutex<Option<Arc<Libvirt>>>,
    /// The other hosts' connections, by host name, opened when first needed.
    remote: Mutex<std::collections::HashMap<String, Arc<Libvirt>>>,
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

    /// The URI of a configured host other than `local`, by name (never a URI from a request).
    pub fn host_uri(&self, name: &str) -> Option<&str> {
        self.config.hosts.iter().find(|h| h.name == name).map(|h| h.uri.as_str())
    }

    /// The connection to host `name` (`local`: [`App::libvirt`]), kept and
    /// reopened like the local one. Blocking: call from blocking threads.
    pub fn libvirt_on(&self, name: &str) -> Result<Arc<Libvirt>, http::ApiError> {
        if name == phyllome_engine::remotes::LOCAL {
            return Ok(self.libvirt()?);
        }
        let Some(uri) = self.host_uri(name) else { return Err(http::no_such_host(name)) };
        let conns = || self.remote.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lv) = conns().get(name).filter(|l| l.is_alive()) {
            return Ok(Arc::clone(lv));
        }
        // Not under the lock: a host slow to answer holds up no request to another.
        let lv = Libvirt::connect(uri).map_err(|e| {
            http::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("host {name} cannot be reached now: {}", e.message),
            )
        })?;
        let lv = Arc::new(lv);
        conns().insert(name.to_string(), Arc::clone(&lv));
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

    /// The cookie that marks a browser that logged in before (see [`auth::Throttle`]).
    pub fn device_cookie_name(&self) -> &'static str {
        if self.tls {
            "__Host-phyllome_device"
        } else {
            "phyllome_device"
        }
    }
}

/// How the server logs (standard error, through `tracing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets up the log: `level` is `error`, `warn`, `info` (the default) or `debug`
/// (every request). Never given secrets: see [`http::shown`].
pub fn init_logging(format: LogFormat, level: &str) -> Result<(), ServeError> {
    use std::io::IsTerminal;
    let level: tracing_subscriber::filter::LevelFilter = level
        .parse()
        .map_err(|_| ServeError::Config(format!("log level {level:?}: use error, warn, info or debug")))?;
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_max_level(level);
    let r = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().with_current_span(true).with_span_list(false).try_init(),
    };
    r.map_err(|e| ServeError::Config(format!("cannot set up the log: {e}")))
}

/// The router with every layer, and the OpenAPI document of its API.
pub fn router(app_state: impl FnOnce(bytes::Bytes) -> Arc<App>) -> (axum::Router, Arc<App>) {
    use axum::http::{HeaderName, HeaderValue, StatusCode};
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use tower_http::set_header::SetResponseHeaderLayer;

    let (api, mut doc) = api::routes().split_for_parts();
    let (upload, upload_doc) = api::upload_routes().split_for_parts();
    doc.merge(upload_doc);
    let doc = openapi::finish(doc);
    let app = app_state(bytes::Bytes::from(serde_json::to_vec_pretty(&doc).expect("serializable")));
    let api = api
        .route_layer(from_fn_with_state(Arc::clone(&app), http::host_param))
        .route_layer(from_fn_with_state(Arc::clone(&app), http::csrf));
    let upload = upload.route_layer(from_fn_with_state(Arc::clone(&app), http::csrf));
    let files = axum::Router::new()
        .route("/vendor/novnc/{*rel}", get(novnc))
        .route("/vendor/lib/{*rel}", get(lib_file))
        .fallback(ui_file)
        .layer(tower_http::compression::CompressionLayer::new());
    let set = |name: &'static str, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(HeaderName::from_static(name), HeaderValue::from_static(value))
    };
    let hsts = app.tls.then(|| set("strict-transport-security", "max-age=31536000"));
    let trace = tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(|req: &axum::http::Request<_>| {
            tracing::info_span!("request", method = %req.method(), route = tracing::field::Empty, user = tracing::field::Empty)
        })
        .on_request(())
        .on_response(|res: &axum::http::Response<_>, latency: Duration, _: &tracing::Span| {
            let status = res.status().as_u16();
            let ms = latency.as_millis() as u64;
            if res.status().is_server_error() {
                tracing::warn!(status, ms, "answered");
            } else {
                tracing::debug!(status, ms, "answered");
            }
        })
        .on_failure(());
    let router = axum::Router::new()
        .merge(api)
        .route("/metrics", get(api::metrics))
        .merge(files)
        // Bodies are small (64 KiB) everywhere but uploads, which stream to disk;
        // a layer applies to the routes added before it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024))
        .merge(upload)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(from_fn_with_state(Arc::clone(&app), http::guard))
        .layer(set("content-security-policy", http::CSP))
        .layer(set("x-content-type-options", "nosniff"))
        .layer(set("x-frame-options", "DENY"))
        .layer(set("referrer-policy", "no-referrer"))
        .layer(set("cross-origin-opener-policy", "same-origin"))
        .layer(set("cross-origin-resource-policy", "same-origin"))
        .layer(set("cache-control", "no-store"))
        .layer(tower::util::option_layer(hsts))
        // Create and a stop with its longest timeout (600 s) fit; event streams and consoles answer at once.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(900),
        ))
        .layer(trace)
        .with_state(Arc::clone(&app));
    (router, app)
}

async fn ui_file(req: axum::extract::Request) -> axum::response::Response {
    use axum::http::{header, HeaderValue, Method};
    use axum::response::IntoResponse;
    let path = req.uri().path();
    match assets::ui_file(path).filter(|_| req.method() == Method::GET || req.method() == Method::HEAD) {
        Some(body) => {
            let ctype = assets::content_type(if path == "/" { "/index.html" } else { path });
            let mut r = ([(header::CONTENT_TYPE, ctype)], body).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            r
        }
        None => http::not_found(req).await,
    }
}

async fn send_file(path: PathBuf, cache: &'static str) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let ctype = assets::content_type(&path.to_string_lossy());
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(data)) => {
            let mut r = ([(header::CONTENT_TYPE, ctype)], data).into_response();
            r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            r
        }
        _ => http::error(StatusCode::NOT_FOUND, "no such file"),
    }
}

async fn lib_file(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    axum::extract::Path(rel): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    let Some(dir) = app.vendor.as_deref() else {
        return http::error(
            StatusCode::NOT_FOUND,
            "the UI's libraries are not installed: run scripts/setup.sh (npm ci in web/vendor)",
        );
    };
    if !assets::LIB_FILES.contains(&rel.as_str()) {
        return http::error(StatusCode::NOT_FOUND, "no such file");
    }
    send_file(dir.join(rel), "public, max-age=3600").await
}

async fn novnc(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    axum::extract::Path(rel): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    let Some(dir) = app.novnc.as_deref() else {
        return http::error(
            StatusCode::NOT_FOUND,
            "noVNC is not installed: the phyllome package ships it in /usr/share/phyllome/novnc; or start phyllome serve with --novnc-dir",
        );
    };
    match assets::novnc_file(dir, &rel) {
        Some(file) => send_file(file, "private, max-age=3600").await,
        None => http::error(StatusCode::NOT_FOUND, "no such file"),
    }
}

/// Makes malloc map every allocation of 1 MiB or more on its own and unmap it
/// when freed. glibc otherwise raises that threshold as large blocks are
/// freed, and then keeps them in its arenas: each login's 12 MiB of argon2
/// memory stayed, and 200 logins left the server at ~460 MiB. (musl always
/// maps large allocations.)
#[allow(unsafe_code)]
pub fn return_big_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets one of malloc's tunables; glibc takes its own lock for it, and
    // the argument is a plain integer. Nothing else is passed or kept.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Connections served at once (event streams and consoles included).
pub const MAX_CONNECTIONS: usize = 1024;

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
    return_big_allocations();
    let store = auth::Store::open(&config.state_dir)?;
    let tls = tls::load(&mode, &config.state_dir, &config.listen)?;
    // Before any libvirt connection, so the watcher's connection gets events.
    phyllome_libvirt::start_event_loop()?;
    let inventory = inventory::Inventory::start(&config.uri, &config.hosts, config.resync)?;
    let stats = stats::Hub::start(&config.uri, config.stats_interval);
    let auth = auth::Auth::new(store, config.session_idle, config.session_max);
    let novnc = assets::find_novnc(config.novnc_dir.as_deref());
    let vendor = assets::find_vendor(config.vendor_dir.as_deref());
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(64)
        .thread_keep_alive(Duration::from_secs(30))
        .enable_all()
        .build()?;
    let is_tls = tls.is_some();
    let novnc2 = novnc.clone();
    let (router, app) = router(move |openapi| {
        Arc::new(App {
            openapi,
            tls: is_tls,
            novnc: novnc2,
            vendor,
            exports: api::bundle::Tickets::default(),
            imports: Arc::new(tokio::sync::Semaphore::new(1)),
            migrations: Arc::new(tokio::sync::Semaphore::new(1)),
            lv: Mutex::new(None),
            remote: Mutex::new(std::collections::HashMap::new()),
            config,
            auth,
            inventory,
            stats,
        })
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
        run(app, router, listener, acceptor).await;
        Ok(())
    });
    // Let running creates finish their rollback (they watch SIGTERM too).
    rt.shutdown_timeout(Duration::from_secs(30));
    result
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts connections until SIGINT or SIGTERM.
async fn run(
    app: Arc<App>,
    router: axum::Router,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let stop = async move {
        match term.as_mut() {
            Some(t) => {
                tokio::select! {
                    _ = t.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    // Account changes (`phyllome user remove`) take effect within seconds, sessions included;
    // the tokens' last use is written as often.
    let reloader = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let app = Arc::clone(&app);
                let _ = tokio::task::spawn_blocking(move || {
                    app.auth.reload();
                    app.auth.flush_token_use();
                })
                .await;
            }
        })
    };
    let _stop_reloader = AbortOnDrop(reloader);
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = &mut stop => {
                tracing::info!("stopping");
                return;
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(_) => {
                        // Out of file descriptors and the like: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past the limit a connection is closed at once (file descriptors stay for the rest).
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else { continue };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tls {
                        Some(acceptor) => {
                            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                                serve_connection(router, hyper_util::rt::TokioIo::new(s), peer).await;
                            }
                        }
                        None => serve_connection(router, hyper_util::rt::TokioIo::new(stream), peer).await,
                    }
                });
            }
        }
    }
}

async fn serve_connection<I>(router: axum::Router, io: I, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(20))
        .max_buf_size(64 * 1024)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}
