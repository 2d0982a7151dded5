//! Placeholder: routes being written.

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
}
