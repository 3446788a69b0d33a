//! Registry storage (migration 0008): `model_versions` (the verified bundles, bytes included) and
//! `model_assignments` (ward → model name → version). The same SQL runs on SQLite and PostgreSQL.

use crate::storage::{StorageError, Store};

/// A stored version without its bytes (listings).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModelVersionRow {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub signed_by: String,
    pub uploaded_by: String,
    pub uploaded_at_ms: i64,
}

/// A stored version's files.
#[derive(Debug, Clone)]
pub struct ModelBlob {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub model: Vec<u8>,
}

/// One ward assignment, with the assigned version's hash and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AssignmentRow {
    pub ward: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub assigned_by: String,
    pub assigned_at_ms: i64,
}

/// A new version to store.
#[derive(Debug, Clone)]
pub struct NewModelVersion<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub sha256: &'a str,
    pub manifest: &'a [u8],
    pub signature: &'a [u8],
    pub model: &'a [u8],
    pub signed_by: &'a str,
    pub uploaded_by: &'a str,
    pub uploaded_at_ms: i64,
}

/// What storing an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOutcome {
    /// A new version.
    Stored,
    /// The same name, version and sha256 were already stored (an upload repeated): nothing changed.
    AlreadyStored,
    /// The name and version exist with another model (versions are immutable).
    Conflict {
        /// sha256 of the stored one.
        existing_sha256: String,
    },
}

impl Store {
    /// Stores a verified version, unless that name and version exist (see [`StoreOutcome`]).
    pub async fn insert_model_version(
        &self,
        v: &NewModelVersion<'_>,
    ) -> Result<StoreOutcome, StorageError> {
        let insert = "INSERT INTO model_versions
               (name, version, sha256, manifest, signature, model, size_bytes, signed_by, uploaded_by, uploaded_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (name, version) DO NOTHING";
        let existing = "SELECT sha256 FROM model_versions WHERE name = $1 AND version = $2";
        let size = i64::try_from(v.model.len()).unwrap_or(i64::MAX);
        macro_rules! run {
            ($p:expr) => {{
                let n = sqlx::query(insert)
                    .bind(v.name)
                    .bind(v.version)
                    .bind(v.sha256)
                    .bind(v.manifest)
                    .bind(v.signature)
                    .bind(v.model)
                    .bind(size)
                    .bind(v.signed_by)
                    .bind(v.uploaded_by)
                    .bind(v.uploaded_at_ms)
                    .execute($p)
                    .await?
                    .rows_affected();
                if n == 1 {
                    StoreOutcome::Stored
                } else {
                    let sha: String = sqlx::query_scalar(existing)
                        .bind(v.name)
                        .bind(v.version)
                        .fetch_one($p)
                        .await?;
                    if sha == v.sha256 {
                        StoreOutcome::AlreadyStored
                    } else {
                        StoreOutcome::Conflict {
                            existing_sha256: sha,
                        }
                    }
                }
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }

    /// Every stored version (without bytes), by name then upload time.
    pub async fn list_model_versions(&self) -> Result<Vec<ModelVersionRow>, StorageError> {
        let sql = "SELECT name, version, sha256, size_bytes, signed_by, uploaded_by, uploaded_at_ms
                   FROM model_versions ORDER BY name, uploaded_at_ms, version";
        macro_rules! run {
            ($p:expr) => {{
                use sqlx::Row;
                sqlx::query(sql)
                    .fetch_all($p)
                    .await?
                    .into_iter()
                    .map(|r| {
                        Ok(ModelVersionRow {
                            name: r.try_get(0)?,
                            version: r.try_get(1)?,
                            sha256: r.try_get(2)?,
                            size_bytes: r.try_get(3)?,
                            signed_by: r.try_get(4)?,
                            uploaded_by: r.try_get(5)?,
                            uploaded_at_ms: r.try_get(6)?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }

    /// One version with its files.
    pub async fn model_blob(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<ModelBlob>, StorageError> {
        let sql = "SELECT name, version, sha256, manifest, signature, model FROM model_versions
                   WHERE name = $1 AND version = $2";
        macro_rules! run {
            ($p:expr) => {{
                use sqlx::Row;
                match sqlx::query(sql)
                    .bind(name)
                    .bind(version)
                    .fetch_optional($p)
                    .await?
                {
                    None => None,
                    Some(r) => Some(ModelBlob {
                        name: r.try_get(0)?,
                        version: r.try_get(1)?,
                        sha256: r.try_get(2)?,
                        manifest: r.try_get(3)?,
                        signature: r.try_get(4)?,
                        model: r.try_get(5)?,
                    }),
                }
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }

    /// Assigns `name` `version` to `ward` (replacing what the ward had for that name). `Ok(false)` if that
    /// version is not stored.
    pub async fn assign_model(
        &self,
        ward: &str,
        name: &str,
        version: &str,
        assigned_by: &str,
        at_ms: i64,
    ) -> Result<bool, StorageError> {
        let sql = "INSERT INTO model_assignments (ward_id, name, version, assigned_by, assigned_at_ms)
                   SELECT $1, name, version, $4, $5 FROM model_versions WHERE name = $2 AND version = $3
                   ON CONFLICT (ward_id, name) DO UPDATE SET version = excluded.version,
                       assigned_by = excluded.assigned_by, assigned_at_ms = excluded.assigned_at_ms";
        macro_rules! run {
            ($p:expr) => {
                sqlx::query(sql)
                    .bind(ward)
                    .bind(name)
                    .bind(version)
                    .bind(assigned_by)
                    .bind(at_ms)
                    .execute($p)
                    .await?
                    .rows_affected()
            };
        }
        let n = match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        };
        Ok(n >= 1)
    }

    /// Removes the assignment of `name` from `ward`. `Ok(Some(version))` names the version that was assigned,
    /// `Ok(None)` if the ward had no assignment for `name`. The stored versions stay (see `api`: versions are
    /// never deleted).
    pub async fn unassign_model(
        &self,
        ward: &str,
        name: &str,
    ) -> Result<Option<String>, StorageError> {
        let sql =
            "DELETE FROM model_assignments WHERE ward_id = $1 AND name = $2 RETURNING version";
        macro_rules! run {
            ($p:expr) => {{
                use sqlx::Row;
                match sqlx::query(sql)
                    .bind(ward)
                    .bind(name)
                    .fetch_optional($p)
                    .await?
                {
                    Some(r) => Some(r.try_get::<String, _>(0)?),
                    None => None,
                }
            }};
        }
        Ok(match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        })
    }

    /// The assignments of `wards` (every ward when `None`), by ward then name.
    pub async fn model_assignments(
        &self,
        wards: Option<&[String]>,
    ) -> Result<Vec<AssignmentRow>, StorageError> {
        let sql = "SELECT a.ward_id, a.name, a.version, v.sha256, v.size_bytes, a.assigned_by, a.assigned_at_ms
                   FROM model_assignments a
                   JOIN model_versions v ON v.name = a.name AND v.version = a.version
                   ORDER BY a.ward_id, a.name";
        macro_rules! run {
            ($p:expr) => {{
                use sqlx::Row;
                sqlx::query(sql)
                    .fetch_all($p)
                    .await?
                    .into_iter()
                    .map(|r| {
                        Ok(AssignmentRow {
                            ward: r.try_get(0)?,
                            name: r.try_get(1)?,
                            version: r.try_get(2)?,
                            sha256: r.try_get(3)?,
                            size_bytes: r.try_get(4)?,
                            assigned_by: r.try_get(5)?,
                            assigned_at_ms: r.try_get(6)?,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }};
        }
        let rows: Vec<AssignmentRow> = match self {
            Self::Sqlite(p) => run!(p),
            Self::Postgres(p) => run!(p),
        };
        // A hospital has tens of wards and a handful of models: filtering here keeps one query for both backends.
        Ok(match wards {
            None => rows,
            Some(w) => rows.into_iter().filter(|r| w.contains(&r.ward)).collect(),
        })
    }
}
