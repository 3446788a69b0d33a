//! Reading the sync ledger back: what an earlier claim of an (edge, sequence) decided.
//!
//! A resend of a sequence the ledger already holds claims nothing. If the first claim stored the event, the
//! resend is a plain replay. If the first claim *rejected* it, and the edge never saw that answer (the ack was
//! lost with a connection), the resend must be answered with the original rejection again: otherwise the edge
//! would count the event as stored and never move it to its dead-letter store.

use sqlx::{Postgres, QueryBuilder, Sqlite};

use super::{OUTCOME_REJECTED, StorageError, Store};

/// An earlier rejection recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlierRejection {
    /// The rejected sequence.
    pub sequence: u64,
    /// The reason as the ledger recorded it: `<RejectReason variant>: <detail>`.
    pub reason: String,
}

impl Store {
    /// Of `sequences` (already in the ledger), those whose first claim rejected the event, with the recorded
    /// reason. Called only for replays, which are rare; sequences not in the ledger are simply absent.
    pub async fn earlier_rejections(
        &self,
        edge_id: &str,
        sequences: &[u64],
    ) -> Result<Vec<EarlierRejection>, StorageError> {
        let mut out = Vec::new();
        // Bounded statements: a batch holds at most a few thousand events.
        for chunk in sequences.chunks(1_000) {
            let rows = match self {
                Self::Sqlite(p) => {
                    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                        "SELECT sequence, reason FROM sync_ledger WHERE edge_id = ",
                    );
                    qb.push_bind(edge_id)
                        .push(" AND outcome = ")
                        .push_bind(OUTCOME_REJECTED)
                        .push(" AND sequence IN (");
                    let mut sep = qb.separated(", ");
                    for s in chunk {
                        sep.push_bind(i64::try_from(*s).unwrap_or(i64::MAX));
                    }
                    qb.push(")");
                    qb.build_query_as::<(i64, Option<String>)>()
                        .fetch_all(p)
                        .await?
                }
                Self::Postgres(p) => {
                    let seqs: Vec<i64> = chunk
                        .iter()
                        .map(|s| i64::try_from(*s).unwrap_or(i64::MAX))
                        .collect();
                    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
                        "SELECT sequence, reason FROM sync_ledger WHERE edge_id = ",
                    );
                    qb.push_bind(edge_id)
                        .push(" AND outcome = ")
                        .push_bind(OUTCOME_REJECTED)
                        .push(" AND sequence = ANY(")
                        .push_bind(seqs)
                        .push(")");
                    qb.build_query_as::<(i64, Option<String>)>()
                        .fetch_all(p)
                        .await?
                }
            };
            out.extend(rows.into_iter().map(|(sequence, reason)| EarlierRejection {
                sequence: u64::try_from(sequence).unwrap_or(0),
                reason: reason.unwrap_or_default(),
            }));
        }
        Ok(out)
    }
}
