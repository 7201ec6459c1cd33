//! `phyllome serve` (the web UI and REST API) and `phyllome user` (its accounts).

use super::render::utc;
use super::Fallible;
use clap::{Args, Subcommand};
use phyllome_web::{self as web, auth, tls::TlsMode};
use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Any address but loopback is served over TLS only.
    #[arg(long, value_name = "ADDR:PORT", env = "PHYLLOME_LISTEN", default_value = web::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Use TLS on loopback too (a self-signed certificate unless --tls-cert is given).
    #[arg(long)]
    tls: bool,
    /// PEM certificate chain to serve (default: a self-signed one, made on first start and kept).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The host's ISO folder: the installer ISOs (and kernels, initrds) the web UI offers.
    #[arg(long, value_name = "DIR", default_value = web::DEFAULT_MEDIA_DIR)]
    iso_dir: PathBuf,
    /// noVNC's directory (the npm package @novnc/novnc); found automatically when installed.
    #[arg(long, value_name = "DIR")]
    novnc_dir: Option<PathBuf>,
    /// The npm folder of the UI's libraries (Preact with htm, xterm.js); found automatically when installed.
    #[arg(long, value_name = "DIR")]
    vendor_dir: Option<PathBuf>,
    /// Log lines as text or as JSON (one object a line), on standard error.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// error, warn, info, or debug (every request with its route, status, time and user).
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = ["error", "warn", "info", "debug"])]
    log_level: String,
    /// Accounts, API tokens and the certificate.
    #[arg(long, value_name = "DIR", default_value = web::DEFAULT_STATE_DIR, hide = true)]
    state_dir: PathBuf,
    /// Seconds without a request after which a session ends.
    #[arg(long, value_name = "SECS", default_value_t = 3600, hide = true)]
    session_idle: u64,
    /// Seconds between full re-reads of the VM list (events keep it current in between).
    #[arg(long, value_name = "SECS", default_value_t = 30, hide = true)]
    resync: u64,
    /// Benchmarks only: every console connects to this loopback address instead of the VM's display.
    #[arg(long, value_name = "ADDR:PORT", hide = true)]
    bench_console_target: Option<SocketAddr>,
    /// Benchmarks only: sample the VMs' statistics this often (default 1000 ms), so an hour of
    /// samples takes minutes.
    #[arg(long, value_name = "MS", default_value_t = 1000, hide = true)]
    bench_stats_interval_ms: u64,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an account for the web UI and API. The password is read from the
    /// terminal (asked twice) or, when standard input is not a terminal, as its first line.
    Add {
        name: String,
        #[arg(long, value_name = "DIR", default_value = web::DEFAULT_STATE_DIR, hide = true)]
        state_dir: PathBuf,
    },
    /// Remove an account, its API tokens and its sessions.
    Remove {
        name: String,
        #[arg(long, value_name = "DIR", default_value = web::DEFAULT_STATE_DIR, hide = true)]
        state_dir: PathBuf,
    },
    /// List the accounts.
    List {
        #[arg(long, value_name = "DIR", default_value = web::DEFAULT_STATE_DIR, hide = true)]
        state_dir: PathBuf,
    },
    /// Make an API token for an account (`Authorization: Bearer TOKEN`); printed once, stored hashed.
    /// With --list, list the tokens (of NAME, or all) with when each was made and last used;
    /// with --revoke ID, revoke one.
    Token {
        /// The account (with --list: only its tokens).
        #[arg(required_unless_present_any = ["list", "revoke"])]
        name: Option<String>,
        /// List the tokens: id, account, made, last used.
        #[arg(long, conflicts_with = "revoke")]
        list: bool,
        /// Revoke the token with this id (the part after `phyllome_` in the token, or from --list).
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
        /// With --list: as JSON.
        #[arg(long)]
        json: bool,
        /// Make a read-only metrics token: it reads /metrics (Prometheus) and nothing else.
        #[arg(long, conflicts_with_all = ["list", "revoke"])]
        metrics: bool,
        #[arg(long, value_name = "DIR", default_value = web::DEFAULT_STATE_DIR, hide = true)]
        state_dir: PathBuf,
    },
}

pub fn serve(uri: &str, a: ServeArgs) -> Fallible {
    let tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => TlsMode::Files { cert, key },
        _ if a.tls => TlsMode::SelfSigned,
        _ => TlsMode::Off,
    };
    let mut config = web::Config::new(a.listen, uri);
    config.tls = tls;
    config.state_dir = a.state_dir;
    config.media_dir = a.iso_dir;
    config.novnc_dir = a.novnc_dir;
    config.session_idle = Duration::from_secs(a.session_idle.max(1));
    config.resync = Duration::from_secs(a.resync.max(1));
    config.console_override = a.bench_console_target;
    config.stats_interval = Duration::from_millis(a.bench_stats_interval_ms.clamp(10, 60_000));
    config.vendor_dir = a.vendor_dir;
    // The other hosts of `phyllome host add`: their VMs are listed too (each host watched on its own connection).
    config.hosts = phyllome_engine::remotes::Remotes::open()
        .all(uri)?
        .into_iter()
        .filter(|h| h.name != phyllome_engine::remotes::LOCAL)
        .collect();
    let hosts: Vec<String> = config.hosts.iter().map(|h| h.name.clone()).collect();
    let format = if a.log_format == "json" { web::LogFormat::Json } else { web::LogFormat::Text };
    web::init_logging(format, &a.log_level)?;
    web::serve(config, |s| {
        let tls = if s.tls.is_some() { "TLS" } else { "plain HTTP, loopback only" };
        println!("phyllome serve: listening on {} ({tls})", s.url);
        if let Some(t) = &s.tls {
            let made = if t.generated { ", made now" } else { "" };
            println!("phyllome serve: certificate {}{made}", t.cert_path.display());
            println!("phyllome serve: certificate SHA-256 fingerprint {}", t.fingerprint);
        }
        if !hosts.is_empty() {
            println!("phyllome serve: VMs of this host (local) and of {}", hosts.join(", "));
        }
        if s.users == 0 {
            println!("phyllome serve: no accounts yet: add one with `phyllome user add NAME`");
        }
        if s.novnc.is_none() {
            println!(
                "phyllome serve: noVNC not found: consoles will not open (install the phyllome package, which ships it in /usr/share/phyllome/novnc, or pass --novnc-dir)"
            );
        }
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}

/// Reads a new password: twice without echo from a terminal, else the first line of standard input.
fn read_new_password(name: &str) -> Result<String, String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: ")).map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Repeat the password: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the two passwords differ".into());
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

pub fn user(cmd: UserCommand) -> Fallible {
    match cmd {
        UserCommand::Add { name, state_dir } => {
            auth::validate_user_name(&name)?;
            let store = auth::Store::open(&state_dir)?;
            if store.users()?.iter().any(|u| u.name == name) {
                return Err(auth::AuthError::Exists(name).into());
            }
            let password = read_new_password(&name)?;
            store.add_user(&name, &password)?;
            eprintln!("phyllome: added user {name}");
        }
        UserCommand::Remove { name, state_dir } => {
            auth::Store::open(&state_dir)?.remove_user(&name)?;
            eprintln!("phyllome: removed user {name} and their API tokens (their sessions end within seconds)");
        }
        UserCommand::List { state_dir } => {
            let store = auth::Store::open(&state_dir)?;
            let tokens = store.tokens()?;
            for u in store.users()? {
                let n = tokens.iter().filter(|t| t.user == u.name).count();
                println!("{}  ({n} API token{})", u.name, if n == 1 { "" } else { "s" });
            }
        }
        UserCommand::Token { revoke: Some(id), state_dir, .. } => {
            let t = auth::Store::open(&state_dir)?.revoke_token(&id)?;
            eprintln!("phyllome: revoked API token {} of {} (servers stop taking it within seconds)", t.id, t.user);
        }
        UserCommand::Token { list: true, name, json, state_dir, .. } => {
            let store = auth::Store::open(&state_dir)?;
            if let Some(n) = &name {
                if !store.users()?.iter().any(|u| &u.name == n) {
                    return Err(auth::AuthError::NoUser(n.clone()).into());
                }
            }
            let tokens: Vec<_> =
                store.tokens()?.into_iter().filter(|t| name.as_ref().is_none_or(|n| &t.user == n)).collect();
            if json {
                let rows: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        serde_json::json!({"id": t.id, "user": t.user, "created": t.created,
                                           "last_used": t.last_used, "metrics": t.metrics})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if tokens.is_empty() {
                eprintln!("phyllome: no API tokens");
            } else {
                println!("{:<18} {:<12} {:<8} {:<22} LAST USED", "ID", "USER", "SCOPE", "CREATED");
                for t in &tokens {
                    let last = t.last_used.map_or("never".to_string(), utc);
                    let scope = if t.metrics { "metrics" } else { "api" };
                    println!("{:<18} {:<12} {scope:<8} {:<22} {last}", t.id, t.user, utc(t.created));
                }
            }
        }
        UserCommand::Token { name, state_dir, metrics, .. } => {
            let name = name.unwrap_or_default();
            let token = auth::Store::open(&state_dir)?.new_token(&name, metrics)?;
            let what = if metrics { "metrics token (reads /metrics only)" } else { "API token" };
            eprintln!("phyllome: {what} for {name} (shown once; send it as `Authorization: Bearer TOKEN`):");
            println!("{token}");
        }
    }
    Ok(())
}
