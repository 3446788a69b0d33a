//! One read dispatcher for every FHIR resource type the cloud serves: `read_resource(store, cfg, type, id)`,
//! plus the glue that turns stored rows into the `wardwatch-fhir` crate's plain records.
//!
//! The REST reads (`GET [base]/<Type>/<id>`), the searches and the subscription notifications' `full-resource`
//! payloads all go through these functions, so a resource reads the same on every surface. FHIR JSON itself is
//! built only by the `wardwatch-fhir` crate.
//!
//! Resource ids (docs/fhir-mapping.md has the full table):
//! - `Observation/<edge>.<sequence>`: a vital sign, or a NEWS2 score (the synced event's lineage).
//! - `Observation/<edge>.<sequence>.rate|infused|remaining`: one infusion status report's measurements.
//! - `RiskAssessment/<edge>.<sequence>` and `Provenance/<edge>.<sequence>`: a model prediction.
//! - `DetectedIssue/<alarm id>`: an alarm, versioned by its state changes ([`alarm_resource_id`]).
//! - `MedicationAdministration/<order id>`: the infusion of one medication order.
//! - `Device/<device id>` (the MDS), `Device/<device id>.vmd-<group>` and `Device/<device id>.chan-<group>` (its
//!   VMDs and channels, [`wardwatch_fhir::containment`]), `DeviceMetric/<device id>.<MDC code>`; the device part
//!   is shortened for long device ids ([`tree_device_part`]).
//! - `Location/<ward>` and `Location/<ward>.<bed>`.

use wardwatch_fhir::containment::{self, MetricGroup};
use wardwatch_fhir::{
    AlarmChange, AlarmRecord, Coding, DeviceComponentRecord, DeviceMetricRecord, DeviceReference,
    InfusionObservationRecord, LocationRecord, MedicationAdministrationRecord,
    ModelProvenanceRecord, News2Parameter, News2Record, RiskAssessmentRecord,
};
use wardwatch_proto::ids::{DeviceId, EdgeId};
use wardwatch_proto::metrics;
use wardwatch_proto::v1::edge_event::Payload;
use wardwatch_proto::v1::{
    AlarmPriority, InfusionState, News2Parameter as P, News2Response, OperationalState, risk_score,
};

use crate::config::ApiConfig;
use crate::error::CloudError;
use crate::storage::{
    ChannelRow, DeviceRow, EventRow, GroupKind, INFUSION_INFUSED_MDC, INFUSION_RATE_MDC,
    INFUSION_REMAINING_MDC, OrderSummary, Store, alarm_kind_code, alarm_state_code,
    infusion_state_code,
};

/// Resource types [`read_resource`] can return, in CapabilityStatement order.
pub const READABLE_TYPES: &[&str] = &[
    "Observation",
    "Device",
    "DeviceMetric",
    "Location",
    "RiskAssessment",
    "Provenance",
    "DetectedIssue",
    "MedicationAdministration",
];

/// Identifier system of Location ids (`<ward>` or `<ward>/<bed>`).
pub const LOCATION_SYSTEM: &str = "urn:wardwatch:location";

/// Splits a lineage id `<edge>.<sequence>` (optionally followed by `.<suffix>`); `None` if it is not one of
/// ours. Returns the edge, the sequence and the suffix (`""` when absent).
pub fn parse_lineage_id(id: &str) -> Option<(EdgeId, u64, &str)> {
    // Edge ids never contain '.', so the first '.' ends the edge id.
    let (edge, rest) = id.split_once('.')?;
    let (seq, suffix) = match rest.split_once('.') {
        Some((s, suffix)) if !suffix.is_empty() => (s, suffix),
        Some(_) => return None,
        None => (rest, ""),
    };
    if !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seq: u64 = seq.parse().ok().filter(|s| *s > 0)?;
    Some((EdgeId::new(edge).ok()?, seq, suffix))
}

/// The FHIR id of the DetectedIssue an alarm maps to: the alarm id with characters outside the FHIR id
/// alphabet replaced by `-`, at most 64 characters (the same rule the subscription notifications use).
pub fn alarm_resource_id(alarm_id: &str) -> String {
    alarm_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// Whether `s` is a valid FHIR id.
pub fn is_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The Location id of a ward (bed `""`) or bed, if both are valid in a FHIR id.
pub fn location_id(ward: &str, bed: &str) -> Option<String> {
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok(ward) {
        return None;
    }
    let id = if bed.is_empty() {
        ward.to_string()
    } else if ok(bed) {
        format!("{ward}.{bed}")
    } else {
        return None;
    };
    is_fhir_id(&id).then_some(id)
}

// ---- The containment tree's ids (docs/fhir-mapping.md, "Point-of-Care Device shape"). ----

/// Characters of a long device id kept in a shortened device part.
const SHORT_PREFIX: usize = 36;

/// The device part of a containment-tree id `<device part><suffix>` (VMD, channel, DeviceMetric): the device
/// id itself when the whole id fits FHIR's 64 characters, else its first 36 characters, `-` and 12 hex digits
/// of its SHA-256 (49 characters, so any suffix up to 15 characters fits). Device ids never contain `.`, so
/// the first `.` of a tree id always ends the device part.
pub fn tree_device_part(device_id: &str, suffix: &str) -> String {
    if device_id.len() + suffix.len() <= 64 {
        return device_id.to_string();
    }
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(device_id.as_bytes());
    let prefix: String = device_id.chars().take(SHORT_PREFIX).collect();
    format!("{prefix}-{}", &hex::encode(&d[..6]))
}

fn tree_id(device_id: &str, suffix: &str) -> String {
    format!("{}{suffix}", tree_device_part(device_id, suffix))
}

/// `Device` id of a device's VMD for `group`: `<device>.vmd-<key>`.
pub fn vmd_id(device_id: &str, group: &MetricGroup) -> String {
    tree_id(device_id, &format!(".vmd-{}", group.key))
}

/// `Device` id of a device's channel for `group`: `<device>.chan-<key>`.
pub fn channel_id(device_id: &str, group: &MetricGroup) -> String {
    tree_id(device_id, &format!(".chan-{}", group.key))
}

/// `DeviceMetric` id of one metric of a device: `<device>.<MDC code>`.
pub fn metric_id(device_id: &str, metric_mdc: i64) -> String {
    tree_id(device_id, &format!(".{metric_mdc}"))
}

/// A level of the containment tree below the MDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The VMD of a group.
    Vmd(&'static MetricGroup),
    /// The channel of a group.
    Channel(&'static MetricGroup),
}

impl Component {
    /// The group.
    pub fn group(self) -> &'static MetricGroup {
        match self {
            Self::Vmd(g) | Self::Channel(g) => g,
        }
    }

    /// The `Device` id of this component of `device_id`.
    pub fn id(self, device_id: &str) -> String {
        match self {
            Self::Vmd(g) => vmd_id(device_id, g),
            Self::Channel(g) => channel_id(device_id, g),
        }
    }

    /// Listing order within a device: each group's VMD, then its channel, in table order.
    pub fn rank(self) -> usize {
        match self {
            Self::Vmd(g) => 2 * g.rank(),
            Self::Channel(g) => 2 * g.rank() + 1,
        }
    }
}

/// A `Device` id split into its device part and, for a VMD or channel, which one; `None` if it cannot be
/// one of ours.
pub fn parse_device_id(id: &str) -> Option<(&str, Option<Component>)> {
    if !is_fhir_id(id) {
        return None;
    }
    let Some((part, rest)) = id.split_once('.') else {
        return Some((id, None));
    };
    let component = if let Some(key) = rest.strip_prefix("vmd-") {
        Component::Vmd(containment::group_by_key(key)?)
    } else if let Some(key) = rest.strip_prefix("chan-") {
        Component::Channel(containment::group_by_key(key)?)
    } else {
        return None;
    };
    Some((part, Some(component)))
}

/// The device a tree id's device part names (`suffix` is the rest of the id, `.` included): the device
/// itself when it has channels, else the long device whose shortened part this is. `None` when no device
/// with channels matches.
pub async fn resolve_device_part(
    store: &Store,
    part: &str,
    suffix: &str,
) -> Result<Option<(String, Vec<ChannelRow>)>, CloudError> {
    if let Ok(d) = DeviceId::new(part)
        && tree_device_part(d.as_str(), suffix) == part
    {
        let channels = store.device_channels(d.as_str()).await?;
        if !channels.is_empty() {
            return Ok(Some((d.to_string(), channels)));
        }
    }
    if part.len() != SHORT_PREFIX + 13 || !part.is_ascii() {
        return Ok(None);
    }
    for candidate in store
        .channel_devices_with_prefix(&part[..SHORT_PREFIX])
        .await?
    {
        if tree_device_part(&candidate, suffix) == part {
            let channels = store.device_channels(&candidate).await?;
            return Ok(Some((candidate, channels)));
        }
    }
    Ok(None)
}

/// The VMDs and channels a device's channels make, in listing order, each with its channels.
pub fn components_of(channels: &[ChannelRow]) -> Vec<(Component, Vec<&ChannelRow>)> {
    let mut groups: std::collections::BTreeMap<usize, (&'static MetricGroup, Vec<&ChannelRow>)> =
        std::collections::BTreeMap::new();
    for c in channels {
        let g = containment::group_of(u32::try_from(c.metric_mdc).unwrap_or(0));
        groups.entry(g.rank()).or_insert((g, Vec::new())).1.push(c);
    }
    let mut out = Vec::with_capacity(groups.len() * 2);
    for (g, cs) in groups.into_values() {
        out.push((Component::Vmd(g), cs.clone()));
        out.push((Component::Channel(g), cs));
    }
    out
}

/// A VMD or channel `Device` of `device_id` (current version only: derived from the channels' latest
/// sightings and the device's state, which are updated in place; the version is a content digest).
pub fn component_to_fhir(
    device_id: &str,
    component: Component,
    channels: &[&ChannelRow],
    device: Option<&DeviceRow>,
) -> Result<serde_json::Value, CloudError> {
    let id = component.id(device_id);
    let group = component.group();
    let kind = device.and_then(|d| crate::api::device_kind_code(d.kind));
    let (mdc, text, parent) = match component {
        Component::Vmd(g) => (
            g.vmd_type(kind),
            g.display.to_string(),
            device_id.to_string(),
        ),
        Component::Channel(g) => (
            g.channel_type(kind),
            format!("{} channel", g.display),
            vmd_id(device_id, group),
        ),
    };
    let code = mdc.map(|t| t.code.to_string());
    let status = device.map_or("unknown", |d| crate::api::device_status(d.state).0);
    let last = channels.iter().map(|c| c.last_seen_ms).max().unwrap_or(0);
    let rec = DeviceComponentRecord {
        id: &id,
        type_code: mdc.zip(code.as_deref()).map(|(t, code)| Coding {
            system: wardwatch_fhir::MDC,
            code,
            display: t.reference_id,
        }),
        type_text: &text,
        parent_id: &parent,
        status,
        last_updated_unix_ms: last,
    };
    let res = wardwatch_fhir::device_component(&rec)
        .map_err(|e| unmappable(&format!("Device {id}"), e))?;
    let version = content_version(&res);
    stamp_version(res, &version, None)
}

fn unmappable(what: &str, e: impl std::fmt::Display) -> CloudError {
    CloudError::Unavailable(format!("{what} cannot be mapped: {e}"))
}

/// Sets `meta.versionId` (and `meta.lastUpdated`, when given) on a resource: every resource this server
/// returns carries its version, so that reads, version reads, history entries and ETags agree.
pub fn stamp_version(
    resource: serde_json::Value,
    version_id: &str,
    last_updated_ms: Option<i64>,
) -> Result<serde_json::Value, CloudError> {
    wardwatch_fhir::with_version(
        resource,
        &wardwatch_fhir::VersionMeta {
            version_id,
            last_updated_unix_ms: last_updated_ms,
        },
    )
    .map_err(|e| unmappable("resource version", e))
}

/// The version of a resource made from one immutable stored event or sample: there is only ever one.
pub const ONLY_VERSION: &str = "1";

fn lineage_uri(edge: &str, seq: i64) -> String {
    format!("wardwatch-edge:{edge}/sequence/{seq}")
}

/// Reads one resource by type and id, as the FHIR read interaction returns it. `Ok(None)` when the type is
/// served but no such resource exists (or the id cannot be one of ours); `NotSupported` for a type this
/// server does not serve; `Unavailable` for a storage failure or a stored row that cannot be mapped.
pub async fn read_resource(
    store: &Store,
    cfg: &ApiConfig,
    resource_type: &str,
    id: &str,
) -> Result<Option<serde_json::Value>, CloudError> {
    match resource_type {
        "Observation" => {
            let Some((edge, seq, suffix)) = parse_lineage_id(id) else {
                return Ok(None);
            };
            if suffix.is_empty()
                && let Some(row) = store.vital_by_lineage(edge.as_str(), seq).await?
            {
                return Ok(Some(crate::api::vital_to_observation(
                    &row,
                    &cfg.mrn_system,
                    &cfg.visit_number_system,
                )?));
            }
            let Some(ev) = store.event_by_lineage(edge.as_str(), seq).await? else {
                return Ok(None);
            };
            match (&ev.payload, suffix) {
                (Payload::Risk(r), "") if matches!(r.score, Some(risk_score::Score::News2(_))) => {
                    Ok(Some(news2_to_fhir(store, cfg, &ev).await?))
                }
                (Payload::Infusion(_), s @ ("rate" | "infused" | "remaining")) => {
                    Ok(Some(infusion_observation_to_fhir(cfg, &ev, s)?))
                }
                _ => Ok(None),
            }
        }
        "RiskAssessment" | "Provenance" => {
            let Some((edge, seq, "")) = parse_lineage_id(id) else {
                return Ok(None);
            };
            let Some(ev) = store.event_by_lineage(edge.as_str(), seq).await? else {
                return Ok(None);
            };
            if !is_model_prediction(&ev) {
                return Ok(None);
            }
            if resource_type == "RiskAssessment" {
                Ok(Some(risk_assessment_to_fhir(store, cfg, &ev).await?))
            } else {
                Ok(Some(provenance_to_fhir(store, &ev).await?))
            }
        }
        "DetectedIssue" => {
            if !is_fhir_id(id) {
                return Ok(None);
            }
            let history = store.group_versions(GroupKind::Alarm, id, None).await?;
            if history.is_empty() {
                return Ok(None);
            }
            Ok(Some(alarm_to_fhir(cfg, &history)?))
        }
        "MedicationAdministration" => {
            if !is_fhir_id(id) {
                return Ok(None);
            }
            match store.order_summary(id).await? {
                Some(s) => Ok(Some(order_to_fhir(cfg, &s)?)),
                None => Ok(None),
            }
        }
        "Device" => {
            let Some((part, component)) = parse_device_id(id) else {
                return Ok(None);
            };
            let Some(component) = component else {
                let Ok(id) = DeviceId::new(id) else {
                    return Ok(None);
                };
                return match store.device_versions(id.as_str(), None, 1).await?.first() {
                    Some((version, row)) => Ok(Some(crate::api::device_to_fhir(
                        row,
                        *version,
                        &cfg.device_id_system,
                    )?)),
                    None => Ok(None),
                };
            };
            let suffix = &id[part.len()..];
            let Some((device, channels)) = resolve_device_part(store, part, suffix).await? else {
                return Ok(None);
            };
            let row = store.device(&device).await?;
            let found = components_of(&channels)
                .into_iter()
                .find(|(c, _)| *c == component);
            match found {
                Some((c, cs)) => Ok(Some(component_to_fhir(&device, c, &cs, row.as_ref())?)),
                None => Ok(None),
            }
        }
        "DeviceMetric" => {
            if !is_fhir_id(id) {
                return Ok(None);
            }
            let Some((part, mdc)) = id.split_once('.') else {
                return Ok(None);
            };
            let Ok(mdc) = mdc.parse::<i64>() else {
                return Ok(None);
            };
            let Some((device, channels)) =
                resolve_device_part(store, part, &id[part.len()..]).await?
            else {
                return Ok(None);
            };
            let Some(channel) = channels.into_iter().find(|c| c.metric_mdc == mdc) else {
                return Ok(None);
            };
            if metric_id(&device, mdc) != id {
                return Ok(None);
            }
            let state = store.device(&device).await?.map(|d| d.state);
            Ok(Some(channel_to_fhir(&channel, state)?))
        }
        "Location" => {
            let (ward, bed) = id.split_once('.').unwrap_or((id, ""));
            let known = store
                .locations()
                .await?
                .into_iter()
                .any(|(w, b)| w == ward && b == bed);
            if !known || location_id(ward, bed).as_deref() != Some(id) {
                return Ok(None);
            }
            Ok(Some(location_to_fhir(ward, bed)?))
        }
        other => Err(CloudError::NotSupported(format!(
            "resource type {other:?} is not served (served: {})",
            READABLE_TYPES.join(", ")
        ))),
    }
}

/// What a version of a resource is, per type (docs/fhir-mapping.md, "Versions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versioning {
    /// Made from one immutable stored sample or event (Observation, RiskAssessment, Provenance) or from its id
    /// alone (Location): exactly one version, `1`.
    Single,
    /// Derived from rows updated in place (DeviceMetric): only the current version is known; its id is a
    /// digest of its content.
    CurrentOnly,
    /// Every version is kept: Device (migration 0009's `device_versions`), DetectedIssue (one version per
    /// stored alarm state change) and MedicationAdministration (one per stored infusion status report),
    /// numbered 1, 2, … in the order the cloud stored them.
    Kept,
}

/// How `resource_type` is versioned; `None` for a type this server does not serve.
pub fn versioning(resource_type: &str) -> Option<Versioning> {
    match resource_type {
        "Observation" | "RiskAssessment" | "Provenance" | "Location" => Some(Versioning::Single),
        "DeviceMetric" => Some(Versioning::CurrentOnly),
        "Device" | "DetectedIssue" | "MedicationAdministration" => Some(Versioning::Kept),
        _ => None,
    }
}

/// How the resource `resource_type/id` is versioned: as its type, except that a VMD or channel `Device`
/// (derived, like a DeviceMetric) has only its current version.
pub fn versioning_of(resource_type: &str, id: &str) -> Option<Versioning> {
    if resource_type == "Device" && id.contains('.') {
        return Some(Versioning::CurrentOnly);
    }
    versioning(resource_type)
}

/// The outcome of a version read.
#[derive(Debug)]
pub enum VersionRead {
    /// That version.
    Found(serde_json::Value),
    /// No such resource.
    NoResource,
    /// The resource exists but not in that version; the text says which versions there are.
    NoVersion(String),
}

/// One page of an instance's versions, newest first.
#[derive(Debug)]
pub struct Versions {
    /// How many versions the resource has (the newest one's number for kept types).
    pub total: u64,
    /// The versions on this page, newest first.
    pub versions: Vec<serde_json::Value>,
    /// The version to continue below on the next page, if there are older ones.
    pub next_before: Option<u64>,
}

fn version_of(resource: &serde_json::Value) -> Option<&str> {
    resource.get("meta")?.get("versionId")?.as_str()
}

/// A numbered version id (`1`, `2`, …), as kept types use.
fn version_number(vid: &str) -> Option<u64> {
    vid.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| vid.parse().ok())
        .flatten()
        .filter(|v| *v > 0)
}

/// `GET [base]/{type}/{id}/_history/{vid}`: one version of a resource.
pub async fn read_version(
    store: &Store,
    cfg: &ApiConfig,
    resource_type: &str,
    id: &str,
    vid: &str,
) -> Result<VersionRead, CloudError> {
    let no_version = |have: String| {
        VersionRead::NoVersion(format!(
            "{resource_type}/{id} has no version {:?} ({have})",
            vid.chars().take(64).collect::<String>()
        ))
    };
    let versioned = versioning_of(resource_type, id);
    match versioned {
        None => Err(CloudError::NotSupported(format!(
            "resource type {resource_type:?} is not served (served: {})",
            READABLE_TYPES.join(", ")
        ))),
        Some(Versioning::Single | Versioning::CurrentOnly) => {
            let Some(current) = read_resource(store, cfg, resource_type, id).await? else {
                return Ok(VersionRead::NoResource);
            };
            let have = version_of(&current).unwrap_or_default().to_string();
            if have == vid {
                Ok(VersionRead::Found(current))
            } else if versioned == Some(Versioning::Single) {
                Ok(no_version(format!(
                    "it is made from immutable data and has exactly one version, {have:?}"
                )))
            } else {
                Ok(no_version(format!(
                    "only the current version, {have:?}, is known: earlier versions are not kept"
                )))
            }
        }
        Some(Versioning::Kept) => {
            let n = version_number(vid);
            let page = read_history(store, cfg, resource_type, id, n.map(|v| v + 1), 1).await?;
            let Some(page) = page else {
                return Ok(VersionRead::NoResource);
            };
            match (n, page.versions.into_iter().next()) {
                (Some(n), Some(v)) if version_of(&v) == Some(n.to_string().as_str()) => {
                    Ok(VersionRead::Found(v))
                }
                _ => Ok(no_version(format!("its versions are 1 to {}", page.total))),
            }
        }
    }
}

/// `GET [base]/{type}/{id}/_history`: the versions of a resource, newest first, those numbered below
/// `before` (all when `None`), at most `limit`. `Ok(None)` when there is no such resource.
pub async fn read_history(
    store: &Store,
    cfg: &ApiConfig,
    resource_type: &str,
    id: &str,
    before: Option<u64>,
    limit: u32,
) -> Result<Option<Versions>, CloudError> {
    let limit = limit.max(1);
    let single = |current: serde_json::Value| Versions {
        total: 1,
        // A cursor can only point below version 1 of a single-version resource: nothing is older.
        versions: if before.is_some_and(|b| b <= 1) && version_of(&current) == Some(ONLY_VERSION) {
            Vec::new()
        } else {
            vec![current]
        },
        next_before: None,
    };
    match (resource_type, versioning_of(resource_type, id)) {
        (_, None) => Err(CloudError::NotSupported(format!(
            "resource type {resource_type:?} is not served (served: {})",
            READABLE_TYPES.join(", ")
        ))),
        (_, Some(Versioning::Single | Versioning::CurrentOnly)) => {
            Ok(read_resource(store, cfg, resource_type, id)
                .await?
                .map(single))
        }
        ("Device", _) => {
            let Ok(device) = DeviceId::new(id) else {
                return Ok(None);
            };
            let Some((total, _)) = store
                .device_versions(device.as_str(), None, 1)
                .await?
                .into_iter()
                .next()
            else {
                return Ok(None);
            };
            let before = before.and_then(|b| i64::try_from(b).ok());
            let rows = store
                .device_versions(device.as_str(), before, limit)
                .await?;
            let mut versions = Vec::with_capacity(rows.len());
            for (v, row) in &rows {
                versions.push(crate::api::device_to_fhir(row, *v, &cfg.device_id_system)?);
            }
            let oldest = rows.last().map(|(v, _)| *v);
            Ok(Some(Versions {
                total: u64::try_from(total).unwrap_or(0),
                versions,
                next_before: oldest
                    .filter(|v| *v > 1)
                    .and_then(|v| u64::try_from(v).ok()),
            }))
        }
        ("DetectedIssue", _) => {
            if !is_fhir_id(id) {
                return Ok(None);
            }
            let events = store.group_versions(GroupKind::Alarm, id, None).await?;
            if events.is_empty() {
                return Ok(None);
            }
            kept_versions(&events, before, limit, |prefix| alarm_to_fhir(cfg, prefix)).map(Some)
        }
        ("MedicationAdministration", _) => {
            if !is_fhir_id(id) {
                return Ok(None);
            }
            let Some(current) = store.order_summary(id).await? else {
                return Ok(None);
            };
            let total = u64::try_from(current.reports).unwrap_or(0);
            let newest = before.map_or(total, |b| b.saturating_sub(1).min(total));
            let events = store
                .group_versions(
                    GroupKind::Order,
                    id,
                    Some(u32::try_from(newest).unwrap_or(u32::MAX)),
                )
                .await?;
            let mut page = kept_versions(&events, None, limit, |prefix| {
                let summary = OrderSummary::of_reports(prefix)
                    .ok_or_else(|| unmappable("MedicationAdministration", "no reports"))?;
                order_to_fhir(cfg, &summary)
            })?;
            page.total = total;
            Ok(Some(page))
        }
        (other, _) => Err(CloudError::Unavailable(format!(
            "no version store for {other}"
        ))),
    }
}

/// The versions of a resource whose version `n` is built from the first `n` of `events`: newest first, below
/// `before`, at most `limit`.
fn kept_versions(
    events: &[EventRow],
    before: Option<u64>,
    limit: u32,
    build: impl Fn(&[EventRow]) -> Result<serde_json::Value, CloudError>,
) -> Result<Versions, CloudError> {
    let total = events.len();
    let newest = before.map_or(total, |b| {
        usize::try_from(b.saturating_sub(1)).map_or(total, |b| b.min(total))
    });
    let oldest = newest.saturating_sub(limit as usize) + 1;
    let mut versions = Vec::new();
    for n in (oldest..=newest).rev() {
        versions.push(build(&events[..n])?);
    }
    Ok(Versions {
        total: total as u64,
        next_before: (newest > 0 && oldest > 1).then_some(oldest as u64),
        versions,
    })
}

/// Whether a stored event is a model prediction (a RiskAssessment).
pub fn is_model_prediction(ev: &EventRow) -> bool {
    matches!(&ev.payload, Payload::Risk(r) if matches!(r.score, Some(risk_score::Score::Model(_))))
}

fn news2_parameter(p: P) -> News2Parameter<'static> {
    let (code, display) = match p {
        P::Unspecified => ("unspecified", "Unspecified"),
        P::RespirationRate => ("respiration-rate", "Respiration rate"),
        P::Spo2 => ("spo2", "SpO2"),
        P::AirOrOxygen => ("air-or-oxygen", "Air or oxygen"),
        P::SystolicBp => ("systolic-bp", "Systolic blood pressure"),
        P::Pulse => ("pulse", "Pulse"),
        P::Consciousness => ("consciousness", "Consciousness"),
        P::Temperature => ("temperature", "Temperature"),
    };
    News2Parameter { code, display }
}

fn news2_response(r: News2Response) -> Option<(&'static str, &'static str)> {
    match r {
        News2Response::Unspecified => None,
        News2Response::Routine => Some(("routine", "Routine monitoring (aggregate 0)")),
        News2Response::Low => Some(("low", "Low (aggregate 1-4): ward-based response")),
        News2Response::LowMedium => Some((
            "low-medium",
            "Low-medium (3 in a single parameter): urgent ward-based response",
        )),
        News2Response::Medium => Some((
            "medium",
            "Medium (aggregate 5-6): key threshold for urgent response",
        )),
        News2Response::High => Some((
            "high",
            "High (aggregate 7 or more): urgent or emergency response",
        )),
    }
}

/// The Observation ids of the vital signs a risk score names in `derived_from` (idempotency keys on the
/// same edge); keys that are not stored vital signs are left out.
async fn derived_observation_ids(
    store: &Store,
    edge: &str,
    keys: &[String],
) -> Result<Vec<String>, CloudError> {
    let seqs = store.vital_sequences_by_keys(edge, keys).await?;
    Ok(seqs
        .into_iter()
        .map(|s| format!("{edge}.{s}"))
        .filter(|id| is_fhir_id(id))
        .collect())
}

/// A stored NEWS2 score as an Observation.
pub async fn news2_to_fhir(
    store: &Store,
    cfg: &ApiConfig,
    ev: &EventRow,
) -> Result<serde_json::Value, CloudError> {
    let id = ev.lineage_id();
    let Payload::Risk(r) = &ev.payload else {
        return Err(unmappable(&id, "not a risk score"));
    };
    let Some(risk_score::Score::News2(n)) = &r.score else {
        return Err(unmappable(&id, "not a NEWS2 score"));
    };
    let derived = derived_observation_ids(store, &ev.edge_id, &r.derived_from).await?;
    let lineage = lineage_uri(&ev.edge_id, ev.sequence);
    let rec = News2Record {
        id: &id,
        patient_system: &cfg.mrn_system,
        patient_id: &r.patient_id,
        total: n.total,
        sub_scores: n
            .sub_scores
            .iter()
            .map(|s| (news2_parameter(s.parameter()), s.score))
            .collect(),
        missing: n.missing().map(news2_parameter).collect(),
        response: news2_response(n.response()),
        spo2_scale_2: n.spo2_scale_2,
        effective_unix_ms: r.computed_at_unix_ms,
        issued_unix_ms: ev.received_at_ms,
        derived_from: derived,
        source_lineage: Some(&lineage),
    };
    let res = wardwatch_fhir::news2_observation(&rec)
        .map_err(|e| unmappable(&format!("NEWS2 {id}"), e))?;
    stamp_version(res, ONLY_VERSION, Some(ev.received_at_ms))
}

/// A stored model prediction as a RiskAssessment.
pub async fn risk_assessment_to_fhir(
    store: &Store,
    cfg: &ApiConfig,
    ev: &EventRow,
) -> Result<serde_json::Value, CloudError> {
    let id = ev.lineage_id();
    let Payload::Risk(r) = &ev.payload else {
        return Err(unmappable(&id, "not a risk score"));
    };
    let Some(risk_score::Score::Model(m)) = &r.score else {
        return Err(unmappable(&id, "not a model prediction"));
    };
    let basis = derived_observation_ids(store, &ev.edge_id, &r.derived_from).await?;
    let lineage = lineage_uri(&ev.edge_id, ev.sequence);
    let window = (m.window_start_unix_ms > 0 && m.window_end_unix_ms >= m.window_start_unix_ms)
        .then_some((m.window_start_unix_ms, m.window_end_unix_ms));
    let rec = RiskAssessmentRecord {
        id: &id,
        patient_system: &cfg.mrn_system,
        patient_id: &r.patient_id,
        occurrence_unix_ms: r.computed_at_unix_ms,
        stored_unix_ms: ev.received_at_ms,
        probability: m.probability,
        outcome: if m.outcome.trim().is_empty() {
            "deterioration"
        } else {
            &m.outcome
        },
        model_name: &m.model_name,
        model_version: &m.model_version,
        window,
        basis,
        source_lineage: Some(&lineage),
    };
    let res = wardwatch_fhir::risk_assessment(&rec)
        .map_err(|e| unmappable(&format!("RiskAssessment {id}"), e))?;
    stamp_version(res, ONLY_VERSION, Some(ev.received_at_ms))
}

/// The Provenance of a stored model prediction: model name, version and hash.
pub async fn provenance_to_fhir(
    store: &Store,
    ev: &EventRow,
) -> Result<serde_json::Value, CloudError> {
    let id = ev.lineage_id();
    let Payload::Risk(r) = &ev.payload else {
        return Err(unmappable(&id, "not a risk score"));
    };
    let Some(risk_score::Score::Model(m)) = &r.score else {
        return Err(unmappable(&id, "not a model prediction"));
    };
    let inputs = derived_observation_ids(store, &ev.edge_id, &r.derived_from).await?;
    let rec = ModelProvenanceRecord {
        id: &id,
        target: ("RiskAssessment", &id),
        occurred_unix_ms: r.computed_at_unix_ms,
        recorded_unix_ms: ev.received_at_ms,
        model_name: &m.model_name,
        model_version: &m.model_version,
        model_sha256: &m.model_sha256,
        edge_id: &ev.edge_id,
        inputs,
    };
    let res = wardwatch_fhir::model_provenance(&rec)
        .map_err(|e| unmappable(&format!("Provenance {id}"), e))?;
    stamp_version(res, ONLY_VERSION, Some(ev.received_at_ms))
}

/// The measurements of one infusion status report: (suffix, MDC code, MDC reference, value, unit).
pub fn infusion_measurements(
    i: &wardwatch_proto::v1::InfusionStatus,
) -> [(&'static str, u32, &'static str, f64, &'static str); 3] {
    [
        (
            "rate",
            INFUSION_RATE_MDC,
            "MDC_FLOW_FLUID_PUMP",
            i.measured_rate_ml_h,
            "mL/h",
        ),
        (
            "infused",
            INFUSION_INFUSED_MDC,
            "MDC_VOL_FLUID_DELIV_TOTAL",
            i.volume_infused_ml,
            "mL",
        ),
        (
            "remaining",
            INFUSION_REMAINING_MDC,
            "MDC_VOL_FLUID_TBI_REMAIN",
            i.volume_remaining_ml,
            "mL",
        ),
    ]
}

/// One measurement (`rate`, `infused` or `remaining`) of a stored infusion report as an Observation.
pub fn infusion_observation_to_fhir(
    cfg: &ApiConfig,
    ev: &EventRow,
    suffix: &str,
) -> Result<serde_json::Value, CloudError> {
    let id = format!("{}.{suffix}", ev.lineage_id());
    let Payload::Infusion(i) = &ev.payload else {
        return Err(unmappable(&id, "not an infusion report"));
    };
    let Some((_, mdc, mdc_ref, value, unit)) = infusion_measurements(i)
        .into_iter()
        .find(|(s, ..)| *s == suffix)
    else {
        return Err(unmappable(&id, "unknown infusion measurement"));
    };
    let code = mdc.to_string();
    let lineage = lineage_uri(&ev.edge_id, ev.sequence);
    let metric = metric_id(&i.device_id, i64::from(mdc));
    let rec = InfusionObservationRecord {
        id: &id,
        patient_system: &cfg.mrn_system,
        patient_id: &i.patient_id,
        encounter: encounter_reference(cfg, i.encounter.as_ref()),
        device: DeviceReference::DeviceMetric(&metric),
        code: vec![Coding {
            system: wardwatch_fhir::MDC,
            code: &code,
            display: mdc_ref,
        }],
        value,
        unit,
        order_id: &i.order_id,
        administration_id: is_fhir_id(&i.order_id).then_some(i.order_id.as_str()),
        effective_unix_ms: i.measured_at_unix_ms,
        issued_unix_ms: ev.received_at_ms,
        source_lineage: Some(&lineage),
    };
    let res = wardwatch_fhir::infusion_observation(&rec)
        .map_err(|e| unmappable(&format!("Observation {id}"), e))?;
    stamp_version(res, ONLY_VERSION, Some(ev.received_at_ms))
}

fn priority_code(p: AlarmPriority) -> &'static str {
    match p {
        AlarmPriority::High => "high",
        AlarmPriority::Medium => "medium",
        AlarmPriority::Low => "low",
        AlarmPriority::Info | AlarmPriority::Unspecified => "info",
    }
}

fn kind_display(code: &str) -> String {
    let mut s = code.replace('-', " ");
    if let Some(f) = s.get(..1) {
        let up = f.to_uppercase();
        s.replace_range(..1, &up);
    }
    s
}

/// An alarm's stored state changes (in order) as one DetectedIssue.
pub fn alarm_to_fhir(
    cfg: &ApiConfig,
    history: &[EventRow],
) -> Result<serde_json::Value, CloudError> {
    let alarms: Vec<&wardwatch_proto::v1::Alarm> = history
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::Alarm(a) => Some(a),
            _ => None,
        })
        .collect();
    let (Some(first), Some(last)) = (alarms.first(), alarms.last()) else {
        return Err(unmappable("alarm", "no state changes"));
    };
    let id = alarm_resource_id(&first.alarm_id);
    let kind_code = alarm_kind_code(last.kind());
    let kind_disp = kind_display(kind_code);
    let (ward, bed) = last
        .location
        .as_ref()
        .map(|l| (l.ward.as_str(), l.bed.as_str()))
        .unwrap_or(("", ""));
    let location = (!ward.is_empty()).then(|| {
        let display = if bed.is_empty() {
            format!("Ward {ward}")
        } else {
            format!("Ward {ward}, bed {bed}")
        };
        (location_id(ward, bed), display)
    });
    let rec = AlarmRecord {
        id: &id,
        alarm_id: &first.alarm_id,
        kind: (kind_code, &kind_disp),
        patient_system: &cfg.mrn_system,
        patient_id: Some(last.patient_id.as_str()).filter(|p| !p.is_empty()),
        device_id: Some(last.device_id.as_str()).filter(|d| is_fhir_id(d)),
        location: location.as_ref().map(|(i, d)| (i.as_deref(), d.clone())),
        history: alarms
            .iter()
            .map(|a| AlarmChange {
                state: alarm_state_code(a.state()),
                at_unix_ms: a.changed_at_unix_ms,
                by: &a.changed_by,
                priority: priority_code(a.priority()),
                message: &a.message,
            })
            .collect(),
    };
    wardwatch_fhir::alarm_detected_issue(&rec)
        .map_err(|e| unmappable(&format!("DetectedIssue {id}"), e))
}

/// An infusion report's encounter as a logical reference by visit number, `None` when the source named none.
fn encounter_reference<'a>(
    cfg: &'a ApiConfig,
    encounter: Option<&'a wardwatch_proto::v1::EncounterId>,
) -> Option<wardwatch_fhir::EncounterReference<'a>> {
    encounter
        .filter(|e| !e.visit_number.is_empty())
        .map(|e| wardwatch_fhir::EncounterReference {
            system: &cfg.visit_number_system,
            value: &e.visit_number,
            assigner: (!e.assigning_authority.is_empty()).then_some(e.assigning_authority.as_str()),
        })
}

/// The MedicationAdministration of one medication order, from its reports.
pub fn order_to_fhir(cfg: &ApiConfig, s: &OrderSummary) -> Result<serde_json::Value, CloudError> {
    let Payload::Infusion(i) = &s.latest.payload else {
        return Err(unmappable(
            "MedicationAdministration",
            "not an infusion report",
        ));
    };
    let state = i.state();
    let status = match state {
        InfusionState::Paused => "on-hold",
        InfusionState::Completed => "completed",
        _ if s.completed_ms.is_some() && state == InfusionState::Kvo => "completed",
        _ => "in-progress",
    };
    let latest = s.latest.lineage_id();
    let supporting: Vec<String> = ["rate", "infused", "remaining"]
        .iter()
        .map(|suffix| format!("{latest}.{suffix}"))
        .filter(|id| is_fhir_id(id))
        .collect();
    let rec = MedicationAdministrationRecord {
        id: &i.order_id,
        order_id: &i.order_id,
        patient_system: &cfg.mrn_system,
        patient_id: &i.patient_id,
        medication: &i.medication,
        status,
        device_state: infusion_state_code(state),
        started_unix_ms: s.first_ms,
        ended_unix_ms: if status == "completed" {
            s.completed_ms.or(Some(i.measured_at_unix_ms))
        } else {
            None
        },
        last_updated_unix_ms: i.measured_at_unix_ms,
        version: u64::try_from(s.reports).unwrap_or(1),
        device_id: Some(i.device_id.as_str()).filter(|d| is_fhir_id(d)),
        prescribed_rate_ml_h: (i.prescribed_rate_ml_h > 0.0).then_some(i.prescribed_rate_ml_h),
        supporting,
        context: encounter_reference(cfg, i.encounter.as_ref()),
    };
    wardwatch_fhir::medication_administration(&rec)
        .map_err(|e| unmappable(&format!("MedicationAdministration {}", i.order_id), e))
}

/// A device channel as a DeviceMetric; `device_state` is the device's `OperationalState` value, if known.
pub fn channel_to_fhir(
    c: &ChannelRow,
    device_state: Option<i64>,
) -> Result<serde_json::Value, CloudError> {
    let id = metric_id(&c.device_id, c.metric_mdc);
    let mdc = u32::try_from(c.metric_mdc).unwrap_or(0);
    let parent = channel_id(&c.device_id, containment::group_of(mdc));
    let code = mdc.to_string();
    let metric = metrics::by_mdc(mdc);
    let (mdc_ref, loinc, loinc_display) = match metric {
        Some(m) => (m.mdc_ref, m.loinc, m.display),
        None => match mdc {
            INFUSION_RATE_MDC => ("MDC_FLOW_FLUID_PUMP", "", ""),
            INFUSION_INFUSED_MDC => ("MDC_VOL_FLUID_DELIV_TOTAL", "", ""),
            INFUSION_REMAINING_MDC => ("MDC_VOL_FLUID_TBI_REMAIN", "", ""),
            _ => ("", "", ""),
        },
    };
    let mut codes = vec![Coding {
        system: if metrics::is_private(mdc) {
            "urn:wardwatch:metric"
        } else {
            wardwatch_fhir::MDC
        },
        code: &code,
        display: mdc_ref,
    }];
    if !loinc.is_empty() {
        codes.push(Coding {
            system: wardwatch_fhir::LOINC,
            code: loinc,
            display: loinc_display,
        });
    }
    let status = device_state
        .and_then(|s| i32::try_from(s).ok())
        .and_then(|s| OperationalState::try_from(s).ok())
        .and_then(|s| match s {
            OperationalState::On => Some("on"),
            OperationalState::Off => Some("off"),
            OperationalState::Standby => Some("standby"),
            _ => None,
        });
    let rec = DeviceMetricRecord {
        id: &id,
        type_codes: codes,
        unit: Some(c.unit.as_str()).filter(|u| !u.is_empty()),
        device_id: &c.device_id,
        parent_id: Some(&parent),
        operational_status: status,
        last_seen_unix_ms: c.last_seen_ms,
    };
    let res = wardwatch_fhir::device_metric(&rec)
        .map_err(|e| unmappable(&format!("DeviceMetric {id}"), e))?;
    // No history is kept (the channel row is updated in place): the version is a digest of the content, so
    // it changes exactly when the resource does.
    let version = content_version(&res);
    stamp_version(res, &version, None)
}

/// A version id that is a digest of a resource's JSON (everything but `meta.versionId`, so `meta.lastUpdated`
/// counts): `h` and 24 hex digits.
pub fn content_version(resource: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let mut content = resource.clone();
    if let Some(m) = content
        .get_mut("meta")
        .and_then(serde_json::Value::as_object_mut)
    {
        m.remove("versionId");
    }
    let d = Sha256::digest(content.to_string().as_bytes());
    format!("h{}", hex::encode(&d[..12]))
}

/// A ward (bed `""`) or bed as a Location.
pub fn location_to_fhir(ward: &str, bed: &str) -> Result<serde_json::Value, CloudError> {
    let id = location_id(ward, bed)
        .ok_or_else(|| unmappable("Location", format!("{ward:?}/{bed:?} is not a FHIR id")))?;
    let rec = LocationRecord {
        id: &id,
        ward,
        bed: (!bed.is_empty()).then_some(bed),
        identifier_system: LOCATION_SYSTEM,
    };
    let res =
        wardwatch_fhir::location(&rec).map_err(|e| unmappable(&format!("Location {id}"), e))?;
    // A Location is made from its id alone (ward, bed): it never changes.
    stamp_version(res, ONLY_VERSION, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_ids_round_trip_and_junk_is_refused() {
        let (edge, seq, suffix) = parse_lineage_id("edge-7a.42").expect("valid id");
        assert_eq!((edge.as_str(), seq, suffix), ("edge-7a", 42, ""));
        let (edge, seq, suffix) = parse_lineage_id("edge-7a.42.rate").expect("suffixed id");
        assert_eq!((edge.as_str(), seq, suffix), ("edge-7a", 42, "rate"));
        for bad in [
            "edge-7a",
            "edge-7a.",
            "edge-7a.0",
            "edge-7a.-1",
            "edge-7a.+1",
            ".5",
            "edge 7a.5",
            "edge-7a.5.",
            "e.18446744073709551616",
        ] {
            assert!(parse_lineage_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn versions_are_numbers_from_one_and_pages_go_newest_first() {
        assert_eq!(version_number("3"), Some(3));
        for bad in ["0", "", "-1", "+1", "1.0", "x", "99999999999999999999999"] {
            assert_eq!(version_number(bad), None, "{bad}");
        }
        assert_eq!(versioning("Observation"), Some(Versioning::Single));
        assert_eq!(versioning("DeviceMetric"), Some(Versioning::CurrentOnly));
        assert_eq!(versioning("DetectedIssue"), Some(Versioning::Kept));
        assert_eq!(versioning("Patient"), None);
        for t in READABLE_TYPES {
            assert!(versioning(t).is_some(), "{t} has a version rule");
        }
        // Version n is built from the first n events; pages go newest first and say where to continue.
        let events: Vec<EventRow> = (1..=5)
            .map(|i| EventRow {
                edge_id: "e".into(),
                sequence: i,
                kind: "alarm".into(),
                payload: Payload::Alarm(Default::default()),
                received_at_ms: i,
                event_ms: i,
            })
            .collect();
        let build = |prefix: &[EventRow]| Ok(serde_json::json!(prefix.len()));
        let all = kept_versions(&events, None, 50, build).unwrap();
        assert_eq!(
            (all.total, all.versions.clone(), all.next_before),
            (
                5,
                (1..=5).rev().map(|n| serde_json::json!(n)).collect(),
                None
            )
        );
        let p1 = kept_versions(&events, None, 2, build).unwrap();
        assert_eq!(p1.versions, [serde_json::json!(5), serde_json::json!(4)]);
        assert_eq!(p1.next_before, Some(4));
        let p2 = kept_versions(&events, Some(4), 2, build).unwrap();
        assert_eq!(p2.versions, [serde_json::json!(3), serde_json::json!(2)]);
        let p3 = kept_versions(&events, Some(2), 2, build).unwrap();
        assert_eq!(
            (p3.versions, p3.next_before),
            (vec![serde_json::json!(1)], None)
        );
        assert!(
            kept_versions(&events, Some(1), 2, build)
                .unwrap()
                .versions
                .is_empty()
        );
        // A cursor beyond the newest starts at the newest.
        assert_eq!(
            kept_versions(&events, Some(99), 1, build).unwrap().versions,
            [serde_json::json!(5)]
        );
    }

    #[test]
    fn content_versions_change_exactly_with_the_resource() {
        let a = serde_json::json!({"resourceType": "DeviceMetric", "id": "d.1", "unit": "x", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}});
        let mut b = a.clone();
        b["meta"]["lastUpdated"] = "2027-01-01T00:00:00Z".into();
        assert_ne!(content_version(&a), content_version(&b), "last seen moved");
        let mut stamped = a.clone();
        stamped["meta"]["versionId"] = content_version(&a).into();
        assert_eq!(
            content_version(&a),
            content_version(&stamped),
            "the stamp itself does not count"
        );
        let mut c = a.clone();
        c["unit"] = "y".into();
        assert_ne!(content_version(&a), content_version(&c));
        assert!(is_fhir_id(&content_version(&a)));
    }

    fn chan(device: &str, mdc: i64) -> ChannelRow {
        ChannelRow {
            device_id: device.into(),
            metric_mdc: mdc,
            unit: String::new(),
            patient_id: "P1".into(),
            ward: "7A".into(),
            bed: "1".into(),
            first_seen_ms: 1_000,
            last_seen_ms: 1_000 + mdc,
        }
    }

    #[test]
    fn tree_ids_are_stable_and_fit_fhir_ids_for_long_devices() {
        let spo2 = containment::group_of(150_456);
        assert_eq!(vmd_id("mon-7A-1", spo2), "mon-7A-1.vmd-spo2");
        assert_eq!(channel_id("mon-7A-1", spo2), "mon-7A-1.chan-spo2");
        assert_eq!(metric_id("mon-7A-1", 150_456), "mon-7A-1.150456");
        assert_eq!(
            parse_device_id("mon-7A-1.vmd-spo2"),
            Some(("mon-7A-1", Some(Component::Vmd(spo2))))
        );
        assert_eq!(
            parse_device_id("mon-7A-1.chan-other"),
            Some((
                "mon-7A-1",
                Some(Component::Channel(&containment::OTHER_GROUP))
            ))
        );
        assert_eq!(parse_device_id("mon-7A-1"), Some(("mon-7A-1", None)));
        for bad in ["mon.vmd-nope", "mon.150456", "mon.x", "a b", ""] {
            assert_eq!(parse_device_id(bad), None, "{bad}");
        }
        // A 64-character device id: every tree id is shortened, still unique per device and valid.
        let long = "d".repeat(64);
        let other = format!("{}e", "d".repeat(63));
        for id in [
            vmd_id(&long, spo2),
            channel_id(&long, &containment::METRIC_GROUPS[5]),
            metric_id(&long, 157_993),
        ] {
            assert!(is_fhir_id(&id), "{id}");
            assert!(id.len() <= 64, "{id}");
            assert!(id.starts_with(&"d".repeat(36)), "{id}");
        }
        assert_ne!(metric_id(&long, 1), metric_id(&other, 1));
        assert_eq!(metric_id(&long, 1), metric_id(&long, 1), "stable");
        let long_channel = channel_id(&long, spo2);
        let (part, c) = parse_device_id(&long_channel).expect("parses");
        assert_eq!(part, tree_device_part(&long, ".chan-spo2"));
        assert_eq!(c, Some(Component::Channel(spo2)));
        // Ids that fit are never shortened.
        let fits = "f".repeat(50);
        assert_eq!(vmd_id(&fits, spo2), format!("{fits}.vmd-spo2"));
        assert_eq!(metric_id(&fits, 150_456), format!("{fits}.150456"));
    }

    #[test]
    fn components_follow_the_table_and_keep_unknown_metrics() {
        let channels = [
            chan("m", 150_456),
            chan("m", 149_530),
            chan("m", 150_021),
            chan("m", 192_512),
            chan("m", 424_242),
        ];
        let got: Vec<(String, usize)> = components_of(&channels)
            .into_iter()
            .map(|(c, cs)| (c.id("m"), cs.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("m.vmd-spo2".to_string(), 2),
                ("m.chan-spo2".to_string(), 2),
                ("m.vmd-nibp".to_string(), 1),
                ("m.chan-nibp".to_string(), 1),
                ("m.vmd-other".to_string(), 2),
                ("m.chan-other".to_string(), 2),
            ]
        );
        let comps = components_of(&channels);
        let (c, cs) = &comps[1];
        let channel = component_to_fhir("m", *c, cs, None).expect("maps");
        assert_eq!(channel["parent"]["reference"], "Device/m.vmd-spo2");
        assert_eq!(channel["type"]["coding"][0]["code"], "69643");
        assert_eq!(channel["status"], "unknown");
        assert!(
            channel["meta"]["versionId"]
                .as_str()
                .is_some_and(|v| v.starts_with('h'))
        );
        let (c, cs) = &comps[4];
        let vmd = component_to_fhir("m", *c, cs, None).expect("maps");
        assert_eq!(vmd["parent"]["reference"], "Device/m");
        assert!(
            vmd["type"].get("coding").is_none(),
            "no MDC code for the generic group"
        );
        // A metric's parent is its channel, its source the MDS.
        let m = channel_to_fhir(&chan("m", 192_512), None).expect("maps");
        assert_eq!(m["parent"]["reference"], "Device/m.chan-other");
        assert_eq!(m["source"]["reference"], "Device/m");
        assert_eq!(
            versioning_of("Device", "m.vmd-spo2"),
            Some(Versioning::CurrentOnly)
        );
        assert_eq!(versioning_of("Device", "m"), Some(Versioning::Kept));
    }

    fn device_row(id: &str, kind: i32) -> DeviceRow {
        DeviceRow {
            device_id: id.into(),
            edge_id: "edge-7a".into(),
            kind: i64::from(kind),
            manufacturer: "Acme".into(),
            model: "M1".into(),
            serial: "S1".into(),
            udi: String::new(),
            ward: "7A".into(),
            bed: "1".into(),
            state: i64::from(OperationalState::On as i32),
            reported_at_ms: 1_000,
        }
    }

    #[test]
    fn trees_of_each_device_kind() {
        use wardwatch_proto::v1::DeviceKind;
        let code =
            |v: &serde_json::Value| v["type"]["coding"][0]["code"].as_str().map(str::to_string);
        // MDS types per kind.
        for (kind, mds) in [
            (DeviceKind::BedsideMonitor, Some("69965")),
            (DeviceKind::InfusionPump, Some("69985")),
            (DeviceKind::DripMonitor, None),
            (DeviceKind::Wearable, None),
            (DeviceKind::Unspecified, None),
        ] {
            let d = crate::api::device_to_fhir(&device_row("d1", kind as i32), 1, "urn:x")
                .expect("maps");
            assert_eq!(code(&d).as_deref(), mds, "{kind:?}");
            assert!(d["type"]["text"].as_str().is_some_and(|t| !t.is_empty()));
        }
        // A monitor's VMDs are coded; a pump's infusion VMD and channel too, a drip monitor's are text only.
        let monitor = device_row("mon", DeviceKind::BedsideMonitor as i32);
        let channels = [
            chan("mon", 150_456),
            chan("mon", 150_364),
            chan("mon", 151_562),
        ];
        let got: Vec<(String, Option<String>, String)> = components_of(&channels)
            .into_iter()
            .map(|(c, cs)| {
                let r = component_to_fhir("mon", c, &cs, Some(&monitor)).expect("maps");
                (
                    r["id"].as_str().unwrap_or_default().to_string(),
                    code(&r),
                    r["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(
            got.iter()
                .map(|(i, c, _)| (i.as_str(), c.as_deref()))
                .collect::<Vec<_>>(),
            [
                ("mon.vmd-spo2", Some("69642")),
                ("mon.chan-spo2", Some("69643")),
                ("mon.vmd-temp", Some("69902")),
                ("mon.chan-temp", Some("69903")),
                ("mon.vmd-resp", Some("69722")),
                ("mon.chan-resp", Some("69723")),
            ]
        );
        assert!(
            got.iter().all(|(_, _, s)| s == "active"),
            "the MDS's status"
        );
        for (kind, vmd, channel) in [
            (DeviceKind::InfusionPump, Some("69986"), Some("126978")),
            (DeviceKind::DripMonitor, None, None),
        ] {
            let row = device_row("p", kind as i32);
            let cs = [chan("p", 157_784), chan("p", 157_993), chan("p", 157_872)];
            let comps = components_of(&cs);
            assert_eq!(
                comps.len(),
                2,
                "one VMD and one channel for the three infusion metrics"
            );
            let v = component_to_fhir("p", comps[0].0, &comps[0].1, Some(&row)).expect("maps");
            let c = component_to_fhir("p", comps[1].0, &comps[1].1, Some(&row)).expect("maps");
            assert_eq!(
                (code(&v).as_deref(), code(&c).as_deref()),
                (vmd, channel),
                "{kind:?}"
            );
            assert_eq!(v["id"], "p.vmd-infusion");
            assert_eq!(c["parent"]["reference"], "Device/p.vmd-infusion");
        }
    }

    #[test]
    fn alarm_and_location_ids_stay_in_the_fhir_alphabet() {
        assert_eq!(alarm_resource_id("edge-7a-alarm-3"), "edge-7a-alarm-3");
        assert_eq!(alarm_resource_id("e_7:a"), "e-7-a");
        assert_eq!(alarm_resource_id(&"x".repeat(80)).len(), 64);
        assert_eq!(location_id("7A", ""), Some("7A".into()));
        assert_eq!(location_id("7A", "12"), Some("7A.12".into()));
        assert_eq!(location_id("7_A", "12"), None);
        assert_eq!(location_id("", "12"), None);
        assert_eq!(location_id("7A", "1 2"), None);
    }
}
