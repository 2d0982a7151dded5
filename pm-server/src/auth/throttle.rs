//! Login throttling, in memory: failed logins are counted per account (e-mail) and per client IP
//! over a sliding window; past the limit, logins are refused with 429 and `Retry-After` before
//! the password is even checked. A successful login clears its account's count (not the IP's).
//!
//! Per process: several instances each count their own failures, so the effective limit is
//! multiplied by the instance count. Memory is bounded by pruning expired entries as keys are
//! added.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures are allowed per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Failures per account within `window` (default 5).
    pub per_account: usize,
    /// Failures per client IP within `window` (default 20).
    pub per_ip: usize,
    /// The sliding window (default 15 minutes).
    pub window: Duration,
}

impl Default for ThrottleLimits {
    fn default() -> Self {
        Self { per_account: 5, per_ip: 20, window: Duration::from_secs(15 * 60) }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Ip(IpAddr),
}

/// Failure counts (see the module docs).
#[derive(Debug, Default)]
pub struct LoginThrottle {
    limits: ThrottleLimits,
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

/// Keys kept before expired ones are pruned.
const PRUNE_ABOVE: usize = 10_000;

impl LoginThrottle {
    /// A throttle with the given limits.
    pub fn new(limits: ThrottleLimits) -> Self {
        Self { limits, failures: Mutex::default() }
    }

    /// `Err(retry_after)` when `account` or `ip` is over its limit.
    pub fn check(&self, account: &str, ip: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.lock();
        let mut wait = Duration::ZERO;
        let mut over = |key: Key, limit: usize| {
            if let Some(q) = map.get_mut(&key) {
                prune(q, now, self.limits.window);
                if q.len() >= limit {
                    // Allowed again once enough of the oldest failures leave the window.
                    let oldest = q[q.len() - limit];
                    wait = wait.max((oldest + self.limits.window).saturating_duration_since(now));
                }
            }
        };
        over(Key::Account(account.to_owned()), self.limits.per_account);
        if let Some(ip) = ip {
            over(Key::Ip(ip), self.limits.per_ip);
        }
        if wait.is_zero() { Ok(()) } else { Err(wait.max(Duration::from_secs(1))) }
    }

    /// Records a failed login.
    pub fn failed(&self, account: &str, ip: Option<IpAddr>) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, q| {
                prune(q, now, self.limits.window);
                !q.is_empty()
            });
        }
        map.entry(Key::Account(account.to_owned())).or_default().push_back(now);
        if let Some(ip) = ip {
            map.entry(Key::Ip(ip)).or_default().push_back(now);
        }
    }

    /// Records a successful login: the account's failures are forgiven.
    pub fn succeeded(&self, account: &str) {
        self.lock().remove(&Key::Account(account.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<Instant>>> {
        // Counters stay consistent even if a holder panicked.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn prune(q: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while q.front().is_some_and(|t| now.saturating_duration_since(*t) >= window) {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_accounts_and_ips() {
        let t = LoginThrottle::new(ThrottleLimits {
            per_account: 2,
            per_ip: 3,
            window: Duration::from_secs(60),
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        t.failed("a", Some(ip));
        assert!(t.check("a", Some(ip)).is_ok());
        t.failed("a", Some(ip));
        let wait = t.check("a", Some(ip)).unwrap_err();
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60), "{wait:?}");
        // Another account from the same IP: one more failure hits the IP limit.
        assert!(t.check("b", Some(ip)).is_ok());
        t.failed("b", Some(ip));
        assert!(t.check("b", Some(ip)).is_err());
        assert!(t.check("b", None).is_ok());
        // Success forgives the account, not the IP.
        t.succeeded("a");
        assert!(t.check("a", None).is_ok());
        assert!(t.check("a", Some(ip)).is_err());
    }

    #[test]
    fn failures_expire() {
        let t = LoginThrottle::new(ThrottleLimits {
            per_account: 1,
            per_ip: 1,
            window: Duration::from_millis(20),
        });
        t.failed("a", None);
        assert!(t.check("a", None).is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(t.check("a", None).is_ok());
    }
}
