//! `s3://bucket/prefix[/name]` addresses.

use std::fmt;

/// Why a string is not an `s3://` address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    /// Another scheme.
    #[error("'{0}' is not an s3:// URL (s3://BUCKET/PREFIX[/NAME])")]
    Scheme(String),
    /// No bucket.
    #[error("'{0}' names no bucket (s3://BUCKET/PREFIX[/NAME])")]
    NoBucket(String),
    /// No snapshot name where one is needed.
    #[error("'{0}' names no snapshot: push to s3://BUCKET/PREFIX/NAME")]
    NoName(String),
    /// A path component that cannot be a key segment.
    #[error("'{url}': '{part}' cannot be part of an object key (empty, '.', '..', or a character outside [A-Za-z0-9._-])")]
    BadPart {
        /// The URL.
        url: String,
        /// The component.
        part: String,
    },
}

/// A place in a bucket: where snapshots are pushed and mounted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The bucket.
    pub bucket: String,
    /// Key prefix, without leading or trailing slash (may be empty).
    pub prefix: String,
}

/// One snapshot under a [`Location`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotUrl {
    /// Where it lives.
    pub location: Location,
    /// Its name.
    pub name: String,
}

fn valid_part(p: &str) -> bool {
    !p.is_empty()
        && p != "."
        && p != ".."
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Location {
    /// Parses `s3://bucket[/prefix...]`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| UrlError::Scheme(url.to_string()))?;
        let mut parts = rest.split('/').filter(|p| !p.is_empty());
        let bucket = parts
            .next()
            .ok_or_else(|| UrlError::NoBucket(url.to_string()))?;
        let parts: Vec<&str> = std::iter::once(bucket).chain(parts).collect();
        if let Some(bad) = parts.iter().find(|p| !valid_part(p)) {
            return Err(UrlError::BadPart {
                url: url.to_string(),
                part: bad.to_string(),
            });
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: parts[1..].join("/"),
        })
    }

    /// `key` under the prefix.
    pub fn key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }
}

impl SnapshotUrl {
    /// Parses `s3://bucket/prefix/name` (the last component is the snapshot's name).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let mut location = Location::parse(url)?;
        let mut parts: Vec<&str> = location
            .prefix
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        let name = parts
            .pop()
            .ok_or_else(|| UrlError::NoName(url.to_string()))?
            .to_string();
        location.prefix = parts.join("/");
        Ok(Self { location, name })
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl fmt::Display for SnapshotUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.location, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse() {
        let l = Location::parse("s3://b/fleet/v1/").expect("location");
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b", "fleet/v1"));
        assert_eq!(l.key("chunks/x"), "fleet/v1/chunks/x");
        assert_eq!(l.to_string(), "s3://b/fleet/v1");
        let s = SnapshotUrl::parse("s3://b/fleet/bert").expect("snapshot");
        assert_eq!(s.name, "bert");
        assert_eq!(s.location.prefix, "fleet");
        assert_eq!(s.to_string(), "s3://b/fleet/bert");
        assert_eq!(
            SnapshotUrl::parse("s3://b/bert")
                .expect("top level")
                .location
                .prefix,
            ""
        );
        assert!(matches!(
            Location::parse("http://b/x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            Location::parse("s3://"),
            Err(UrlError::NoBucket(_))
        ));
        assert!(matches!(
            SnapshotUrl::parse("s3://b"),
            Err(UrlError::NoName(_))
        ));
        assert!(matches!(
            Location::parse("s3://b/../x"),
            Err(UrlError::BadPart { .. })
        ));
        assert!(matches!(
            Location::parse("s3://b/a b"),
            Err(UrlError::BadPart { .. })
        ));
    }
}
