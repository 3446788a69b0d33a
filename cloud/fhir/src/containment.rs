//! The IEEE 11073 containment tree as the HL7 Point-of-Care Device IG models it: MDS → VMD → channel →
//! metric. The MDS, each VMD and each channel are `Device` resources linked by `Device.parent`; each metric is
//! a `DeviceMetric` whose `parent` is its channel and whose `source` is the MDS.
//!
//! Edges send no containment (only a `DeviceInfo` per device and the MDC code of every measurement), so the
//! cloud derives it from this module's one table, [`METRIC_GROUPS`]: which metric belongs to which VMD, and
//! which MDC device-type codes the MDS, VMD and channel get. Each group has exactly one channel. A metric in no
//! group goes to [`OTHER_GROUP`], never dropped.
//!
//! Where the device-type codes come from (docs/fhir-mapping.md has the table): the term codes below are
//! partition 1 (object infrastructure) codes of ISO/IEEE 11073-10101 as 32-bit context-free codes
//! (65536 + term code). Those marked `verified: true` appear with the same reference id in the HL7 PoCD IG's
//! examples or in IHE PCD sample messages from more than one vendor; those marked `verified: false` still
//! have to be checked against the nomenclature (RTMMS) before anyone relies on them.

/// One MDC device-type code (`urn:iso:std:iso:11073:10101`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdcDeviceType {
    /// The context-free code, e.g. `69642`.
    pub code: u32,
    /// The reference id, e.g. `MDC_DEV_ANALY_SAT_O2_VMD` (the coding's display).
    pub reference_id: &'static str,
    /// Whether the code was found with this reference id in published examples (see the module docs).
    pub verified: bool,
}

/// A measurement group: one VMD with one channel, and the metrics they contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricGroup {
    /// Short key used in ids (`<device>.vmd-<key>`, `<device>.chan-<key>`); never changes once published.
    pub key: &'static str,
    /// Human text of the VMD (`Device.type.text`); the channel's text is this plus " channel".
    pub display: &'static str,
    /// MDC type of the VMD, if one is known.
    pub vmd: Option<MdcDeviceType>,
    /// MDC type of the channel, if one is known.
    pub channel: Option<MdcDeviceType>,
    /// The codes apply only when the MDS is one of these device kinds (`urn:wardwatch:device-kind` codes);
    /// empty: any kind. (A drip-rate monitor's infusion measurements are not an infusion pump's VMD.)
    pub coded_for_kinds: &'static [&'static str],
    /// MDC codes of the metrics (the `DeviceMetric` types) in this group.
    pub metrics: &'static [u32],
}

impl MetricGroup {
    /// The VMD's MDC type for an MDS of `kind` (`None` when no code applies).
    pub fn vmd_type(&self, kind: Option<&str>) -> Option<MdcDeviceType> {
        self.vmd.filter(|_| self.codes_apply(kind))
    }

    /// The channel's MDC type for an MDS of `kind` (`None` when no code applies).
    pub fn channel_type(&self, kind: Option<&str>) -> Option<MdcDeviceType> {
        self.channel.filter(|_| self.codes_apply(kind))
    }

    fn codes_apply(&self, kind: Option<&str>) -> bool {
        self.coded_for_kinds.is_empty() || kind.is_some_and(|k| self.coded_for_kinds.contains(&k))
    }

    /// The group's position in [`METRIC_GROUPS`] (then [`OTHER_GROUP`] last): a stable order for listings.
    pub fn rank(&self) -> usize {
        METRIC_GROUPS
            .iter()
            .position(|g| g.key == self.key)
            .unwrap_or(METRIC_GROUPS.len())
    }
}

const fn verified(code: u32, reference_id: &'static str) -> Option<MdcDeviceType> {
    Some(MdcDeviceType {
        code,
        reference_id,
        verified: true,
    })
}

const fn unverified(code: u32, reference_id: &'static str) -> Option<MdcDeviceType> {
    Some(MdcDeviceType {
        code,
        reference_id,
        verified: false,
    })
}

/// Which metric belongs to which VMD and channel (the one table; docs/fhir-mapping.md repeats it).
pub const METRIC_GROUPS: &[MetricGroup] = &[
    MetricGroup {
        key: "ecg",
        display: "ECG",
        // PoCD IG examples (ECG VMD, heart rate channel) and IHE PCD messages.
        vmd: verified(69798, "MDC_DEV_ECG_VMD"),
        channel: verified(70739, "MDC_DEV_CARD_RATE_CHAN"),
        coded_for_kinds: &[],
        // MDC_ECG_HEART_RATE
        metrics: &[147842],
    },
    MetricGroup {
        key: "spo2",
        display: "Pulse oximetry",
        // IHE PCD sample messages (two vendors).
        vmd: verified(69642, "MDC_DEV_ANALY_SAT_O2_VMD"),
        channel: verified(69643, "MDC_DEV_ANALY_SAT_O2_CHAN"),
        coded_for_kinds: &[],
        // MDC_PULS_OXIM_SAT_O2, MDC_PULS_OXIM_PULS_RATE
        metrics: &[150456, 149530],
    },
    MetricGroup {
        key: "nibp",
        display: "Non-invasive blood pressure",
        // PoCD IG example (NBP channel) and IHE PCD sample messages.
        vmd: verified(70686, "MDC_DEV_PRESS_BLD_NONINV_VMD"),
        channel: verified(70687, "MDC_DEV_PRESS_BLD_NONINV_CHAN"),
        coded_for_kinds: &[],
        // MDC_PRESS_BLD_NONINV (panel), _SYS, _DIA, _MEAN, MDC_PULS_RATE_NON_INV
        metrics: &[150020, 150021, 150022, 150023, 149546],
    },
    MetricGroup {
        key: "temp",
        display: "Temperature",
        // IHE PCD sample messages.
        vmd: verified(69902, "MDC_DEV_METER_TEMP_VMD"),
        channel: verified(69903, "MDC_DEV_METER_TEMP_CHAN"),
        coded_for_kinds: &[],
        // MDC_TEMP_BODY, MDC_TEMP
        metrics: &[150364, 150344],
    },
    MetricGroup {
        key: "resp",
        display: "Respiration",
        // The channel code appears in one published IG example; the VMD code follows the nomenclature's
        // base/MDS/VMD/CHAN numbering and is not confirmed.
        vmd: unverified(69722, "MDC_DEV_ANALY_RESP_RATE_VMD"),
        channel: unverified(69723, "MDC_DEV_ANALY_RESP_RATE_CHAN"),
        coded_for_kinds: &[],
        // MDC_RESP_RATE
        metrics: &[151562],
    },
    MetricGroup {
        key: "infusion",
        display: "Infusion",
        // The VMD code appears in IHE PCD infusion-pump messages; the delivery channel code in one source only.
        vmd: verified(69986, "MDC_DEV_PUMP_INFUS_VMD"),
        channel: unverified(126978, "MDC_DEV_PUMP_INFUS_CHAN_DELIVERY"),
        coded_for_kinds: &["infusion-pump"],
        // MDC_FLOW_FLUID_PUMP, MDC_VOL_FLUID_DELIV_TOTAL, MDC_VOL_FLUID_TBI_REMAIN
        metrics: &[157784, 157993, 157872],
    },
];

/// Every metric in no group of [`METRIC_GROUPS`] (Wardwatch-private codes such as ACVPU, and any code the
/// table does not know): a VMD and channel without an MDC type.
pub const OTHER_GROUP: MetricGroup = MetricGroup {
    key: "other",
    display: "Other measurements",
    vmd: None,
    channel: None,
    coded_for_kinds: &[],
    metrics: &[],
};

/// The group a metric belongs to ([`OTHER_GROUP`] when the table does not name it).
pub fn group_of(metric_mdc: u32) -> &'static MetricGroup {
    METRIC_GROUPS
        .iter()
        .find(|g| g.metrics.contains(&metric_mdc))
        .unwrap_or(&OTHER_GROUP)
}

/// The group with this key, [`OTHER_GROUP`] included.
pub fn group_by_key(key: &str) -> Option<&'static MetricGroup> {
    METRIC_GROUPS
        .iter()
        .chain(std::iter::once(&OTHER_GROUP))
        .find(|g| g.key == key)
}

/// MDC types of the MDS per device kind (`urn:wardwatch:device-kind` code). Kinds not listed (wearable,
/// drip-monitor, unspecified) have no MDS code Wardwatch could verify and keep a text-only type.
pub const MDS_TYPES: &[(&str, MdcDeviceType)] = &[
    (
        "bedside-monitor",
        MdcDeviceType {
            // PoCD IG MDS example ("Patient Monitor") and IHE PCD messages from several vendors.
            code: 69965,
            reference_id: "MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS",
            verified: true,
        },
    ),
    (
        "infusion-pump",
        MdcDeviceType {
            // IHE PCD infusion-pump messages (several vendors).
            code: 69985,
            reference_id: "MDC_DEV_PUMP_INFUS_MDS",
            verified: true,
        },
    ),
];

/// The MDS's MDC type for a device kind, if one is known.
pub fn mds_type(kind: &str) -> Option<MdcDeviceType> {
    MDS_TYPES.iter().find(|(k, _)| *k == kind).map(|(_, t)| *t)
}

/// What an MDC device-type code names: an MDS (with the device kinds it stands for), or a group's VMD or
/// channel. For `Device?type=` searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTypeMatch {
    /// An MDS type: the device kinds that get it.
    Mds(&'static str),
    /// The VMD of this group.
    Vmd(&'static MetricGroup),
    /// The channel of this group.
    Channel(&'static MetricGroup),
}

/// Everything an MDC device-type code names in this table (empty when the code is not used here).
pub fn device_type_matches(code: u32) -> Vec<DeviceTypeMatch> {
    let mut out: Vec<DeviceTypeMatch> = MDS_TYPES
        .iter()
        .filter(|(_, t)| t.code == code)
        .map(|(k, _)| DeviceTypeMatch::Mds(k))
        .collect();
    for g in METRIC_GROUPS {
        if g.vmd.is_some_and(|t| t.code == code) {
            out.push(DeviceTypeMatch::Vmd(g));
        }
        if g.channel.is_some_and(|t| t.code == code) {
            out.push(DeviceTypeMatch::Channel(g));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_vital_and_infusion_metric_has_exactly_one_group() {
        for code in [
            147842, 149530, 149546, 151562, 150456, 150364, 150344, 150020, 150021, 150022, 150023,
            157784, 157993, 157872,
        ] {
            let n = METRIC_GROUPS
                .iter()
                .filter(|g| g.metrics.contains(&code))
                .count();
            assert_eq!(n, 1, "{code} is in {n} groups");
        }
        assert_eq!(group_of(150456).key, "spo2");
        assert_eq!(group_of(149530).key, "spo2", "pulse rate from the oximeter");
        assert_eq!(group_of(149546).key, "nibp", "pulse rate from the cuff");
        assert_eq!(group_of(147842).key, "ecg");
        assert_eq!(group_of(150344).key, "temp");
        assert_eq!(group_of(157784).key, "infusion");
    }

    #[test]
    fn unknown_and_private_metrics_go_to_the_generic_group() {
        for code in [192_512, 192_513, 0, 999_999] {
            let g = group_of(code);
            assert_eq!(g.key, "other", "{code}");
            assert_eq!(g.vmd_type(Some("bedside-monitor")), None);
            assert_eq!(g.channel_type(None), None);
        }
        assert_eq!(OTHER_GROUP.rank(), METRIC_GROUPS.len());
        assert_eq!(group_by_key("other"), Some(&OTHER_GROUP));
        assert_eq!(group_by_key("nope"), None);
    }

    #[test]
    fn keys_are_unique_id_safe_and_codes_are_device_codes() {
        let mut keys: Vec<&str> = METRIC_GROUPS.iter().map(|g| g.key).collect();
        keys.push(OTHER_GROUP.key);
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n, "group keys are unique");
        for k in keys {
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            );
            assert!(k.len() <= 8, "{k}: ids stay short");
        }
        // Device codes are partition 1 (object infrastructure): 65536 + term code.
        let all = METRIC_GROUPS
            .iter()
            .flat_map(|g| [g.vmd, g.channel])
            .flatten()
            .chain(MDS_TYPES.iter().map(|(_, t)| *t));
        for t in all {
            assert!(
                t.code >> 16 == 1,
                "{} {} is not partition 1",
                t.code,
                t.reference_id
            );
            assert!(t.reference_id.starts_with("MDC_DEV_"));
            assert_eq!(
                device_type_matches(t.code).len(),
                1,
                "{} names one thing",
                t.code
            );
        }
    }

    #[test]
    fn infusion_codes_apply_to_pumps_only() {
        let g = group_of(157784);
        assert_eq!(
            g.vmd_type(Some("infusion-pump")).map(|t| t.code),
            Some(69986)
        );
        assert_eq!(g.vmd_type(Some("drip-monitor")), None);
        assert_eq!(g.channel_type(None), None);
        let spo2 = group_of(150456);
        assert_eq!(spo2.vmd_type(None).map(|t| t.code), Some(69642));
        assert_eq!(mds_type("bedside-monitor").map(|t| t.code), Some(69965));
        assert_eq!(mds_type("wearable"), None);
        assert_eq!(device_type_matches(69642), vec![DeviceTypeMatch::Vmd(spo2)]);
        assert_eq!(
            device_type_matches(69985),
            vec![DeviceTypeMatch::Mds("infusion-pump")]
        );
        assert!(device_type_matches(1).is_empty());
    }
}
