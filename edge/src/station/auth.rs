//! Sign-in for the nurse station: local station users with argon2id password hashes, server-side sessions with
//! an idle timeout and an absolute lifetime, per-session anti-CSRF tokens, and a lockout after repeated failed
//! sign-ins. Pure logic: every function that depends on time takes `now`, so the tests drive the clock.
//!
//! Nothing here stores a password or a session token in the clear: passwords are kept only as argon2id PHC
//! strings (from the config), session tokens only as their SHA-256 (the browser holds the token itself).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Shortest password `hash_password` accepts.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted anywhere (argon2 itself has no practical limit; this bounds the work per attempt).
pub const MAX_PASSWORD_BYTES: usize = 256;
/// Most live sessions; when full, expired ones are pruned and then the least recently used is ended.
pub const MAX_SESSIONS: usize = 10_000;
/// Most failure records kept (per user and per address); older ones are pruned first.
const MAX_FAILURE_RECORDS: usize = 10_000;
/// An address is locked after this many times `max_failed_logins` failures, whatever user ids it tried
/// (password spraying across accounts). Higher than the per-user limit because a ward PC is shared.
pub const ADDRESS_FAILURE_FACTOR: u32 = 4;

/// What a station user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Views the ward, acknowledges and silences alarms, changes a patient's NEWS2 SpO2 scale.
    Nurse,
    /// Views the ward only.
    Viewer,
}

impl Role {
    /// Whether this role may act (acknowledge, silence, change the SpO2 scale).
    pub fn may_act(self) -> bool {
        matches!(self, Self::Nurse)
    }

    /// The role's name as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nurse => "nurse",
            Self::Viewer => "viewer",
        }
    }
}

/// Password and hash errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// The password is too short or too long.
    #[error(
        "a station password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} bytes long and have no control characters"
    )]
    Unacceptable,
    /// The stored hash is not an argon2id PHC string.
    #[error(
        "password_hash is not an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash): {0}"
    )]
    BadHash(String),
    /// Hashing failed (argon2 parameter error; not expected with the defaults).
    #[error("hashing failed: {0}")]
    Hashing(String),
}

/// Hashes `password` for a `[[station.users]]` entry: argon2id with the crate's default (OWASP) parameters
/// (19 MiB, 2 passes, 1 lane) and a random 16-byte salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < MIN_PASSWORD_CHARS
        || password.len() > MAX_PASSWORD_BYTES
        || password.chars().any(char::is_control)
    {
        return Err(PasswordError::Unacceptable);
    }
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Checks that `phc` is an argon2id PHC string with a salt and an output (what the config must hold).
pub fn check_hash(phc: &str) -> Result<(), PasswordError> {
    let h = PasswordHash::new(phc).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    if h.algorithm != Algorithm::Argon2id.ident() {
        return Err(PasswordError::BadHash(format!(
            "algorithm is {}, not argon2id",
            h.algorithm
        )));
    }
    if h.salt.is_none() || h.hash.is_none() {
        return Err(PasswordError::BadHash("salt or hash missing".into()));
    }
    argon2::Params::try_from(&h).map_err(|e| PasswordError::BadHash(e.to_string()))?;
    Ok(())
}

/// Whether `password` matches the argon2id PHC string `phc` (slow by design; run it off the async threads).
/// A malformed hash never matches.
pub fn verify_password(phc: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random token: 32 bytes from the thread's CSPRNG, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Who is signed in, as a session knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedIn {
    /// The user id (what every recorded action names).
    pub user: String,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// This session's anti-CSRF token: every state-changing request must send it in `X-CSRF-Token`.
    pub csrf_token: String,
}

#[derive(Debug, Clone)]
struct Session {
    who: SignedIn,
    created: Instant,
    last_seen: Instant,
}

/// Why a session was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No such session (never issued, signed out, or pruned).
    #[error("not signed in")]
    Unknown,
    /// The session was idle longer than the idle timeout.
    #[error("session expired after inactivity; sign in again")]
    IdleExpired,
    /// The session reached its absolute lifetime.
    #[error("session reached its maximum lifetime; sign in again")]
    LifetimeExpired,
}

/// The live sessions, keyed by the SHA-256 of their token.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<[u8; 32], Session>,
    idle: Duration,
    lifetime: Duration,
}

impl Sessions {
    /// Sessions that end after `idle` without activity or `lifetime` after sign-in, whichever comes first.
    pub fn new(idle: Duration, lifetime: Duration) -> Self {
        Self {
            map: HashMap::new(),
            idle,
            lifetime,
        }
    }

    /// Opens a session for `user`; returns its token (for the cookie) and who it is (with its CSRF token).
    pub fn open(&mut self, user: &str, name: &str, role: Role, now: Instant) -> (String, SignedIn) {
        if self.map.len() >= MAX_SESSIONS {
            self.prune(now);
        }
        if self.map.len() >= MAX_SESSIONS
            && let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
        {
            self.map.remove(&oldest);
        }
        let token = random_token();
        let who = SignedIn {
            user: user.to_string(),
            name: name.to_string(),
            role,
            csrf_token: random_token(),
        };
        self.map.insert(
            token_key(&token),
            Session {
                who: who.clone(),
                created: now,
                last_seen: now,
            },
        );
        (token, who)
    }

    /// The session of `token` at `now`. `activity` marks a request made by the user (it restarts the idle
    /// timer); the live stream checks its session without it, so an open page alone does not keep a session
    /// alive. An expired session is ended.
    pub fn check(
        &mut self,
        token: &str,
        now: Instant,
        activity: bool,
    ) -> Result<SignedIn, SessionError> {
        let key = token_key(token);
        let s = self.map.get_mut(&key).ok_or(SessionError::Unknown)?;
        let why = if now.saturating_duration_since(s.created) >= self.lifetime {
            Some(SessionError::LifetimeExpired)
        } else if now.saturating_duration_since(s.last_seen) >= self.idle {
            Some(SessionError::IdleExpired)
        } else {
            None
        };
        if let Some(why) = why {
            self.map.remove(&key);
            return Err(why);
        }
        if activity {
            s.last_seen = now;
        }
        Ok(s.who.clone())
    }

    /// Ends the session of `token`; whether there was one.
    pub fn close(&mut self, token: &str) -> bool {
        self.map.remove(&token_key(token)).is_some()
    }

    /// Ends every expired session; returns how many.
    pub fn prune(&mut self, now: Instant) -> usize {
        let before = self.map.len();
        let (idle, lifetime) = (self.idle, self.lifetime);
        self.map.retain(|_, s| {
            now.saturating_duration_since(s.created) < lifetime
                && now.saturating_duration_since(s.last_seen) < idle
        });
        before - self.map.len()
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed sign-ins per user id and per client address, and the lockouts they cause. A user id is locked for
/// `lockout` after `max_failures` consecutive failures; an address after `ADDRESS_FAILURE_FACTOR` times as many
/// (whatever user ids it tried). Failures older than `lockout` are forgotten. While locked, sign-in is refused
/// without checking the password, so a locked account cannot be probed.
#[derive(Debug)]
pub struct Throttle {
    by_user: HashMap<String, Failures>,
    by_addr: HashMap<IpAddr, Failures>,
    max_failures: u32,
    lockout: Duration,
    by_address: bool,
}

/// A refusal because of a lockout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    /// When to try again.
    pub retry_after: Duration,
    /// Whether the address (rather than the user id) is locked.
    pub address: bool,
}

impl Throttle {
    /// A throttle locking after `max_failures` for `lockout`.
    pub fn new(max_failures: u32, lockout: Duration) -> Self {
        Self {
            by_user: HashMap::new(),
            by_addr: HashMap::new(),
            max_failures: max_failures.max(1),
            lockout,
            by_address: true,
        }
    }

    /// No per-address limit: for a station behind a reverse proxy, where every client has the proxy's address
    /// (a limit on it would let anyone lock the whole ward out). The per-user limit stays.
    pub fn without_address_limit(mut self) -> Self {
        self.by_address = false;
        self
    }

    fn locked(f: Option<&Failures>, now: Instant) -> Option<Duration> {
        f.and_then(|f| f.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Refuses a sign-in attempt for `user` from `addr` while either is locked. `user` is `None` for an
    /// unknown user id (only the address is checked and counted, so unknown ids do not fill the table).
    pub fn check(&self, user: Option<&str>, addr: IpAddr, now: Instant) -> Result<(), Locked> {
        if let Some(d) = Self::locked(self.by_addr.get(&addr), now).filter(|_| self.by_address) {
            return Err(Locked {
                retry_after: d,
                address: true,
            });
        }
        if let Some(d) = user.and_then(|u| Self::locked(self.by_user.get(u), now)) {
            return Err(Locked {
                retry_after: d,
                address: false,
            });
        }
        Ok(())
    }

    fn bump(f: &mut Failures, limit: u32, lockout: Duration, now: Instant) -> bool {
        if now.saturating_duration_since(f.last) >= lockout
            || f.locked_until.is_some_and(|u| u <= now)
        {
            f.count = 0;
            f.locked_until = None;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= limit && f.locked_until.is_none() {
            f.locked_until = Some(now + lockout);
            return true;
        }
        false
    }

    /// Records a failed sign-in; returns whether it locked the user id or the address.
    pub fn failure(&mut self, user: Option<&str>, addr: IpAddr, now: Instant) -> bool {
        if self.by_user.len() >= MAX_FAILURE_RECORDS || self.by_addr.len() >= MAX_FAILURE_RECORDS {
            self.prune(now);
        }
        let fresh = Failures {
            count: 0,
            last: now,
            locked_until: None,
        };
        let (max, lockout) = (self.max_failures, self.lockout);
        let mut locked = false;
        if let Some(u) = user {
            let f = self.by_user.entry(u.to_string()).or_insert(fresh);
            locked |= Self::bump(f, max, lockout, now);
        }
        if self.by_address {
            let f = self.by_addr.entry(addr).or_insert(fresh);
            locked |= Self::bump(f, max.saturating_mul(ADDRESS_FAILURE_FACTOR), lockout, now);
        }
        locked
    }

    /// Records a successful sign-in: the user's failures are forgotten (the address's too).
    pub fn success(&mut self, user: &str, addr: IpAddr) {
        self.by_user.remove(user);
        self.by_addr.remove(&addr);
    }

    fn prune(&mut self, now: Instant) {
        let lockout = self.lockout;
        let keep = |f: &Failures| {
            f.locked_until.is_some_and(|u| u > now)
                || now.saturating_duration_since(f.last) < lockout
        };
        self.by_user.retain(|_, f| keep(f));
        self.by_addr.retain(|_, f| keep(f));
        // Still full (a flood within one lockout window): drop the oldest unlocked records.
        for map_len in [self.by_user.len(), self.by_addr.len()] {
            if map_len >= MAX_FAILURE_RECORDS {
                self.by_user.retain(|_, f| f.locked_until.is_some());
                self.by_addr.retain(|_, f| f.locked_until.is_some());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_verifies_only_its_password_and_is_salted() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        check_hash(&h).unwrap();
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterY"));
        assert!(!verify_password(&h, ""));
        // Salted: the same password hashes differently each time, and both verify.
        let h2 = hash_password("correct horse battery").unwrap();
        assert_ne!(h, h2);
        assert!(verify_password(&h2, "correct horse battery"));
        // The plain password never appears in the hash.
        assert!(!h.contains("correct"));
    }

    #[test]
    fn weak_passwords_and_foreign_hashes_are_refused() {
        assert_eq!(hash_password("short"), Err(PasswordError::Unacceptable));
        assert_eq!(
            hash_password("has a\nnewline in it"),
            Err(PasswordError::Unacceptable)
        );
        assert_eq!(
            hash_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::Unacceptable)
        );
        assert!(matches!(
            check_hash("plaintext-password"),
            Err(PasswordError::BadHash(_))
        ));
        // argon2i (not id) and a PHC string without output are refused.
        assert!(matches!(
            check_hash(
                "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"
            ),
            Err(PasswordError::BadHash(_))
        ));
        assert!(matches!(
            check_hash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0"),
            Err(PasswordError::BadHash(_))
        ));
        assert!(!verify_password("not a hash", "whatever password"));
    }

    #[test]
    fn sessions_expire_when_idle_and_at_their_lifetime() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60), Duration::from_secs(300));
        let (tok, who) = s.open("n.ward", "Nurse Ward", Role::Nurse, t0);
        assert_eq!(who.user, "n.ward");
        assert_eq!(who.csrf_token.len(), 64);
        assert_ne!(tok, who.csrf_token);
        // Activity within the idle timeout keeps it alive.
        let t = t0 + Duration::from_secs(50);
        assert_eq!(s.check(&tok, t, true).unwrap().user, "n.ward");
        // A check without activity (the live stream) does not restart the idle timer.
        assert!(s.check(&tok, t + Duration::from_secs(59), false).is_ok());
        assert_eq!(
            s.check(&tok, t + Duration::from_secs(60), false),
            Err(SessionError::IdleExpired)
        );
        // Ended for good.
        assert_eq!(
            s.check(&tok, t + Duration::from_secs(61), true),
            Err(SessionError::Unknown)
        );
        // Activity every 50 s still ends at the lifetime.
        let (tok, _) = s.open("n.ward", "Nurse Ward", Role::Nurse, t0);
        let mut t = t0;
        let mut last = Ok(());
        for _ in 0..7 {
            t += Duration::from_secs(50);
            last = s.check(&tok, t, true).map(|_| ());
            if last.is_err() {
                break;
            }
        }
        assert_eq!(last, Err(SessionError::LifetimeExpired));
        assert!(t <= t0 + Duration::from_secs(300));
    }

    #[test]
    fn sign_out_ends_only_that_session_and_unknown_tokens_fail() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60), Duration::from_secs(300));
        let (a, _) = s.open("a", "A", Role::Nurse, t0);
        let (b, _) = s.open("b", "B", Role::Viewer, t0);
        assert!(s.close(&a));
        assert!(!s.close(&a));
        assert_eq!(s.check(&a, t0, true), Err(SessionError::Unknown));
        assert_eq!(s.check(&b, t0, true).unwrap().role, Role::Viewer);
        assert_eq!(s.check("", t0, true), Err(SessionError::Unknown));
        assert_eq!(
            s.check(&"0".repeat(64), t0, true),
            Err(SessionError::Unknown)
        );
        assert_eq!(s.prune(t0 + Duration::from_secs(61)), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn lockout_after_max_failures_then_released() {
        let addr: IpAddr = "10.1.2.3".parse().unwrap();
        let t0 = Instant::now();
        let mut th = Throttle::new(3, Duration::from_secs(120));
        assert!(th.check(Some("n"), addr, t0).is_ok());
        assert!(!th.failure(Some("n"), addr, t0));
        assert!(!th.failure(Some("n"), addr, t0));
        assert!(th.check(Some("n"), addr, t0).is_ok());
        assert!(th.failure(Some("n"), addr, t0), "third failure locks");
        let l = th
            .check(Some("n"), addr, t0 + Duration::from_secs(1))
            .unwrap_err();
        assert!(!l.address);
        assert_eq!(l.retry_after, Duration::from_secs(119));
        // Other users from the same address are not locked by one user's failures.
        assert!(th.check(Some("m"), addr, t0).is_ok());
        // Released after the lockout; the count starts again.
        let later = t0 + Duration::from_secs(121);
        assert!(th.check(Some("n"), addr, later).is_ok());
        assert!(!th.failure(Some("n"), addr, later));
        // Success forgets failures.
        th.success("n", addr);
        assert!(!th.failure(Some("n"), addr, later));
        assert!(!th.failure(Some("n"), addr, later));
    }

    #[test]
    fn an_address_spraying_user_ids_is_locked() {
        let addr: IpAddr = "10.9.9.9".parse().unwrap();
        let other: IpAddr = "10.9.9.10".parse().unwrap();
        let t0 = Instant::now();
        let mut th = Throttle::new(2, Duration::from_secs(60));
        let limit = 2 * ADDRESS_FAILURE_FACTOR;
        let mut locked_at = None;
        for i in 0..limit {
            // Unknown ids (None) and distinct known ids: each id stays under its own limit.
            let user = format!("u{i}");
            let u = if i % 2 == 0 {
                None
            } else {
                Some(user.as_str())
            };
            if th.failure(u, addr, t0) {
                locked_at = Some(i + 1);
            }
        }
        assert_eq!(locked_at, Some(limit));
        let l = th.check(Some("fresh"), addr, t0).unwrap_err();
        assert!(l.address);
        assert!(th.check(Some("fresh"), other, t0).is_ok());
    }

    #[test]
    fn behind_a_proxy_only_user_ids_are_locked() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        let mut th = Throttle::new(2, Duration::from_secs(60)).without_address_limit();
        for i in 0..(2 * ADDRESS_FAILURE_FACTOR * 3) {
            assert!(
                !th.failure(None, proxy, t0),
                "attempt {i} locked the proxy address"
            );
        }
        assert!(th.check(Some("n"), proxy, t0).is_ok());
        assert!(!th.failure(Some("n"), proxy, t0));
        assert!(th.failure(Some("n"), proxy, t0));
        assert!(!th.check(Some("n"), proxy, t0).unwrap_err().address);
        assert!(th.check(Some("m"), proxy, t0).is_ok());
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert!(!constant_time_eq("", "a"));
    }
}
