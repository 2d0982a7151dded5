//! pm-workflows integration tests: definition parsing and validation (paths, limits), the
//! published JSON Schemas (workflow definitions, task templates) against the types and the
//! parsers, and the rhai sandbox's limits.

mod definitions;
mod engine;
mod leases;
mod scripts;
mod stores;
mod template_schema;
mod templates;
