//! Conventions shared by every resource: the documented problem body, ETags and `If-Match`,
//! keyset page bodies with a `Link` header, and comma-separated list parameters.

use axum::http::header::{ETAG, IF_MATCH, LINK};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ApiError;
use crate::extract::Json;

/// RFC 9457 problem details, as every error response carries them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem, e.g. `/problems/invalid`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Explanation of this occurrence.
    pub detail: String,
    /// For `invalid`: the offending field (dotted path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `conflict` / `precondition-failed`: the entity's current state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current: Option<serde_json::Value>,
}

/// The ETag of a versioned entity.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"v{version}\"")).expect("ascii")
}

/// A JSON body with an `ETag`.
pub fn with_etag<T: Serialize>(status: StatusCode, version: i64, body: T) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut().insert(ETAG, etag(version));
    res
}

/// The version a write is conditioned on: from `If-Match` (a mismatch is then 412) or from the
/// body's `version` (a mismatch is 409). Without either, the write is refused with 428 so no client
/// overwrites changes it has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match: "v<version>"`.
    IfMatch(i64),
    /// `version` in the body.
    Body(i64),
}

impl Precondition {
    /// Reads `If-Match`, falling back to the body's version.
    pub fn from_request(headers: &HeaderMap, body_version: Option<i64>) -> Result<Self, ApiError> {
        if let Some(v) = headers.get(IF_MATCH) {
            let s = v.to_str().unwrap_or("");
            let parsed = s
                .trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .strip_prefix('v')
                .and_then(|n| n.parse::<i64>().ok());
            return match parsed {
                Some(n) => Ok(Precondition::IfMatch(n)),
                None => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    "Invalid input",
                    "invalid If-Match: expected an ETag returned by this API, like \"v3\"",
                )
                .with("field", "If-Match")),
            };
        }
        match body_version {
            Some(v) => Ok(Precondition::Body(v)),
            None => Err(ApiError::new(
                StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                "Precondition required",
                "send If-Match with the entity's ETag (or `version` in the body) so concurrent changes are not overwritten",
            )),
        }
    }

    /// The expected version.
    pub fn version(self) -> i64 {
        match self {
            Precondition::IfMatch(v) | Precondition::Body(v) => v,
        }
    }

    /// Maps a store error: a conflict under `If-Match` is 412, under a body version 409; both
    /// carry the current entity.
    pub fn map_err(self, e: pm_core::Error) -> ApiError {
        let is_conflict = matches!(e, pm_core::Error::Conflict(_));
        let api = ApiError::from(e);
        if is_conflict && matches!(self, Precondition::IfMatch(_)) {
            api.with_status(
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            )
        } else {
            api
        }
    }
}

/// A page of results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PageBody<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Responds with a page and, when there is a next page, a `Link: <…>; rel="next"` header built
/// from the request's path and query with `cursor` replaced.
pub fn page_response<T: Serialize>(
    page: pm_core::query::Page<T>,
    uri: &axum::http::Uri,
) -> Response {
    let link = page.next_cursor.as_ref().map(|c| {
        let mut pairs: Vec<(String, String)> = uri
            .query()
            .map(|q| url_pairs(q).into_iter().filter(|(k, _)| k != "cursor").collect())
            .unwrap_or_default();
        pairs.push(("cursor".into(), c.clone()));
        let q = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        format!("<{}?{}>; rel=\"next\"", uri.path(), q)
    });
    let mut res =
        Json(PageBody { items: page.items, next_cursor: page.next_cursor }).into_response();
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        res.headers_mut().insert(LINK, l);
    }
    res
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parses a comma-separated list parameter with `parse`, naming `field` on error. At most 100
/// values.
pub fn csv<T>(
    field: &str,
    raw: Option<&str>,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, ApiError> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if out.len() == 100 {
            return Err(pm_core::Error::invalid(field, "lists at most 100 values").into());
        }
        out.push(parse(part).ok_or_else(|| {
            pm_core::Error::invalid(field, format!("{part:?} is not valid here"))
        })?);
    }
    Ok(out)
}

/// Deserializes a field that distinguishes "absent" (`None`) from "null" (`Some(None)`).
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_roundtrip() {
        assert_eq!(decode(&encode("a b/ü,=&")), "a b/ü,=&");
        assert_eq!(
            url_pairs("a=1&cursor=x&b=%41"),
            vec![("a".into(), "1".into()), ("cursor".into(), "x".into()), ("b".into(), "A".into())]
        );
        assert_eq!(decode("%4"), "%4");
        assert_eq!(decode("%zz"), "%zz");
    }

    #[test]
    fn if_match_parsing() {
        let mut h = HeaderMap::new();
        assert!(Precondition::from_request(&h, None).is_err());
        assert_eq!(Precondition::from_request(&h, Some(3)).unwrap(), Precondition::Body(3));
        h.insert(IF_MATCH, HeaderValue::from_static("\"v7\""));
        assert_eq!(Precondition::from_request(&h, Some(3)).unwrap(), Precondition::IfMatch(7));
        h.insert(IF_MATCH, HeaderValue::from_static("*"));
        assert!(Precondition::from_request(&h, None).is_err());
    }
}
