//! Keys of the ingest's lookup tables that this process has seen committed, so that a batch sends only the keys
//! that may be new.
//!
//! `encounters` (migration 0012) and `patient_codes` (migration 0013) get one row per distinct key, written with
//! `ON CONFLICT DO NOTHING` in every ingest transaction. In steady telemetry nearly every key is already stored,
//! and each one still costs a uniqueness probe: at 2,000 beds those probes were about a tenth of PostgreSQL's
//! ingest time (docs/benchmarks.md, session 9).
//!
//! Invariants:
//! - A key is remembered only after the transaction that wrote it (or found it) committed, so a remembered key is
//!   in the table. The tables only grow, so it stays there.
//! - Forgetting is always safe: a key not remembered is sent again and the table ignores it. So the sets are
//!   bounded: past [`CAPACITY`] keys a set starts over. Another cloud process writing the same database has its
//!   own sets; a key it stored is sent once more by this one, and ignored.
//! - Keys are joined with NUL, which a PostgreSQL text value cannot hold, so two different keys never join the same.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

/// Most keys remembered per table before the set starts over.
pub const CAPACITY: usize = 1 << 20;

/// See the module documentation. One per ingest path (the sync service keeps one for its store).
#[derive(Debug, Default)]
pub struct StoredKeys {
    /// `(visit number, assigning authority or "", patient)` of `encounters`, joined.
    encounters: Mutex<HashSet<String>>,
    /// `(patient, LOINC code or "")` of `patient_codes`, joined.
    codes: Mutex<HashSet<String>>,
}

fn lock(m: &Mutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    // A panic while holding the lock leaves a set that is still a set of stored keys.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A key of one of the tables, written into a buffer as its parts joined with NUL.
trait JoinedKey {
    fn join_into(&self, buf: &mut String);
}

fn join(buf: &mut String, parts: &[&str]) {
    buf.clear();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            buf.push('\0');
        }
        buf.push_str(p);
    }
}

/// `(visit number, assigning authority or "", patient)` of `encounters`.
impl JoinedKey for (&str, &str, &str) {
    fn join_into(&self, buf: &mut String) {
        join(buf, &[self.0, self.1, self.2]);
    }
}

/// `(patient, LOINC code or "")` of `patient_codes`.
impl JoinedKey for (&str, &'static str) {
    fn join_into(&self, buf: &mut String) {
        join(buf, &[self.0, self.1]);
    }
}

fn unseen<K: JoinedKey>(set: &Mutex<HashSet<String>>, keys: Vec<K>) -> Vec<K> {
    let known = lock(set);
    if known.is_empty() {
        return keys;
    }
    let mut buf = String::new();
    keys.into_iter()
        .filter(|k| {
            k.join_into(&mut buf);
            !known.contains(buf.as_str())
        })
        .collect()
}

fn remember<K: JoinedKey>(set: &Mutex<HashSet<String>>, keys: &[K]) {
    if keys.is_empty() {
        return;
    }
    let mut known = lock(set);
    if known.len() + keys.len() > CAPACITY {
        known.clear();
    }
    for k in keys.iter().take(CAPACITY) {
        let mut buf = String::new();
        k.join_into(&mut buf);
        known.insert(buf);
    }
}

impl StoredKeys {
    /// The `encounters` keys of `keys` not known to be stored.
    pub(crate) fn unseen_encounters<'a>(
        &self,
        keys: Vec<(&'a str, &'a str, &'a str)>,
    ) -> Vec<(&'a str, &'a str, &'a str)> {
        unseen(&self.encounters, keys)
    }

    /// The `patient_codes` keys of `keys` not known to be stored.
    pub(crate) fn unseen_codes<'a>(
        &self,
        keys: Vec<(&'a str, &'static str)>,
    ) -> Vec<(&'a str, &'static str)> {
        unseen(&self.codes, keys)
    }

    /// Remembers keys whose transaction committed.
    pub(crate) fn remember(
        &self,
        encounters: &[(&str, &str, &str)],
        codes: &[(&str, &'static str)],
    ) {
        remember(&self.encounters, encounters);
        remember(&self.codes, codes);
    }

    /// Keys remembered (both tables), for tests and logs.
    pub fn len(&self) -> usize {
        lock(&self.encounters).len() + lock(&self.codes).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_committed_keys_are_skipped_and_parts_never_run_together() {
        let keys = StoredKeys::default();
        let codes = vec![("P1", "8867-4"), ("P2", "8867-4")];
        assert_eq!(
            keys.unseen_codes(codes.clone()),
            codes,
            "nothing committed yet"
        );
        keys.remember(&[], &codes[..1]);
        assert_eq!(keys.unseen_codes(codes.clone()), vec![("P2", "8867-4")]);
        // ("V1", "", "P1") and ("V1", "P1", "") join differently.
        keys.remember(&[("V1", "", "P1")], &[]);
        assert_eq!(
            keys.unseen_encounters(vec![("V1", "", "P1"), ("V1", "P1", ""), ("V1", "", "P2")]),
            vec![("V1", "P1", ""), ("V1", "", "P2")]
        );
        // Patient "P1\08867-4"-like ambiguity cannot arise: the joined forms differ.
        assert_eq!(
            keys.unseen_codes(vec![("P18867-4", "")]),
            vec![("P18867-4", "")]
        );
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn past_capacity_the_set_starts_over() {
        let keys = StoredKeys::default();
        let names: Vec<String> = (0..3).map(|i| format!("P{i}")).collect();
        let first: Vec<(&str, &'static str)> = vec![(names[0].as_str(), "8867-4")];
        keys.remember(&[], &first);
        let many: Vec<(&str, &'static str)> = (0..CAPACITY)
            .map(|_| (names[1].as_str(), "9279-1"))
            .collect();
        keys.remember(&[], &many);
        // The set was cleared before the batch that would overflow it: the first key is forgotten (and would be
        // sent again, which the table ignores).
        assert_eq!(keys.unseen_codes(first.clone()), first);
        assert_eq!(
            keys.unseen_codes(vec![(names[1].as_str(), "9279-1")]),
            vec![]
        );
    }
}
