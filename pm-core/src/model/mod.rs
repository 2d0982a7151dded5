//! The domain model: plain data types plus the parse-don't-validate newtypes that guard them.
//!
//! Nothing here knows about storage or HTTP. Constructors such as [`TaskTitle::parse`] are the
//! only way to build a constrained value, and they fail with [`Error::Invalid`](crate::Error)
//! naming the field, so a value that exists is a value that is valid.

mod directory;
mod project;
pub mod rank;
mod task;
mod tracking;
mod values;

pub use directory::*;
pub use project::*;
pub use task::*;
pub use tracking::*;
pub use values::*;

use time::OffsetDateTime;

/// The current time truncated to whole microseconds: the precision both SQLite (integer micros)
/// and PostgreSQL (`timestamptz`) store, so a value round-trips through any store unchanged.
pub fn now() -> OffsetDateTime {
    truncate_micros(OffsetDateTime::now_utc())
}

/// Truncates a timestamp to whole microseconds (see [`now`]).
pub fn truncate_micros(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    t.replace_nanosecond(nanos - nanos % 1_000).expect("truncating nanoseconds stays in range")
}
