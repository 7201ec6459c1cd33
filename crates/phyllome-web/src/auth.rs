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

use crate::crypto::{ct_eq, hex, random_bytes, random_secret, sha256};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Shortest password `user add` accepts.
pub const MIN_PASSWORD: usize = 8;
/// Longest password hashed (argon2 takes any length; this bounds the work a request can ask for).
pub const MAX_PASSWORD: usize = 1024;

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
fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(12 * 1024, 3, 1, None).expect("valid argon2 params"))
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

    /// Makes an API token for `user`; returns its text, which is not stored and cannot be shown again.
    pub fn new_token(&self, user: &str) -> Result<String, AuthError> {
        if !self.users()?.iter().any(|u| u.name == user) {
            return Err(AuthError::NoUser(user.to_string()));
        }
        let id = hex(&random_bytes::<8>());
        let secret = random_secret();
        let mut file = Self::read::<TokensFile>(&self.tokens_path())?;
        file.tokens.push(Token {
            id: id.clone(),
            user: user.to_string(),
            sha256: hex(&sha256(secret.as_bytes())),
            created: now_secs(),
        });
        Self::write(&self.tokens_path(), &file)?;
        Ok(format!("phyllome_{id}_{secret}"))
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
        Some(Principal { user: s.user.clone(), csrf: Some(s.csrf.clone()), session: Some(*key), token: None })
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

/// Failed-login bookkeeping: after `free` failures within the window a key is
/// locked for 30 s, doubling with each further failure, up to 15 minutes.
pub struct Throttle {
    map: Mutex<HashMap<String, Failures>>,
}

/// Failures allowed per user name, and per client address, before locking.
pub const FREE_FAILURES_USER: u32 = 5;
pub const FREE_FAILURES_ADDR: u32 = 20;
const WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_LOCK: Duration = Duration::from_secs(15 * 60);
const MAX_KEYS: usize = 10_000;

impl Default for Throttle {
    fn default() -> Self {
        Throttle { map: Mutex::new(HashMap::new()) }
    }
}

impl Throttle {
    /// How long `key` stays locked, if it is.
    pub fn locked(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).and_then(|f| f.locked_until).filter(|&t| t > now).map(|t| t - now)
    }

    pub fn fail(&self, key: &str, free: u32) {
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
        if f.count >= free {
            let extra = (f.count - free).min(10);
            let lock = (Duration::from_secs(30) * 2u32.pow(extra)).min(MAX_LOCK);
            f.locked_until = Some(now + lock);
        }
    }

    pub fn reset(&self, key: &str) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

#[derive(Debug)]
pub enum LoginError {
    /// Too many failures: try again after this long.
    Throttled(Duration),
    /// Wrong name or password (never says which).
    Refused,
}

#[derive(Default)]
struct Cached {
    users: HashMap<String, String>,
    tokens: HashMap<String, Token>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

/// Everything the server needs to tell who is asking.
pub struct Auth {
    store: Store,
    cached: Mutex<Cached>,
    pub sessions: Sessions,
    throttle: Throttle,
}

impl Auth {
    pub fn new(store: Store, idle: Duration, max_age: Duration) -> Auth {
        let auth = Auth {
            store,
            cached: Mutex::default(),
            sessions: Sessions::new(idle, max_age),
            throttle: Throttle::default(),
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

    pub fn user_count(&self) -> usize {
        self.cached.lock().unwrap_or_else(|e| e.into_inner()).users.len()
    }

    /// Checks a name and password (slow on purpose: call off the async
    /// threads). Returns the new session and its id, for the cookie.
    pub fn login(&self, user: &str, password: &str, addr: IpAddr) -> Result<(Principal, String), LoginError> {
        self.reload();
        let user_key = format!("user:{user}");
        let addr_key = format!("addr:{addr}");
        if let Some(wait) = self.throttle.locked(&user_key).max(self.throttle.locked(&addr_key)) {
            return Err(LoginError::Throttled(wait));
        }
        let hash = self.cached.lock().unwrap_or_else(|e| e.into_inner()).users.get(user).cloned();
        let ok = match &hash {
            Some(h) => verify_password(h, password),
            None => {
                verify_password(dummy_hash(), password);
                false
            }
        };
        if !ok {
            self.throttle.fail(&user_key, FREE_FAILURES_USER);
            self.throttle.fail(&addr_key, FREE_FAILURES_ADDR);
            return Err(LoginError::Refused);
        }
        self.throttle.reset(&user_key);
        let (id, csrf) = self.sessions.create(user);
        Ok((
            Principal { user: user.to_string(), csrf: Some(csrf), session: Some(sha256(id.as_bytes())), token: None },
            id,
        ))
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
        if !ct_eq(hex(&sha256(secret.as_bytes())).as_bytes(), t.sha256.as_bytes()) {
            return None;
        }
        Some(Principal { user: t.user.clone(), csrf: None, session: None, token: Some(t.id.clone()) })
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
        let (_, id) = auth.login("alice", "correct horse", addr).unwrap();
        assert_eq!(auth.sessions.get(&id, true).unwrap().user, "alice");
        assert!(matches!(auth.login("alice", "wrong", addr), Err(LoginError::Refused)));
        assert!(matches!(auth.login("nobody", "correct horse", addr), Err(LoginError::Refused)));

        let token = store.new_token("alice").unwrap();
        assert!(!std::fs::read_to_string(dir.join("tokens.json")).unwrap().contains(&token[30..]));
        assert_eq!(auth.token(&token).unwrap().user, "alice");
        assert!(auth.token(&format!("{}0", &token[..token.len() - 1])).is_none());
        store.remove_user("alice").unwrap();
        assert!(auth.token(&token).is_none(), "a removed user's token still works");
        assert!(auth.sessions.get(&id, false).is_none(), "a removed user's session still works");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn throttle_locks_after_free_failures_and_grows() {
        let t = Throttle::default();
        for _ in 0..FREE_FAILURES_USER - 1 {
            t.fail("user:x", FREE_FAILURES_USER);
            assert!(t.locked("user:x").is_none());
        }
        t.fail("user:x", FREE_FAILURES_USER);
        let first = t.locked("user:x").unwrap();
        assert!(first > Duration::from_secs(25) && first <= Duration::from_secs(30));
        t.fail("user:x", FREE_FAILURES_USER);
        assert!(t.locked("user:x").unwrap() > Duration::from_secs(55));
        t.reset("user:x");
        assert!(t.locked("user:x").is_none());
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
