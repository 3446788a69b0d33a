//! Model version order: a pulled model must be newer than the one running, and the registry only takes versions
//! it can order.
//!
//! Versions are [SemVer 2.0](https://semver.org) strings (`1.0.0`, `1.1.0-rc.1`), ordered by SemVer precedence:
//! major, minor, patch numerically, a pre-release below its release, build metadata (`+…`) ignored. So
//! `1.10.0 > 1.9.0` and `2.0.0-rc.1 < 2.0.0`. Two versions of equal precedence (`1.0.0+a`, `1.0.0+b`) are not an
//! upgrade of each other: the edge refuses a "new" model whose version does not order strictly above its own.
//! Parsing and precedence are the `semver` crate's (the one cargo itself uses).

use std::cmp::Ordering;
use std::fmt;

/// A SemVer 2.0 model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion(semver::Version);

/// A version string that is not SemVer 2.0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "model version {text:?} is not a SemVer 2.0 version (MAJOR.MINOR.PATCH[-pre][+build]): {reason}"
)]
pub struct VersionError {
    /// What was given.
    pub text: String,
    /// Why it does not parse.
    pub reason: String,
}

impl ModelVersion {
    /// Parses a SemVer 2.0 version (no leading `v`, no surrounding spaces).
    pub fn parse(text: &str) -> Result<ModelVersion, VersionError> {
        semver::Version::parse(text)
            .map(ModelVersion)
            .map_err(|e| VersionError {
                text: text.to_string(),
                reason: e.to_string(),
            })
    }

    /// SemVer precedence (build metadata ignored).
    pub fn precedence(&self, other: &ModelVersion) -> Ordering {
        self.0.cmp_precedence(&other.0)
    }

    /// Whether `self` is strictly newer than `other` by precedence.
    pub fn is_newer_than(&self, other: &ModelVersion) -> bool {
        self.precedence(other) == Ordering::Greater
    }
}

impl fmt::Display for ModelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ModelVersion {
        ModelVersion::parse(s).expect(s)
    }

    #[test]
    fn semver_precedence_orders_versions() {
        assert!(v("1.10.0").is_newer_than(&v("1.9.0")));
        assert!(v("2.0.0").is_newer_than(&v("2.0.0-rc.1")));
        assert!(v("2.0.0-rc.2").is_newer_than(&v("2.0.0-rc.1")));
        assert!(!v("1.0.0").is_newer_than(&v("1.0.0")));
        assert!(!v("1.0.0+b").is_newer_than(&v("1.0.0+a")));
        assert!(!v("1.0.0+a").is_newer_than(&v("1.0.0+b")));
        assert!(!v("0.9.9").is_newer_than(&v("1.0.0")));
    }

    #[test]
    fn non_semver_is_refused() {
        for bad in [
            "", "1", "1.0", "v1.0.0", " 1.0.0", "1.0.0.0", "01.0.0", "latest",
        ] {
            assert!(ModelVersion::parse(bad).is_err(), "{bad:?}");
        }
    }
}
