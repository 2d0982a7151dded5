//! Cron schedules in IANA time zones (croner + chrono-tz), and the conversion between their
//! chrono times and the `time` crate used everywhere else.
//!
//! A schedule fire is a durable timer (see the engine): the next fire time is computed once,
//! stored, and re-armed from the stored time after it fires, so a restart neither skips nor
//! repeats a fire.

use std::str::FromStr;

use chrono::TimeZone;
use time::OffsetDateTime;

use crate::{Error, Result};

/// A parsed cron pattern with its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl CronSchedule {
    /// Parses `pattern` (5 or 6 fields) in the time zone `timezone` (`Europe/Paris`, `UTC`).
    /// Errors name `trigger.cron` / `trigger.timezone`.
    pub fn parse(pattern: &str, timezone: &str) -> Result<Self> {
        let cron = croner::Cron::from_str(pattern)
            .map_err(|e| Error::invalid("trigger.cron", e.to_string()))?;
        let tz = chrono_tz::Tz::from_str(timezone)
            .map_err(|_| Error::invalid("trigger.timezone", "is not an IANA time zone"))?;
        Ok(Self { cron, tz })
    }

    /// The first fire time strictly after `after`, if the pattern ever fires again.
    pub fn next_after(&self, after: OffsetDateTime) -> Option<OffsetDateTime> {
        let secs = after.unix_timestamp();
        let start = self.tz.timestamp_opt(secs, after.nanosecond()).single()?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        OffsetDateTime::from_unix_timestamp(next.timestamp()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn next_fire_respects_the_time_zone() {
        let s = CronSchedule::parse("0 9 * * *", "Europe/Paris").unwrap();
        // 2026-01-15 08:30 UTC = 09:30 Paris: next 09:00 Paris is the 16th, 08:00 UTC.
        let next = s.next_after(datetime!(2026-01-15 08:30 UTC)).unwrap();
        assert_eq!(next, datetime!(2026-01-16 08:00 UTC));
        assert!(CronSchedule::parse("61 * * * *", "UTC").is_err());
        assert!(CronSchedule::parse("* * * * *", "Mars/Olympus").is_err());
    }
}
