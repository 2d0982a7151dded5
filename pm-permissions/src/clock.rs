//! The injectable clock: the engine asks it for "now" on every check, so tests can stand exactly
//! on a `valid_until` boundary and production uses the system clock.

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, Ordering};

use time::OffsetDateTime;

/// A source of the current time, in microseconds since the Unix epoch (the precision stores keep).
pub trait Clock: Send + Sync + Debug {
    /// Now, in microseconds since the Unix epoch.
    fn now_micros(&self) -> i64;

    /// Now, as a timestamp.
    fn now(&self) -> OffsetDateTime {
        from_micros(self.now_micros())
    }
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> i64 {
        micros(OffsetDateTime::now_utc())
    }
}

/// A clock that moves only when told to (for tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn at(t: OffsetDateTime) -> Self {
        Self(AtomicI64::new(micros(t)))
    }

    /// Moves to `t` (backwards too).
    pub fn set(&self, t: OffsetDateTime) {
        self.0.store(micros(t), Ordering::SeqCst);
    }

    /// Moves forward by `d`.
    pub fn advance(&self, d: time::Duration) {
        let us = i64::try_from(d.whole_microseconds()).unwrap_or(i64::MAX);
        self.0.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Microseconds since the epoch (saturating).
pub fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(if t.year() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// Inverse of [`micros`] (saturating at the representable range).
pub fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).unwrap_or(if us < 0 {
        OffsetDateTime::UNIX_EPOCH
    } else {
        time::macros::datetime!(9999-12-31 23:59:59.999999 UTC)
    })
}
