//! Services (placeholder while the stores land).
/// Facade.
pub struct Pm;
