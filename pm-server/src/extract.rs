//! Extractors handlers use instead of axum's: [`Json`], [`Path`] and [`Query`] behave like
//! `axum::{Json, extract::Path, extract::Query}` but reject with [`ApiError`], so a malformed
//! request gets the same `application/problem+json` body as every other error.
//!
//! Handlers never name `axum::Json` & co. directly; that keeps the error format in one place.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body (`content-type: application/json`), or a JSON response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Typed path parameters (route segments like `/{id}`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

/// Typed query-string parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as `content-type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|r| rejection(r.status(), r.body_text()))?;
        // serde_path_to_error names the field that failed, so the problem can say which one.
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let syntax = inner.is_syntax() || inner.is_eof();
            let message = inner.to_string();
            // serde's own messages for our newtypes already read "invalid <field>: ..."; strip the
            // position suffix, which means nothing to an API client.
            let message = message.split(" at line ").next().unwrap_or(&message).to_string();
            if syntax {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-json",
                    "Malformed JSON",
                    format!("the body is not valid JSON: {message}"),
                )
            } else {
                let field = if path == "." { "body".to_string() } else { path };
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "Invalid input",
                    format!("invalid {field}: {message}"),
                )
                .with("field", field)
            }
        })?;
        // Trailing garbage after the JSON value is malformed too.
        if de.end().is_err() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed-json",
                "Malformed JSON",
                "trailing characters after the JSON body",
            ));
        }
        Ok(Json(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Turns an axum rejection (status + client-safe text) into a problem.
fn rejection(status: StatusCode, text: String) -> ApiError {
    let (slug, title) = match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Payload too large"),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid", "Invalid input"),
        // A route/extractor mismatch (e.g. a path parameter the route does not declare) is a
        // bug in this server, not in the request.
        s if s.is_server_error() => return ApiError::internal(text),
        _ => ("bad-request", "Bad request"),
    };
    ApiError::new(status, slug, title, text)
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        rejection(r.status(), r.body_text())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn eof_is_classified() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct B {
            title: pm_core::model::TaskTitle,
        }
        let mut de = serde_json::Deserializer::from_slice(b"{\"title\": ");
        let e = serde_path_to_error::deserialize::<_, B>(&mut de).unwrap_err();
        let inner = e.into_inner();
        assert!(inner.is_eof(), "{inner:?} {:?}", inner.classify());
    }
}
