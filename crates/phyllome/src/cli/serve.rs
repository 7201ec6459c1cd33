//! `phyllome serve` (the web UI and REST API) and `phyllome user` (its accounts).

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
    Token {
        name: String,
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
    web::serve(config, |s| {
        let tls = if s.tls.is_some() { "TLS" } else { "plain HTTP, loopback only" };
        println!("phyllome serve: listening on {} ({tls})", s.url);
        if let Some(t) = &s.tls {
            let made = if t.generated { ", made now" } else { "" };
            println!("phyllome serve: certificate {}{made}", t.cert_path.display());
            println!("phyllome serve: certificate SHA-256 fingerprint {}", t.fingerprint);
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
        UserCommand::Token { name, state_dir } => {
            let token = auth::Store::open(&state_dir)?.new_token(&name)?;
            eprintln!("phyllome: API token for {name} (shown once; send it as `Authorization: Bearer TOKEN`):");
            println!("{token}");
        }
    }
    Ok(())
}
