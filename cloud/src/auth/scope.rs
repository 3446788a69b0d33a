//! SMART `system/` scopes: parsing, "does this allowed scope cover that requested one" (token requests) and
//! "does this granted scope allow reading and searching that resource type" (every FHIR route).
//!
//! Only `system/` scopes exist here: Wardwatch serves backend systems (SMART Backend Services), never a user or
//! a patient in context. Both SMART v2 permissions (`system/Observation.rs`, a subsequence of `cruds`) and the
//! v1 forms (`read`, `write`, `*`) are understood; v1 `read` means v2 `rs`.

use std::fmt;

/// Resource types that a wildcard (`system/*.…`) scope does not reach: they must be named. The audit trail is
/// for administrators, while `system/*.rs` is what an EHR interface engine is typically granted. `WardwatchModel`
/// is not a FHIR type: it is the model registry's administrator scope (`cloud/src/model_registry/api.rs`).
pub const NAMED_ONLY: &[&str] = &["AuditEvent", "WardwatchModel"];

/// A set of SMART v2 permissions (`c`, `r`, `u`, `d`, `s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permissions(u8);

impl Permissions {
    /// `c`: create.
    pub const CREATE: Self = Self(1);
    /// `r`: read.
    pub const READ: Self = Self(2);
    /// `u`: update.
    pub const UPDATE: Self = Self(4);
    /// `d`: delete.
    pub const DELETE: Self = Self(8);
    /// `s`: search.
    pub const SEARCH: Self = Self(16);
    /// `rs`: what every FHIR route of Wardwatch needs today (read and search).
    pub const READ_SEARCH: Self = Self(2 | 16);

    /// Whether every permission of `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// One parsed `system/` scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The resource type, or `None` for `*`.
    resource: Option<String>,
    permissions: Permissions,
}

/// Why a scope string is not one Wardwatch understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScopeError(String);

impl Scope {
    /// Parses `system/<ResourceType|*>.<permissions>`. Refuses `patient/` and `user/` scopes, granular scopes
    /// (`?category=…`), unknown permission letters and permissions out of `cruds` order.
    pub fn parse(s: &str) -> Result<Self, ScopeError> {
        let bad = |why: &str| ScopeError(format!("scope {s:?} {why}"));
        let rest = s.strip_prefix("system/").ok_or_else(|| {
            bad("is not a system/ scope (Wardwatch serves backend services only)")
        })?;
        if rest.contains('?') {
            return Err(bad("has a query: granular scopes are not supported"));
        }
        let (resource, perms) = rest
            .split_once('.')
            .ok_or_else(|| bad("is not system/<ResourceType>.<permissions>"))?;
        let resource = match resource {
            "*" => None,
            r if is_resource_type(r) => Some(r.to_string()),
            _ => return Err(bad("does not name a resource type or *")),
        };
        let permissions = match perms {
            "read" => Permissions::READ_SEARCH,
            "write" => Permissions(1 | 4 | 8),
            "*" => Permissions(1 | 2 | 4 | 8 | 16),
            v2 => {
                // A non-empty subsequence of "cruds", in that order.
                let mut bits = 0u8;
                let mut order = "cruds".chars();
                for c in v2.chars() {
                    if !order.any(|o| o == c) {
                        return Err(bad(
                            "has permissions that are not read, write, * or a subsequence of cruds",
                        ));
                    }
                    bits |= match c {
                        'c' => 1,
                        'r' => 2,
                        'u' => 4,
                        'd' => 8,
                        _ => 16,
                    };
                }
                if bits == 0 {
                    return Err(bad("has no permissions"));
                }
                Permissions(bits)
            }
        };
        Ok(Self {
            resource,
            permissions,
        })
    }

    /// Whether this scope grants `needed` on `resource`. A wildcard does not reach [`NAMED_ONLY`] types.
    pub fn allows(&self, resource: &str, needed: Permissions) -> bool {
        let type_ok = match &self.resource {
            Some(r) => r == resource,
            None => !NAMED_ONLY.contains(&resource),
        };
        type_ok && self.permissions.contains(needed)
    }

    /// Whether a client allowed `self` may be granted `requested`: the same or a narrower resource type, and a
    /// subset of the permissions. A wildcard covers a named type except [`NAMED_ONLY`] ones.
    pub fn covers(&self, requested: &Scope) -> bool {
        let type_ok = match (&self.resource, &requested.resource) {
            (None, None) => true,
            (None, Some(r)) => !NAMED_ONLY.contains(&r.as_str()),
            (Some(a), Some(r)) => a == r,
            (Some(_), None) => false,
        };
        type_ok && self.permissions.contains(requested.permissions)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letters: String = "cruds"
            .chars()
            .zip([1u8, 2, 4, 8, 16])
            .filter(|(_, b)| self.permissions.0 & b != 0)
            .map(|(c, _)| c)
            .collect();
        write!(
            f,
            "system/{}.{letters}",
            self.resource.as_deref().unwrap_or("*")
        )
    }
}

/// A FHIR resource type name: an upper-case letter, then letters (at most 64).
fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic())
}

/// Whether any of `scopes` (scope strings; unparseable ones count for nothing) allows read and search of
/// `resource`.
pub fn any_allows(scopes: &[String], resource: &str) -> bool {
    scopes
        .iter()
        .any(|s| Scope::parse(s).is_ok_and(|s| s.allows(resource, Permissions::READ_SEARCH)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Scope {
        Scope::parse(s).unwrap()
    }

    #[test]
    fn v2_and_v1_forms_parse_and_the_rest_is_refused() {
        assert_eq!(
            p("system/Observation.rs").to_string(),
            "system/Observation.rs"
        );
        assert_eq!(
            p("system/Observation.read").to_string(),
            "system/Observation.rs"
        );
        assert_eq!(p("system/*.*").to_string(), "system/*.cruds");
        assert_eq!(p("system/Device.cruds").to_string(), "system/Device.cruds");
        for bad in [
            "patient/Observation.rs",
            "user/*.read",
            "system/Observation",
            "system/Observation.sr",
            "system/Observation.rr",
            "system/Observation.x",
            "system/Observation.",
            "system/observation.rs",
            "system/Obs-1.rs",
            "system/Observation.rs?category=vital-signs",
            "launch",
            "openid",
            "",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_scopes_cover_only_narrower_requests() {
        let star = p("system/*.rs");
        assert!(star.covers(&p("system/Observation.rs")));
        assert!(star.covers(&p("system/Observation.r")));
        assert!(star.covers(&p("system/Device.read")));
        assert!(star.covers(&p("system/*.s")));
        assert!(!star.covers(&p("system/Observation.cruds")));
        assert!(
            !star.covers(&p("system/AuditEvent.rs")),
            "audit needs its own scope"
        );
        let obs = p("system/Observation.rs");
        assert!(obs.covers(&p("system/Observation.read")));
        assert!(!obs.covers(&p("system/*.rs")));
        assert!(!obs.covers(&p("system/Device.rs")));
        assert!(p("system/AuditEvent.rs").covers(&p("system/AuditEvent.rs")));
    }

    #[test]
    fn routes_need_read_and_search_on_their_type() {
        let s = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(any_allows(&s(&["system/Observation.rs"]), "Observation"));
        assert!(any_allows(&s(&["system/*.read"]), "Device"));
        assert!(any_allows(&s(&["system/*.cruds"]), "Device"));
        assert!(!any_allows(&s(&["system/Observation.r"]), "Observation"));
        assert!(!any_allows(&s(&["system/Observation.rs"]), "Device"));
        assert!(!any_allows(&s(&["system/*.rs"]), "AuditEvent"));
        assert!(any_allows(&s(&["system/AuditEvent.rs"]), "AuditEvent"));
        // The model registry's administrator scope must be named too.
        assert!(!p("system/*.cruds").allows("WardwatchModel", Permissions::CREATE));
        assert!(p("system/WardwatchModel.c").allows("WardwatchModel", Permissions::CREATE));
        assert!(!p("system/WardwatchModel.c").allows("WardwatchModel", Permissions::UPDATE));
        assert!(!any_allows(&s(&["patient/Observation.rs"]), "Observation"));
    }
}
