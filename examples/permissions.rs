//! Placeholder: the pm-permissions example is being written.
fn main() {}
