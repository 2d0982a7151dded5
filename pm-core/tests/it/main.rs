//! pm-core integration tests: the conformance suite on every built-in backend, the paging
//! property test, the tailer test, and the services over a real SQLite file.
//!
//! PostgreSQL tests run when `PM_TEST_POSTGRES_URL` is set (CI sets it); each test creates its own
//! database from that URL so runs never collide.

mod backends;
mod services;
