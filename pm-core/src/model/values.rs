//! Validated scalar newtypes shared by several entities.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn trimmed_len(field: &str, raw: &str, min: usize, max: usize) -> Result<String> {
    let v = raw.trim();
    let n = v.chars().count();
    if n < min {
        return Err(Error::invalid(
            field,
            if min == 1 {
                "must not be empty".to_string()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if n > max {
        return Err(Error::invalid(field, format!("must be at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(v.to_string())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, min = $min:literal, max = $max:literal) => {
        $(#[$doc])*
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and normalises (trims) the value; fails with `Invalid` naming the field.
            pub fn parse(raw: &str) -> Result<Self> {
                trimmed_len($field, raw, $min, $max).map(Self)
            }
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// A human-readable name (organization, project, workflow state, milestone, field): 1–200 chars.
    Name, field = "name", min = 1, max = 200
);
text_newtype!(
    /// A task title: 1–500 characters, no control characters.
    TaskTitle, field = "title", min = 1, max = 500
);
text_newtype!(
    /// A label name: 1–64 characters.
    LabelName, field = "name", min = 1, max = 64
);

/// Markdown text (task descriptions, comment bodies): at most 100 000 characters.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Markdown(String);

impl Markdown {
    /// Maximum length in characters.
    pub const MAX_CHARS: usize = 100_000;

    /// Parses markdown for the named field.
    pub fn parse_field(field: &str, raw: &str) -> Result<Self> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(Error::invalid(
                field,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if raw.contains('\0') {
            return Err(Error::invalid(field, "must not contain NUL characters"));
        }
        Ok(Self(raw.to_string()))
    }

    /// Parses a task description (`description` field).
    pub fn parse(raw: &str) -> Result<Self> {
        Self::parse_field("description", raw)
    }

    /// The markdown source.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Markdown {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<Markdown> for String {
    fn from(v: Markdown) -> String {
        v.0
    }
}

/// A URL-safe organization slug: 1–64 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

impl Slug {
    /// Parses a slug (`slug` field).
    pub fn parse(raw: &str) -> Result<Self> {
        let ok_chars =
            raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if raw.is_empty()
            || raw.len() > 64
            || !ok_chars
            || raw.starts_with('-')
            || raw.ends_with('-')
        {
            return Err(Error::invalid(
                "slug",
                "must be 1-64 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            ));
        }
        Ok(Self(raw.to_string()))
    }
    /// The slug text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Slug {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<Slug> for String {
    fn from(v: Slug) -> String {
        v.0
    }
}

/// A project key such as `PM`: 2–10 characters of `A-Z` and `0-9`, starting with a letter.
/// Task references are `{key}-{number}` (`PM-42`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProjectKey(String);

impl ProjectKey {
    /// Parses a key (`key` field). Lower-case input is upper-cased.
    pub fn parse(raw: &str) -> Result<Self> {
        let v = raw.trim().to_ascii_uppercase();
        let ok = (2..=10).contains(&v.len())
            && v.starts_with(|c: char| c.is_ascii_uppercase())
            && v.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if !ok {
            return Err(Error::invalid(
                "key",
                "must be 2-10 characters of A-Z and 0-9, starting with a letter",
            ));
        }
        Ok(Self(v))
    }
    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProjectKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<ProjectKey> for String {
    fn from(v: ProjectKey) -> String {
        v.0
    }
}
impl std::fmt::Display for ProjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address, minimally checked (one `@`, non-empty parts, ≤ 254 chars) and lower-cased.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    /// Parses an address (`email` field).
    pub fn parse(raw: &str) -> Result<Self> {
        let v = raw.trim().to_lowercase();
        let mut parts = v.split('@');
        let (local, domain, rest) = (parts.next(), parts.next(), parts.next());
        let ok = matches!((local, domain, rest), (Some(l), Some(d), None) if !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.'))
            && v.len() <= 254
            && !v.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(Error::invalid("email", "must be an e-mail address like name@example.com"));
        }
        Ok(Self(v))
    }
    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<Email> for String {
    fn from(v: Email) -> String {
        v.0
    }
}

/// A colour as `#rrggbb`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Color(String);

impl Color {
    /// Parses a colour (`color` field); upper-case hex digits are lower-cased.
    pub fn parse(raw: &str) -> Result<Self> {
        let v = raw.trim().to_ascii_lowercase();
        if v.len() != 7 || !v.starts_with('#') || !v[1..].chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid("color", "must be a hex colour like #3b82f6"));
        }
        Ok(Self(v))
    }
    /// The `#rrggbb` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Color {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}
impl From<Color> for String {
    fn from(v: Color) -> String {
        v.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn newtypes_reject_bad_input_naming_the_field() {
        assert_eq!(field_of(TaskTitle::parse("   ").unwrap_err()), "title");
        assert_eq!(field_of(TaskTitle::parse(&"x".repeat(501)).unwrap_err()), "title");
        assert_eq!(field_of(TaskTitle::parse("a\u{7}b").unwrap_err()), "title");
        assert_eq!(field_of(ProjectKey::parse("P").unwrap_err()), "key");
        assert_eq!(field_of(ProjectKey::parse("1PM").unwrap_err()), "key");
        assert_eq!(field_of(Slug::parse("-acme").unwrap_err()), "slug");
        assert_eq!(field_of(Email::parse("nobody").unwrap_err()), "email");
        assert_eq!(field_of(Color::parse("red").unwrap_err()), "color");
        assert_eq!(field_of(Markdown::parse("a\0").unwrap_err()), "description");
    }

    #[test]
    fn newtypes_normalise() {
        assert_eq!(TaskTitle::parse("  Fix it ").unwrap().as_str(), "Fix it");
        assert_eq!(ProjectKey::parse("pm").unwrap().as_str(), "PM");
        assert_eq!(Email::parse(" A@Example.com").unwrap().as_str(), "a@example.com");
        assert_eq!(Color::parse("#AABBCC").unwrap().as_str(), "#aabbcc");
    }

    #[test]
    fn serde_goes_through_parse() {
        let e = serde_json::from_str::<TaskTitle>("\"\"").unwrap_err();
        assert!(e.to_string().contains("title"), "{e}");
    }
}
