//! pm-workflows integration tests: definition parsing and validation (paths, limits), the
//! published JSON Schema against the types, and the rhai sandbox's limits.

mod definitions;
mod engine;
mod leases;
mod scripts;
mod stores;
mod templates;
