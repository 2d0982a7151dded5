//! The injectable clock: Slack's 5-minute window, Standard Webhooks timestamps, retry backoff
//! and token expiry ask it for "now", so tests can step over a window deterministically while
//! production uses the system clock.

use std::fmt::Debug;
use std::sync::Mutex;

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + Debug {
    /// Now (microsecond precision, like everything pm stores).
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        pm_core::model::now()
    }
}

/// A clock that moves only when told to (for tests and simulations).
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl Default for ManualClock {
    fn default() -> Self {
        Self::at(pm_core::model::now())
    }
}

impl ManualClock {
    /// A clock standing at `t`.
    pub fn at(t: OffsetDateTime) -> Self {
        Self(Mutex::new(pm_core::model::truncate_micros(t)))
    }

    /// Moves forward by `d`.
    pub fn advance(&self, d: std::time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now = pm_core::model::truncate_micros(*now + d);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
