//! pm-permissions integration tests: the engine against a naive reference model (differential,
//! ≥ 100,000 cases), property tests of its invariants, the `valid_until` boundary with an
//! injected clock, the store conformance suite on SQLite (always) and PostgreSQL (when
//! `PM_TEST_POSTGRES_URL` is set; each test creates its own database), and the service.

mod boundary;
mod differential;
mod model_gen;
mod props;
mod service;
mod stores;
