//! Accounts, API tokens, sessions and login throttling for `phyllome serve`.
//!
//! - Accounts live in `STATE/users.json` (0600, in a 0700 directory) with
//!   argon2id password hashes; `phyllome user add` writes them.
//! - API tokens (`phyllome user token NAME`) are shown once; only their
//!   SHA-256 is stored, in `STATE/tokens.json`.
//! - Sessions live in memory only: a random 256-bit id in an HttpOnly,
//!   SameSite=Strict cookie, plus a CSRF token the page sends back in a
//!   header. They end on logout, after an idle time, after a maximum age,
//!   and when their user is removed.
//! - Failed logins lock the user name (and, more loosely, the client
//!   address) out for a growing time.

use crate::crypto::{ct_eq, random_bytes, random_secret, sha256};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Shortest password `user add` accepts.
pub const MIN_PASSWORD: usize = 8;
/// Longest password hashed (argon2 takes any length; this bounds the work a request can ask for).
pub const MAX_PASSWORD: usize = 1024;

/// The account store's errors: the operation failed.
impl phyllome_engine::errors::Classify for AuthError {
    fn kind(&self) -> phyllome_engine::errors::ErrorKind {
        phyllome_engine::errors::ErrorKind::Failed
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("user name {0:?} is not valid: 1-32 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    BadName(String),
    #[error("the password is too short: at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("the password is too long: at most {MAX_PASSWORD} bytes")]
    LongPassword,
    #[error("user {0:?} already exists")]
    Exists(String),
    #[error("no user {0:?}")]
    NoUser(String),
    #[error("no API token {0:?} (`phyllome user token --list` shows them)")]
    NoToken(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not valid JSON: {1}")]
    Corrupt(String, serde_json::Error),
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

pub fn validate_user_name(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(AuthError::BadName(name.to_string()))
    }
}

/// argon2id with OWASP's 12 MiB / 3 passes / 1 lane setting: about as costly
/// to attack as their 19 MiB / 2 setting, with a smaller peak in the server.
const M_COST_KIB: u32 = 12 * 1024;
const T_COST: u32 = 3;

fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(M_COST_KIB, T_COST, 1, None).expect("valid argon2 params"),
    )
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AuthError::ShortPassword);
    }
    if password.len() > MAX_PASSWORD {
        return Err(AuthError::LongPassword);
    }
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| AuthError::Hash(e.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored PHC string (its own parameters apply).
pub fn verify_password(hash: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so an unknown
/// name takes as long to refuse as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_secret()).unwrap_or_default())
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// argon2id PHC string.
    pub hash: String,
    pub created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<User>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub user: String,
    /// SHA-256 of the secret part, in hex.
    pub sha256: String,
    pub created: u64,
    /// When it was last used (UNIX seconds, kept to the minute).
    #[serde(default)]
    pub last_used: Option<u64>,
    /// A metrics token: it reads `/metrics` and nothing else.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metrics: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokensFile {
    tokens: Vec<Token>,
}

/// The account files in the state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (and creates, 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Store, AuthError> {
        let io = |e| AuthError::Io(dir.display().to_string(), e);
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        Ok(Store { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn users_path(&self) -> PathBuf {
        self.dir.join("users.json")
    }

    fn tokens_path(&self) -> PathBuf {
        self.dir.join("tokens.json")
    }

    fn read<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T, AuthError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| AuthError::Corrupt(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(AuthError::Io(path.display().to_string(), e)),
        }
    }

    /// Writes a file readable by root only, atomically (a reader sees the old or the new file).
    fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), AuthError> {
        let io = |e| AuthError::Io(path.display().to_string(), e);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let text = serde_json::to_vec_pretty(value).expect("serializable");
        f.write_all(&text).and_then(|_| f.sync_all()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    pub fn users(&self) -> Result<Vec<User>, AuthError> {
        Ok(Self::read::<UsersFile>(&self.users_path())?.users)
    }

    pub fn tokens(&self) -> Result<Vec<Token>, AuthError> {
        Ok(Self::read::<TokensFile>(&self.tokens_path())?.tokens)
    }

    pub fn add_user(&self, name: &str, password: &str) -> Result<(), AuthError> {
        validate_user_name(name)?;
        let mut file = Self::read::<UsersFile>(&self.users_path())?;
        if file.users.iter().any(|u| u.name == name) {
            return Err(AuthError::Exists(name.to_string()));
        }
        let hash = hash_password(password)?;
        file.users.push(User { name: name.to_string(), hash, created: now_secs() });
        Self::write(&self.users_path(), &file)
    }

    /// Removes a user and their API tokens.
    pub fn remove_user(&self, name: &str) -> Result<(), AuthError> {
        let mut file = Self::read::<UsersFile>(&self.users_path())?;
        let before = file.users.len();
        file.users.retain(|u| u.name != name);
        if file.users.len() == before {
            return Err(AuthError::NoUser(name.to_string()));
        }
        Self::write(&self.users_path(), &file)?;
        let mut tokens = Self::read::<TokensFile>(&self.tokens_path())?;
        tokens.tokens.retain(|t| t.user != name);
        Self::write(&self.tokens_path(), &tokens)
    }

    /// Makes an API token for `user` (with `metrics`, one that only reads
    /// `/metrics`); returns its text, which is not stored and cannot be shown again.
    pub fn new_token(&self, user: &str, metrics: bool) -> Result<String, AuthError> {
        if !self.users()?.iter().any(|u| u.name == user) {
            return Err(AuthError::NoUser(user.to_string()));
        }
        let id = hex::encode(random_bytes::<8>());
        let secret = random_secret();
        let mut file = Self::read::<TokensFile>(&self.tokens_path())?;
        file.tokens.push(Token {
            id: id.clone(),
            user: user.to_string(),
            sha256: hex::encode(sha256(secret.as_bytes())),
            created: now_secs(),
            last_used: None,
            metrics,
        });
        Self::write(&self.tokens_path(), &file)?;
        Ok(format!("phyllome_{id}_{secret}"))
    }

    /// Revokes one API token by its id; returns it.
    pub fn revoke_token(&self, id: &str) -> Result<Token, AuthError> {
        let mut file = Self::read::<TokensFile>(&self.tokens_path())?;
        let Some(i) = file.tokens.iter().position(|t| t.id == id) else {
            return Err(AuthError::NoToken(id.to_string()));
        };
        let t = file.tokens.remove(i);
        Self::write(&self.tokens_path(), &file)?;
        Ok(t)
    }

    /// Records when tokens were last used (`id` to UNIX seconds).
    fn record_use(&self, used: &HashMap<String, u64>) -> Result<(), AuthError> {
        let mut file = Self::read::<TokensFile>(&self.tokens_path())?;
        let mut changed = false;
        for t in &mut file.tokens {
            if let Some(&when) = used.get(&t.id) {
                if t.last_used.is_none_or(|l| l < when) {
                    t.last_used = Some(when);
                    changed = true;
                }
            }
        }
        if changed {
            Self::write(&self.tokens_path(), &file)?;
        }
        Ok(())
    }

    fn stamp(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let m = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (m(self.users_path()), m(self.tokens_path()))
    }
}

/// Who made a request, and how.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    /// The session's CSRF token; None for API tokens (nothing ambient to forge).
    pub csrf: Option<String>,
    /// SHA-256 of the session id, to end or touch the session later.
    pub session: Option<[u8; 32]>,
    /// The API token's id.
    pub token: Option<String>,
    /// A metrics token's principal: `/metrics` only.
    pub metrics_only: bool,
}

struct Session {
    user: String,
    csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// Live sessions, keyed by the SHA-256 of their id (the id itself is kept nowhere).
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Session>>,
    idle: Duration,
    max_age: Duration,
}

const MAX_SESSIONS: usize = 10_000;

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), idle, max_age }
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) < self.idle && now.duration_since(s.created) < self.max_age
    }

    /// Starts a session; returns its id (for the cookie) and CSRF token.
    pub fn create(&self, user: &str) -> (String, String) {
        let id = random_secret();
        let csrf = random_secret();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| self.live(s, now));
            if map.len() >= MAX_SESSIONS {
                if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(
            sha256(id.as_bytes()),
            Session { user: user.into(), csrf: csrf.clone(), created: now, last_seen: now },
        );
        (id, csrf)
    }

    /// The session with this cookie value, if it is live; `touch` restarts its idle time.
    pub fn get(&self, id: &str, touch: bool) -> Option<Principal> {
        let key = sha256(id.as_bytes());
        self.get_key(&key, touch)
    }

    pub fn get_key(&self, key: &[u8; 32], touch: bool) -> Option<Principal> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(key)?;
        if !self.live(s, now) {
            map.remove(key);
            return None;
        }
        if touch {
            s.last_seen = now;
        }
        Some(Principal {
            user: s.user.clone(),
            csrf: Some(s.csrf.clone()),
            session: Some(*key),
            token: None,
            metrics_only: false,
        })
    }

    pub fn remove(&self, key: &[u8; 32]) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Ends the sessions of users who no longer exist.
    pub fn retain_users(&self, users: &HashSet<String>) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, s| users.contains(&s.user));
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// One throttle rule: after `free` failures within the window a key is
/// locked for `first`, doubling with each further failure, up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub free: u32,
    pub first: Duration,
    pub max: Duration,
}

/// Failures per user name from one source network, before that pair locks.
pub const PAIR: Rule = Rule { free: 5, first: Duration::from_secs(30), max: Duration::from_secs(15 * 60) };
/// Failures from one source network (/24 or /64), whatever the user names.
pub const NETWORK: Rule = Rule { free: 20, first: Duration::from_secs(30), max: Duration::from_secs(15 * 60) };
/// Failures against one user name from everywhere: a short lock only, and
/// not for a browser that logged in as that user before (its device cookie).
pub const USER: Rule = Rule { free: 50, first: Duration::from_secs(15), max: Duration::from_secs(60) };
/// Password checks per second, in total, in a burst of up to `BURST`.
pub const CHECKS_PER_SEC: f64 = 10.0;
pub const BURST: f64 = 20.0;
const WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_KEYS: usize = 10_000;

/// The source network a client address counts in: its /24 (IPv4) or /64
/// (IPv6), so rotating addresses within one allocation gains nothing.
pub fn network_of(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4)),
            None => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Failed-login bookkeeping (see [`Rule`]) and the total rate of password checks.
pub struct Throttle {
    map: Mutex<HashMap<String, Failures>>,
    bucket: Mutex<(f64, Instant)>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle { map: Mutex::new(HashMap::new()), bucket: Mutex::new((BURST, Instant::now())) }
    }
}

impl Throttle {
    /// How long `key` stays locked, if it is.
    pub fn locked(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).and_then(|f| f.locked_until).filter(|&t| t > now).map(|t| t - now)
    }

    pub fn fail(&self, key: &str, rule: Rule) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, f| now.duration_since(f.last) < WINDOW || f.locked_until.is_some_and(|t| t > now));
            if map.len() >= MAX_KEYS {
                if let Some(oldest) = map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        let f = map.entry(key.to_string()).or_insert(Failures { count: 0, last: now, locked_until: None });
        if now.duration_since(f.last) >= WINDOW && f.locked_until.is_none_or(|t| t <= now) {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
        if f.count >= rule.free {
            let extra = (f.count - rule.free).min(16);
            let lock = (rule.first * 2u32.pow(extra)).min(rule.max);
            f.locked_until = Some(now + lock);
        }
    }

    pub fn reset(&self, key: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Takes one password check from the total budget; Err(wait) when spent.
    pub fn take_check(&self) -> Result<(), Duration> {
        let now = Instant::now();
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let tokens = (b.0 + now.duration_since(b.1).as_secs_f64() * CHECKS_PER_SEC).min(BURST);
        if tokens >= 1.0 {
            *b = (tokens - 1.0, now);
            Ok(())
        } else {
            *b = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / CHECKS_PER_SEC))
        }
    }
}

/// Hashing slots: a fixed number of threads, each running one check at a
/// time; checks wait in a bounded queue, and past it the login is refused as
/// busy. So password checks use at most `SLOTS` x 12 MiB and `SLOTS` cores
/// however many logins come. A check's 12 MiB is mapped for it and unmapped
/// after it ([`crate::return_big_allocations`] makes malloc do so), so an
/// idle server holds none of it.
pub struct Hasher {
    jobs: mpsc::SyncSender<Job>,
}

pub const SLOTS: usize = 2;
/// Checks that may wait for a slot.
pub const QUEUE: usize = 8;

struct Job {
    hash: String,
    password: String,
    done: tokio::sync::oneshot::Sender<bool>,
}

/// Why a check did not run.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// Every slot and queue place is taken.
    Full,
    /// The slots are gone (shutting down).
    Gone,
}

impl Hasher {
    pub fn new(slots: usize) -> Hasher {
        let (jobs, rx) = mpsc::sync_channel::<Job>(QUEUE);
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..slots {
            let rx = std::sync::Arc::clone(&rx);
            let _ = std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || loop {
                let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let mut memory = vec![argon2::Block::default(); M_COST_KIB as usize];
                let ok = verify_with(&job.hash, &job.password, &mut memory);
                drop(memory);
                let _ = job.done.send(ok);
            });
        }
        Hasher { jobs }
    }

    /// Checks `password` against the PHC string `hash` on a slot.
    pub async fn verify(&self, hash: String, password: String) -> Result<bool, Busy> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs.try_send(Job { hash, password, done }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => Busy::Full,
            mpsc::TrySendError::Disconnected(_) => Busy::Gone,
        })?;
        result.await.map_err(|_| Busy::Gone)
    }
}

/// argon2 verification into caller-provided memory. Hashes with other
/// parameters than ours (more memory than a slot holds) are refused.
fn verify_with(hash: &str, password: &str, memory: &mut [argon2::Block]) -> bool {
    if password.len() > MAX_PASSWORD {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return false };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    if params.block_count() > memory.len() || parsed.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return false };
    let version = parsed.version.and_then(|v| Version::try_from(v).ok()).unwrap_or(Version::V0x13);
    let mut out = vec![0u8; expected.len()];
    let a = Argon2::new(Algorithm::Argon2id, version, params.clone());
    if a.hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..params.block_count()])
        .is_err()
    {
        return false;
    }
    ct_eq(&out, expected.as_bytes())
}

#[derive(Debug)]
pub enum LoginError {
    /// Too many failures, or too many checks at once: try again after this long.
    Throttled(Duration),
    /// Every hashing slot is busy: try again in a moment.
    Busy,
    /// Wrong name or password (never says which).
    Refused,
}

#[derive(Default)]
struct Cached {
    users: HashMap<String, String>,
    tokens: HashMap<String, Token>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

/// Browsers that logged in: the SHA-256 of their device cookie, to the user
/// and when it was issued. In memory, bounded.
const MAX_DEVICES: usize = 10_000;
pub const DEVICE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything the server needs to tell who is asking.
pub struct Auth {
    store: Store,
    cached: Mutex<Cached>,
    pub sessions: Sessions,
    throttle: Throttle,
    hasher: Hasher,
    devices: Mutex<HashMap<[u8; 32], (String, Instant)>>,
    /// Token id to when it was last used, not yet written to tokens.json.
    used: Mutex<HashMap<String, u64>>,
}

/// What a successful login gives the client.
pub struct LoggedIn {
    pub principal: Principal,
    /// The session cookie's value.
    pub session_id: String,
    /// A new device cookie's value (this browser logged in as this user).
    pub device: String,
}

impl Auth {
    pub fn new(store: Store, idle: Duration, max_age: Duration) -> Auth {
        let auth = Auth {
            store,
            cached: Mutex::default(),
            sessions: Sessions::new(idle, max_age),
            throttle: Throttle::default(),
            hasher: Hasher::new(SLOTS),
            devices: Mutex::default(),
            used: Mutex::default(),
        };
        auth.reload();
        auth
    }

    /// Rereads the account files when they changed (`phyllome user ...` ran);
    /// sessions of removed users end. Returns the number of users.
    pub fn reload(&self) -> usize {
        let stamp = self.store.stamp();
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if c.stamp == stamp && stamp != (None, None) {
            return c.users.len();
        }
        // A file that cannot be read keeps what was loaded before, except that
        // a missing file means no entries.
        if let Ok(users) = self.store.users() {
            c.users = users.into_iter().map(|u| (u.name, u.hash)).collect();
        }
        if let Ok(tokens) = self.store.tokens() {
            c.tokens =
                tokens.into_iter().filter(|t| c.users.contains_key(&t.user)).map(|t| (t.id.clone(), t)).collect();
        }
        c.stamp = stamp;
        let names: HashSet<String> = c.users.keys().cloned().collect();
        let n = names.len();
        drop(c);
        self.sessions.retain_users(&names);
        n
    }

    /// Writes the tokens' last-used times (called every few seconds; blocking).
    pub fn flush_token_use(&self) {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|e| e.into_inner()));
        if !used.is_empty() {
            let _ = self.store.record_use(&used);
        }
    }

    pub fn user_count(&self) -> usize {
        self.cached.lock().unwrap_or_else(|e| e.into_inner()).users.len()
    }

    fn trusted_device(&self, user: &str, device: Option<&str>) -> bool {
        let Some(d) = device else { return false };
        let key = sha256(d.as_bytes());
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(&key).is_some_and(|(u, at)| u == user && at.elapsed() < DEVICE_MAX_AGE)
    }

    fn new_device(&self, user: &str) -> String {
        let id = random_secret();
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if devices.len() >= MAX_DEVICES {
            devices.retain(|_, (_, at)| at.elapsed() < DEVICE_MAX_AGE);
            if devices.len() >= MAX_DEVICES {
                if let Some(oldest) = devices.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k) {
                    devices.remove(&oldest);
                }
            }
        }
        devices.insert(sha256(id.as_bytes()), (user.to_string(), Instant::now()));
        id
    }

    /// Checks a name and password. `device` is the browser's device cookie,
    /// if it sent one. Throttled as the module documentation says.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        addr: IpAddr,
        device: Option<&str>,
    ) -> Result<LoggedIn, LoginError> {
        self.reload();
        let net = network_of(addr);
        let pair_key = format!("pair:{user}@{net}");
        let net_key = format!("net:{net}");
        let user_key = format!("user:{user}");
        let trusted = self.trusted_device(user, device);
        let mut wait = self.throttle.locked(&net_key);
        if !trusted {
            wait = wait.max(self.throttle.locked(&pair_key)).max(self.throttle.locked(&user_key));
        }
        if let Some(w) = wait {
            return Err(LoginError::Throttled(w));
        }
        self.throttle.take_check().map_err(LoginError::Throttled)?;
        let hash = self.cached.lock().unwrap_or_else(|e| e.into_inner()).users.get(user).cloned();
        let known = hash.is_some();
        // An unknown name takes as long to refuse as a wrong password.
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let ok = match self.hasher.verify(hash, password.to_string()).await {
            Ok(ok) => ok && known,
            Err(_) => return Err(LoginError::Busy),
        };
        if !ok {
            self.throttle.fail(&pair_key, PAIR);
            self.throttle.fail(&net_key, NETWORK);
            self.throttle.fail(&user_key, USER);
            return Err(LoginError::Refused);
        }
        self.throttle.reset(&pair_key);
        let (id, csrf) = self.sessions.create(user);
        Ok(LoggedIn {
            principal: Principal {
                user: user.to_string(),
                csrf: Some(csrf),
                session: Some(sha256(id.as_bytes())),
                token: None,
                metrics_only: false,
            },
            session_id: id,
            device: self.new_device(user),
        })
    }

    /// Whether the API token `id` still exists (not revoked, its user not removed).
    pub fn token_exists(&self, id: &str) -> bool {
        self.reload();
        self.cached.lock().unwrap_or_else(|e| e.into_inner()).tokens.contains_key(id)
    }

    /// An API token from an `Authorization: Bearer` header.
    pub fn token(&self, text: &str) -> Option<Principal> {
        let rest = text.strip_prefix("phyllome_")?;
        let (id, secret) = rest.split_once('_')?;
        self.reload();
        let c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let t = c.tokens.get(id)?;
        if !ct_eq(hex::encode(sha256(secret.as_bytes())).as_bytes(), t.sha256.as_bytes()) {
            return None;
        }
        let now = now_secs();
        if t.last_used.is_none_or(|l| now >= l + 60) {
            self.used.lock().unwrap_or_else(|e| e.into_inner()).insert(t.id.clone(), now);
        }
        Some(Principal {
            user: t.user.clone(),
            csrf: None,
            session: None,
            token: Some(t.id.clone()),
            metrics_only: t.metrics,
        })
    }

    /// `user`'s API tokens (without their hashes), with last use.
    pub fn tokens_of(&self, user: &str) -> Vec<Token> {
        self.reload();
        let c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Token> = c
            .tokens
            .values()
            .filter(|t| t.user == user)
            .map(|t| Token { sha256: String::new(), last_used: used.get(&t.id).copied().or(t.last_used), ..t.clone() })
            .collect();
        v.sort_by_key(|t| t.created);
        v
    }

    /// Revokes `user`'s token `id` (a user can revoke only their own).
    pub fn revoke(&self, user: &str, id: &str) -> Result<(), AuthError> {
        let mine = self.store.tokens()?.iter().any(|t| t.id == id && t.user == user);
        if !mine {
            return Err(AuthError::NoToken(id.to_string()));
        }
        self.store.revoke_token(id)?;
        self.reload();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("phyllome-auth-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn users_are_hashed_private_and_checked() {
        let dir = temp_dir("users");
        let store = Store::open(&dir).unwrap();
        store.add_user("alice", "correct horse").unwrap();
        assert!(matches!(store.add_user("alice", "whatever1"), Err(AuthError::Exists(_))));
        assert!(matches!(store.add_user("Bob", "whatever1"), Err(AuthError::BadName(_))));
        assert!(matches!(store.add_user("bob", "short"), Err(AuthError::ShortPassword)));
        let text = std::fs::read_to_string(dir.join("users.json")).unwrap();
        assert!(!text.contains("correct horse") && text.contains("$argon2id$"));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("users.json")), 0o600);
        assert_eq!(mode(&dir), 0o700);

        let auth = Auth::new(store.clone(), Duration::from_secs(60), Duration::from_secs(600));
        let addr: IpAddr = "127.0.0.1".parse().unwrap();
        let id = block_on(auth.login("alice", "correct horse", addr, None)).ok().unwrap().session_id;
        assert_eq!(auth.sessions.get(&id, true).unwrap().user, "alice");
        assert!(matches!(block_on(auth.login("alice", "wrong", addr, None)), Err(LoginError::Refused)));
        assert!(matches!(block_on(auth.login("nobody", "correct horse", addr, None)), Err(LoginError::Refused)));

        let token = store.new_token("alice", false).unwrap();
        let listed = auth.tokens_of("alice");
        assert_eq!(listed.len(), 1);
        assert!(listed[0].sha256.is_empty(), "the list leaks the token's hash");
        assert!(!std::fs::read_to_string(dir.join("tokens.json")).unwrap().contains(&token[30..]));
        assert_eq!(auth.token(&token).unwrap().user, "alice");
        // The same token with its last digit changed (to another digit: a random '0' stays '0' otherwise).
        let other = if token.ends_with('0') { '1' } else { '0' };
        assert!(auth.token(&format!("{}{other}", &token[..token.len() - 1])).is_none());
        assert!(auth.tokens_of("alice")[0].last_used.is_some(), "use is not recorded");
        auth.flush_token_use();
        assert!(store.tokens().unwrap()[0].last_used.is_some(), "use is not written");
        // Revoked one by one: the other keeps working.
        let second = store.new_token("alice", false).unwrap();
        let first_id = listed[0].id.clone();
        assert!(matches!(auth.revoke("bob", &first_id), Err(AuthError::NoToken(_))), "revoked another's token");
        auth.revoke("alice", &first_id).unwrap();
        assert!(auth.token(&token).is_none(), "a revoked token still works");
        assert_eq!(auth.token(&second).unwrap().user, "alice");
        store.remove_user("alice").unwrap();
        assert!(auth.token(&token).is_none(), "a removed user's token still works");
        assert!(auth.sessions.get(&id, false).is_none(), "a removed user's session still works");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn throttle_locks_after_free_failures_and_grows() {
        let t = Throttle::default();
        for _ in 0..PAIR.free - 1 {
            t.fail("pair:x", PAIR);
            assert!(t.locked("pair:x").is_none());
        }
        t.fail("pair:x", PAIR);
        let first = t.locked("pair:x").unwrap();
        assert!(first > Duration::from_secs(25) && first <= Duration::from_secs(30));
        t.fail("pair:x", PAIR);
        assert!(t.locked("pair:x").unwrap() > Duration::from_secs(55));
        t.reset("pair:x");
        assert!(t.locked("pair:x").is_none());
        // The user-wide lock stays short however many failures come.
        for _ in 0..1000 {
            t.fail("user:y", USER);
        }
        assert!(t.locked("user:y").unwrap() <= USER.max);
    }

    #[test]
    fn addresses_count_by_network() {
        let n = |s: &str| network_of(s.parse().unwrap());
        assert_eq!(n("192.0.2.7"), n("192.0.2.200"));
        assert_ne!(n("192.0.2.7"), n("192.0.3.7"));
        assert_eq!(n("2001:db8:1:2::1"), n("2001:db8:1:2:ffff::9"));
        assert_ne!(n("2001:db8:1:2::1"), n("2001:db8:1:3::1"));
        assert_eq!(n("::ffff:192.0.2.9"), n("192.0.2.1"));
    }

    #[test]
    fn the_total_rate_of_checks_is_bounded() {
        let t = Throttle::default();
        let allowed = (0..1000).filter(|_| t.take_check().is_ok()).count();
        assert!(allowed >= BURST as usize && allowed <= BURST as usize + 2, "{allowed} checks passed at once");
        assert!(t.take_check().unwrap_err() <= Duration::from_millis(110));
    }

    #[test]
    fn a_stranger_cannot_lock_a_user_out_from_elsewhere() {
        let dir = temp_dir("lockout");
        let store = Store::open(&dir).unwrap();
        store.add_user("carol", "correct horse").unwrap();
        let auth = Auth::new(store, Duration::from_secs(60), Duration::from_secs(600));
        let attacker: IpAddr = "198.51.100.9".parse().unwrap();
        let carol_ip: IpAddr = "203.0.113.5".parse().unwrap();
        // A first login from carol's browser gives it a device cookie.
        let device = block_on(auth.login("carol", "correct horse", carol_ip, None)).ok().unwrap().device;
        for i in 0..PAIR.free + 3 {
            let r = block_on(auth.login("carol", &format!("guess {i}"), attacker, None));
            assert!(matches!(r, Err(LoginError::Refused | LoginError::Throttled(_))));
        }
        // The attacker's network is locked for carol...
        assert!(matches!(
            block_on(auth.login("carol", "correct horse", "198.51.100.77".parse().unwrap(), None)),
            Err(LoginError::Throttled(_))
        ));
        // ...carol from her own network is not, nor is her known browser.
        assert!(block_on(auth.login("carol", "correct horse", carol_ip, None)).is_ok());
        assert!(block_on(auth.login("carol", "correct horse", "192.0.2.1".parse().unwrap(), Some(&device))).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn sessions_expire_when_idle() {
        let s = Sessions::new(Duration::from_millis(50), Duration::from_secs(60));
        let (id, csrf) = s.create("u");
        assert_eq!(s.get(&id, true).unwrap().csrf.as_deref(), Some(csrf.as_str()));
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&id, true).is_none());
    }
}
