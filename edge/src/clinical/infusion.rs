//! Infusion safety monitor: watches IV infusion reports from drip monitors and pumps and tells the nurse when a
//! drip runs too fast, too slow, has stopped, is nearly done or is done, and when a device stops reporting.
//!
//! **This is decision support, not a clinically validated medical device function.** The thresholds below are
//! configurable defaults chosen to be plausible for general ward gravity infusions; they have not been validated
//! against outcomes, and every alarm must be confirmed at the bedside. The nurse and the prescriber remain
//! responsible for the infusion.
//!
//! # Formulas
//!
//! Gravity drip (see `shared/clinical-reference.md`):
//!
//! - mL/h = gtt/min × 60 ÷ drop factor (gtt/mL) — [`ml_per_hour`];
//! - gtt/min = mL/h × drop factor ÷ 60 — [`drops_per_min`] (micro-drip sets, 60 gtt/mL: gtt/min = mL/h);
//! - time to empty (min) = remaining mL ÷ mL/h × 60, the same as remaining mL × drop factor ÷ gtt/min —
//!   [`minutes_to_empty`].
//!
//! # Which rate is "measured"
//!
//! For a drip monitor (drop factor > 0 and drops per minute > 0) the monitor recomputes the rate from the drop
//! count and the giving set's drop factor rather than trusting the device's `measured_rate_ml_h`. When the device
//! also reports a rate and it differs from the drop-derived rate by more than [`RATE_DISAGREEMENT_PCT`] %, the
//! drop-derived figure is used and the disagreement is noted ([`RateSource::DropsDisagreeing`] in the view, and
//! [`InfusionMonitor::rate_disagreements`]). For pumps (drop factor 0, or no drops counted) the reported
//! `measured_rate_ml_h` is used.
//!
//! # Conditions and default priorities
//!
//! Priorities follow IEC 60601-1-8 (high: immediate response, medium: prompt response, low: awareness). The
//! standard leaves the mapping to the manufacturer's risk analysis; this is ours:
//!
//! | condition | raised when | default priority | reasoning |
//! |---|---|---|---|
//! | too fast | measured > prescribed × (1 + `too_fast_pct`/100) continuously for `too_fast_for_ms` (10 %, 60 s) | MEDIUM; HIGH when more than [`TOO_FAST_HIGH_PRIORITY_PCT`] % (50 %) over | over-infusion harms (fluid overload, drug overdose); far over the prescribed rate suggests free flow, which can empty a bag into the patient within minutes |
//! | stopped | state Stopped/Occluded, or flow < [`MIN_FLOW_ML_H`] mL/h while Running, for `stopped_for_ms` (60 s) | MEDIUM | the patient is not getting the prescribed therapy and the cannula may clot; needs a prompt look, rarely immediately life-threatening on a general ward |
//! | too slow | measured < prescribed × (1 − `too_slow_pct`/100) continuously for `too_slow_for_ms` (20 %, 120 s) | LOW | under-infusion is slower to cause harm; the nurse should be aware and adjust the clamp |
//! | near completion | remaining ≤ `near_completion_ml` (50 mL) or time to empty ≤ `near_completion_min` (15 min), whichever comes first | LOW | informational: gives the nurse time to prepare the next bag |
//! | completed | state Completed or KVO, or remaining ≤ 0 | LOW | the bag is done; replace it or take the line down |
//! | device lost | no report for `lost_after_ms` (60 s), via [`InfusionMonitor::tick`] | LOW (technical) | the infusion is unobserved; check the drip monitor, but the infusion itself may be fine |
//!
//! Notes on the rules:
//!
//! - **Persistence.** Too fast, too slow and stopped must hold continuously (every report in between out of
//!   range) for their configured time before they are raised, so a single spike does not alarm. Between
//!   reports the last reported state is assumed to hold (until the device counts as lost), which is what lets
//!   [`InfusionMonitor::tick`] raise a condition whose persistence time passes between two reports.
//! - **Clearing with hysteresis.** A raised too-fast, too-slow or stopped condition clears once the infusion has
//!   been back within the limit for `clear_after_ms` (10 s), not on the first in-range report.
//! - **Possible manual change.** A too-fast condition carries `possible_manual_change = true` when the flow jumped
//!   while the prescription did not change: the order earlier ran within the limit at the same prescribed rate.
//!   On gravity drips the usual cause is a patient or visitor adjusting the roller clamp (or the set being
//!   repositioned). When instead the prescribed rate changed (a new rate on the order that the clamp has not yet
//!   been adjusted to), or the order never ran in range, the flag is false.
//! - **Stopped vs too slow.** With no flow (< 1 mL/h) or a Stopped/Occluded state only "stopped" applies; rate
//!   checks need flow, a Running (or unspecified) state and a prescribed rate > 0. Paused infusions (deliberately
//!   held by staff) raise neither.
//! - **Near completion** is raised once per order, with the ETA, and latched: noise around the threshold does not
//!   re-raise it. It is re-armed only if the remaining volume rises by more than `near_completion_ml` above what it
//!   was when raised (a fresh bag hung under the same order) or after a completion followed by a restart.
//! - **Completion** supersedes everything else: the order's other conditions are cleared when it completes, and a
//!   completed order does not raise "device lost" (drip monitors are commonly removed with the empty bag). A
//!   remaining volume of 0 only counts as completion once the order has reported a volume (proto3 cannot tell
//!   "0 mL left" from "not reported"; pumps that do not report volumes must not alarm as completed).
//! - **New order.** Orders are tracked per (ward, bed, device): a new order id from the same device on the same bed
//!   (a new bag) starts fresh and the previous order's active conditions are cleared. Several devices on one bed
//!   (two lines) are tracked independently. Late reports of a replaced order are ignored.
//! - **Device lost** is cleared by the next report; persistence timers restart after a loss, since nothing is
//!   known about the time in between.
//! - **Bad input.** Reports with an empty order id, a non-finite or negative number, or an unknown measurement time
//!   (≤ 0), and reports not newer than the latest one of their order, are ignored and counted
//!   ([`InfusionMonitor::ignored_reports`]). Nothing in a report can make the monitor panic.
//!
//! Everything is a pure function of the reports and the times passed in: no clocks, no I/O, deterministic output
//! order (changes of different orders come in order id order).

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use wardwatch_proto::v1::{AlarmKind, AlarmPriority, InfusionState, InfusionStatus};

/// Flow below this (mL/h) counts as no flow.
pub const MIN_FLOW_ML_H: f64 = 1.0;

/// A device-reported rate differing from the drop-derived rate by more than this many percent is overridden by
/// the drop-derived rate and noted as a disagreement.
pub const RATE_DISAGREEMENT_PCT: f64 = 5.0;

/// A too-fast condition more than this many percent over the prescribed rate is HIGH priority (free-flow risk).
pub const TOO_FAST_HIGH_PRIORITY_PCT: f64 = 50.0;

/// Tolerance (percentage points) for floating-point rounding at the limits: exactly 10 % over is not over.
const LIMIT_EPSILON_PCT: f64 = 1e-9;

/// An active too-fast or too-slow condition is re-reported ([`ConditionChange::Updated`]) when its percentage
/// moved by at least this many points since it was last reported (or its priority changed).
const UPDATE_STEP_PCT: f64 = 10.0;

/// How many replaced order ids are remembered per (ward, bed, device) to ignore their late reports.
const RETIRED_PER_SLOT: usize = 8;

/// Flow in mL/h from a drop count: gtt/min × 60 ÷ drop factor. `None` for a drop factor of 0, or a drop count
/// that is negative or not finite.
pub fn ml_per_hour(drops_per_min: f64, drop_factor_gtt_per_ml: u32) -> Option<f64> {
    if drop_factor_gtt_per_ml == 0 || !drops_per_min.is_finite() || drops_per_min < 0.0 {
        return None;
    }
    let r = drops_per_min * 60.0 / f64::from(drop_factor_gtt_per_ml);
    r.is_finite().then_some(r)
}

/// Drops per minute for a flow in mL/h: mL/h × drop factor ÷ 60. `None` for a drop factor of 0, or a flow that is
/// negative or not finite.
pub fn drops_per_min(ml_per_hour: f64, drop_factor_gtt_per_ml: u32) -> Option<f64> {
    if drop_factor_gtt_per_ml == 0 || !ml_per_hour.is_finite() || ml_per_hour < 0.0 {
        return None;
    }
    let d = ml_per_hour * f64::from(drop_factor_gtt_per_ml) / 60.0;
    d.is_finite().then_some(d)
}

/// Minutes until `remaining_ml` has run at `ml_per_hour`: remaining ÷ rate × 60. `None` when the rate is ≤ 0, or
/// either number is not finite, or the remaining volume is negative.
pub fn minutes_to_empty(remaining_ml: f64, ml_per_hour: f64) -> Option<f64> {
    if !remaining_ml.is_finite()
        || remaining_ml < 0.0
        || !ml_per_hour.is_finite()
        || ml_per_hour <= 0.0
    {
        return None;
    }
    let m = remaining_ml / ml_per_hour * 60.0;
    m.is_finite().then_some(m)
}

/// Thresholds of the infusion safety monitor. See the module documentation for how each is used.
#[derive(Debug, Clone, PartialEq)]
pub struct InfusionSafetyConfig {
    /// Too fast when the measured rate is more than this many percent over the prescribed rate (default 10).
    pub too_fast_pct: f64,
    /// ... continuously for this long before it is raised (default 60 000 ms).
    pub too_fast_for_ms: i64,
    /// Too slow when the measured rate is more than this many percent under the prescribed rate (default 20).
    pub too_slow_pct: f64,
    /// ... continuously for this long before it is raised (default 120 000 ms).
    pub too_slow_for_ms: i64,
    /// Stopped when there is no flow while the order should run (or the device says stopped/occluded) for this
    /// long (default 60 000 ms).
    pub stopped_for_ms: i64,
    /// Near completion when at most this volume remains (default 50 mL) ...
    pub near_completion_ml: f64,
    /// ... or the bag empties within this many minutes at the measured rate (default 15), whichever comes first.
    pub near_completion_min: f64,
    /// A device that has not reported for this long is lost (technical condition, default 60 000 ms).
    pub lost_after_ms: i64,
    /// A raised too-fast, too-slow or stopped condition clears once the infusion has been back within the limit
    /// for this long (default 10 000 ms).
    pub clear_after_ms: i64,
}

impl Default for InfusionSafetyConfig {
    /// 10 % over for 60 s, 20 % under for 120 s, no flow for 60 s, 50 mL or 15 min left, lost after 60 s,
    /// cleared after 10 s back in range.
    fn default() -> Self {
        Self {
            too_fast_pct: 10.0,
            too_fast_for_ms: 60_000,
            too_slow_pct: 20.0,
            too_slow_for_ms: 120_000,
            stopped_for_ms: 60_000,
            near_completion_ml: 50.0,
            near_completion_min: 15.0,
            lost_after_ms: 60_000,
            clear_after_ms: 10_000,
        }
    }
}

/// Which condition, without its data (the identity of a condition of one order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionKey {
    /// See [`InfusionCondition::TooFast`].
    TooFast,
    /// See [`InfusionCondition::TooSlow`].
    TooSlow,
    /// See [`InfusionCondition::Stopped`].
    Stopped,
    /// See [`InfusionCondition::NearCompletion`].
    NearCompletion,
    /// See [`InfusionCondition::Completed`].
    Completed,
    /// See [`InfusionCondition::DeviceLost`].
    DeviceLost,
}

impl ConditionKey {
    /// The wire alarm kind of this condition.
    pub fn kind(self) -> AlarmKind {
        match self {
            ConditionKey::TooFast => AlarmKind::InfusionTooFast,
            ConditionKey::TooSlow => AlarmKind::InfusionTooSlow,
            ConditionKey::Stopped => AlarmKind::InfusionStopped,
            ConditionKey::NearCompletion => AlarmKind::InfusionNearCompletion,
            ConditionKey::Completed => AlarmKind::InfusionCompleted,
            ConditionKey::DeviceLost => AlarmKind::DeviceLost,
        }
    }
}

/// A condition of one infusion, with what the nurse needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub enum InfusionCondition {
    /// Running faster than prescribed for longer than the persistence time.
    TooFast {
        /// How far over the prescribed rate, percent (latest report).
        pct_over: f64,
        /// The flow jumped while the prescribed rate stayed the same (the order ran within the limit at this
        /// prescribed rate before). Usually a patient or visitor adjusting the roller clamp.
        possible_manual_change: bool,
    },
    /// Running slower than prescribed for longer than the persistence time.
    TooSlow {
        /// How far under the prescribed rate, percent (latest report).
        pct_under: f64,
    },
    /// No flow while the order should run, or the device reports stopped or occluded.
    Stopped,
    /// The bag is nearly empty.
    NearCompletion {
        /// Volume left when the condition was raised, mL.
        remaining_ml: f64,
        /// When the bag empties at the measured rate, if it is flowing.
        eta_unix_ms: Option<i64>,
    },
    /// The volume to be infused has been delivered.
    Completed,
    /// Technical: the device stopped reporting.
    DeviceLost,
}

impl InfusionCondition {
    /// Which condition this is.
    pub fn key(&self) -> ConditionKey {
        match self {
            InfusionCondition::TooFast { .. } => ConditionKey::TooFast,
            InfusionCondition::TooSlow { .. } => ConditionKey::TooSlow,
            InfusionCondition::Stopped => ConditionKey::Stopped,
            InfusionCondition::NearCompletion { .. } => ConditionKey::NearCompletion,
            InfusionCondition::Completed => ConditionKey::Completed,
            InfusionCondition::DeviceLost => ConditionKey::DeviceLost,
        }
    }

    /// The wire alarm kind of this condition.
    pub fn kind(&self) -> AlarmKind {
        self.key().kind()
    }

    /// The default priority, as in the table of the module documentation: too fast MEDIUM (HIGH when more than
    /// [`TOO_FAST_HIGH_PRIORITY_PCT`] % over: free-flow risk), stopped MEDIUM, too slow, near completion, completed
    /// and device lost LOW.
    pub fn default_priority(&self) -> AlarmPriority {
        match self {
            InfusionCondition::TooFast { pct_over, .. } => {
                if *pct_over > TOO_FAST_HIGH_PRIORITY_PCT {
                    AlarmPriority::High
                } else {
                    AlarmPriority::Medium
                }
            }
            InfusionCondition::Stopped => AlarmPriority::Medium,
            InfusionCondition::TooSlow { .. }
            | InfusionCondition::NearCompletion { .. }
            | InfusionCondition::Completed
            | InfusionCondition::DeviceLost => AlarmPriority::Low,
        }
    }
}

/// A change of one order's conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum ConditionChange {
    /// The condition became active.
    Raised(InfusionCondition),
    /// An active condition changed materially (its percentage moved by 10 points or more, or its priority
    /// changed).
    Updated(InfusionCondition),
    /// The condition is no longer active.
    Cleared(ConditionKey),
}

impl ConditionChange {
    /// Which condition changed.
    pub fn key(&self) -> ConditionKey {
        match self {
            ConditionChange::Raised(c) | ConditionChange::Updated(c) => c.key(),
            ConditionChange::Cleared(k) => *k,
        }
    }
}

/// Where the measured rate of an infusion came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateSource {
    /// Recomputed from drops per minute and the drop factor (drip monitor).
    Drops,
    /// Recomputed from drops; the device's own rate differed by more than [`RATE_DISAGREEMENT_PCT`] % and was
    /// overridden.
    DropsDisagreeing,
    /// The device's reported rate (pumps, or no drops counted).
    Reported,
}

/// What the monitor knows about one infusion, for display.
#[derive(Debug, Clone, PartialEq)]
pub struct InfusionView {
    /// Order id.
    pub order_id: String,
    /// Patient MRN.
    pub patient_id: String,
    /// Ward.
    pub ward: String,
    /// Bed.
    pub bed: String,
    /// Drip monitor or pump id.
    pub device_id: String,
    /// What is infused.
    pub medication: String,
    /// Prescribed rate, mL/h (latest report).
    pub prescribed_rate_ml_h: f64,
    /// Measured rate, mL/h, as the monitor derived it (see [`RateSource`]).
    pub measured_rate_ml_h: f64,
    /// Where the measured rate came from.
    pub rate_source: RateSource,
    /// Volume infused so far, mL.
    pub volume_infused_ml: f64,
    /// Volume left in the bag, mL.
    pub volume_remaining_ml: f64,
    /// When the bag empties at the measured rate; `None` when not flowing or completed.
    pub eta_unix_ms: Option<i64>,
    /// State as last reported.
    pub state: InfusionState,
    /// Measurement time of the latest report.
    pub last_report_unix_ms: i64,
    /// Active conditions, in [`ConditionKey`] order.
    pub active: Vec<ConditionKey>,
}

/// Persistence and clearing timer of one rate condition.
#[derive(Debug, Clone, Default)]
struct Persist {
    /// Out of range as of the latest report.
    out: bool,
    /// Start of the current continuous out-of-range run.
    out_since: Option<i64>,
    /// Raised and not yet cleared.
    active: bool,
    /// While active: start of the current continuous in-range run.
    in_since: Option<i64>,
    /// The percentage last reported in a Raised or Updated change.
    reported_pct: f64,
}

/// What a persistence step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Nothing,
    Raise,
    StillActive,
    Clear,
}

impl Persist {
    /// Advances the timer to `now` with the current out-of-range flag.
    fn step(&mut self, now: i64, for_ms: i64, clear_ms: i64) -> Step {
        if self.out {
            self.in_since = None;
            let since = *self.out_since.get_or_insert(now);
            if self.active {
                Step::StillActive
            } else if now.saturating_sub(since) >= for_ms {
                self.active = true;
                Step::Raise
            } else {
                Step::Nothing
            }
        } else {
            self.out_since = None;
            if !self.active {
                return Step::Nothing;
            }
            let since = *self.in_since.get_or_insert(now);
            if now.saturating_sub(since) >= clear_ms {
                self.active = false;
                self.in_since = None;
                Step::Clear
            } else {
                Step::StillActive
            }
        }
    }

    /// Forgets the running timers (continuity unknown), keeping whether the condition is active.
    fn restart_timers(&mut self) {
        self.out_since = None;
        self.in_since = None;
    }

    /// Clears everything.
    fn reset(&mut self) {
        *self = Persist::default();
    }
}

/// Per-order state.
#[derive(Debug, Clone)]
struct Order {
    order_id: String,
    patient_id: String,
    slot: Slot,
    medication: String,
    prescribed: f64,
    measured: f64,
    rate_source: RateSource,
    infused: f64,
    remaining: f64,
    /// The order reported a volume at some point, so a remaining volume of 0 means empty.
    volume_known: bool,
    state: InfusionState,
    last_report: i64,
    /// Prescribed rate of the latest report in which the flow ran within the too-fast limit.
    in_range_prescribed: Option<f64>,
    fast: Persist,
    slow: Persist,
    stopped: Persist,
    /// Too-fast percentage and manual-change flag of the latest report.
    fast_pct: f64,
    fast_manual: bool,
    /// Manual-change flag last reported.
    reported_manual: bool,
    slow_pct: f64,
    /// Near completion raised for the current bag (latched).
    near_active: bool,
    /// Remaining volume when near completion was raised.
    near_raised_at_ml: f64,
    completed: bool,
    lost: bool,
}

/// (ward, bed, device): one infusion line.
type Slot = (String, String, String);

/// Per-line bookkeeping: the current order and recently replaced ones.
#[derive(Debug, Clone, Default)]
struct SlotState {
    current: Option<String>,
    retired: VecDeque<String>,
}

impl Order {
    fn new(s: &InfusionStatus, slot: Slot) -> Self {
        Self {
            order_id: s.order_id.clone(),
            patient_id: s.patient_id.clone(),
            slot,
            medication: s.medication.clone(),
            prescribed: 0.0,
            measured: 0.0,
            rate_source: RateSource::Reported,
            infused: 0.0,
            remaining: 0.0,
            volume_known: false,
            state: InfusionState::Unspecified,
            last_report: i64::MIN,
            in_range_prescribed: None,
            fast: Persist::default(),
            slow: Persist::default(),
            stopped: Persist::default(),
            fast_pct: 0.0,
            fast_manual: false,
            reported_manual: false,
            slow_pct: 0.0,
            near_active: false,
            near_raised_at_ml: 0.0,
            completed: false,
            lost: false,
        }
    }

    /// Flowing states in which rates are compared with the prescription. A device that does not report a state
    /// is assumed to run, as the order says it should.
    fn running_like(&self) -> bool {
        matches!(
            self.state,
            InfusionState::Running | InfusionState::Unspecified
        )
    }

    /// When the bag empties at the measured rate, if it is flowing.
    fn eta(&self) -> Option<i64> {
        if self.completed || !self.running_like() || self.measured < MIN_FLOW_ML_H {
            return None;
        }
        let min = minutes_to_empty(self.remaining, self.measured)?;
        let ms = min * 60_000.0;
        if !ms.is_finite() {
            return None;
        }
        Some(self.last_report.saturating_add(ms.round() as i64))
    }

    fn active(&self) -> Vec<ConditionKey> {
        let mut v = Vec::new();
        for (on, k) in [
            (self.fast.active, ConditionKey::TooFast),
            (self.slow.active, ConditionKey::TooSlow),
            (self.stopped.active, ConditionKey::Stopped),
            (self.near_active, ConditionKey::NearCompletion),
            (self.completed, ConditionKey::Completed),
            (self.lost, ConditionKey::DeviceLost),
        ] {
            if on {
                v.push(k);
            }
        }
        v
    }

    fn fast_condition(&self) -> InfusionCondition {
        InfusionCondition::TooFast {
            pct_over: self.fast_pct,
            possible_manual_change: self.fast_manual,
        }
    }

    fn slow_condition(&self) -> InfusionCondition {
        InfusionCondition::TooSlow {
            pct_under: self.slow_pct,
        }
    }

    /// Clears every active condition (emitting the changes) and resets all timers.
    fn clear_all(&mut self, out: &mut Vec<ConditionChange>) {
        for k in self.active() {
            out.push(ConditionChange::Cleared(k));
        }
        self.fast.reset();
        self.slow.reset();
        self.stopped.reset();
        self.near_active = false;
        self.completed = false;
        self.lost = false;
    }

    /// Advances the three rate conditions to `now` with their stored out-of-range flags. `with_updates` also emits
    /// Updated changes for material changes of an active condition (only after a new report).
    fn step_rates(
        &mut self,
        now: i64,
        cfg: &InfusionSafetyConfig,
        with_updates: bool,
        out: &mut Vec<ConditionChange>,
    ) {
        let clear = cfg.clear_after_ms;
        // Clears first, then raises, then updates, so a consumer never sees two flow conditions "swap" in the
        // wrong order.
        let fast = self.fast.step(now, cfg.too_fast_for_ms, clear);
        let slow = self.slow.step(now, cfg.too_slow_for_ms, clear);
        let stopped = self.stopped.step(now, cfg.stopped_for_ms, clear);
        for (s, k) in [
            (fast, ConditionKey::TooFast),
            (slow, ConditionKey::TooSlow),
            (stopped, ConditionKey::Stopped),
        ] {
            if s == Step::Clear {
                out.push(ConditionChange::Cleared(k));
            }
        }
        if stopped == Step::Raise {
            out.push(ConditionChange::Raised(InfusionCondition::Stopped));
        }
        if fast == Step::Raise {
            self.fast.reported_pct = self.fast_pct;
            self.reported_manual = self.fast_manual;
            out.push(ConditionChange::Raised(self.fast_condition()));
        }
        if slow == Step::Raise {
            self.slow.reported_pct = self.slow_pct;
            out.push(ConditionChange::Raised(self.slow_condition()));
        }
        if !with_updates {
            return;
        }
        if fast == Step::StillActive && self.fast.out {
            let now_c = self.fast_condition();
            let before = InfusionCondition::TooFast {
                pct_over: self.fast.reported_pct,
                possible_manual_change: self.reported_manual,
            };
            if now_c.default_priority() != before.default_priority()
                || (self.fast_pct - self.fast.reported_pct).abs() >= UPDATE_STEP_PCT
                || self.fast_manual != self.reported_manual
            {
                self.fast.reported_pct = self.fast_pct;
                self.reported_manual = self.fast_manual;
                out.push(ConditionChange::Updated(now_c));
            }
        }
        if slow == Step::StillActive
            && self.slow.out
            && (self.slow_pct - self.slow.reported_pct).abs() >= UPDATE_STEP_PCT
        {
            self.slow.reported_pct = self.slow_pct;
            out.push(ConditionChange::Updated(self.slow_condition()));
        }
    }
}

/// Natural order of labels: runs of digits compare as numbers, so bed "2" sorts before bed "10".
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let na = a.len() - a.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let nb = b.len() - b.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let (da, ra) = a.split_at(na);
                let (db, rb) = b.split_at(nb);
                let (ta, tb) = (da.trim_start_matches('0'), db.trim_start_matches('0'));
                let ord = ta
                    .len()
                    .cmp(&tb.len())
                    .then_with(|| ta.cmp(tb))
                    .then_with(|| da.len().cmp(&db.len()));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = ra;
                b = rb;
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                a = &a[x.len_utf8()..];
                b = &b[y.len_utf8()..];
            }
        }
    }
}

/// Whether two prescribed rates are the same (up to floating-point noise).
fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The infusion safety monitor: per-order state fed with reports ([`InfusionMonitor::observe`]) and time
/// ([`InfusionMonitor::tick`]). See the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct InfusionMonitor {
    cfg: InfusionSafetyConfig,
    orders: BTreeMap<String, Order>,
    slots: BTreeMap<Slot, SlotState>,
    ignored: u64,
    disagreements: u64,
}

impl InfusionMonitor {
    /// A monitor with no infusions yet.
    pub fn new(cfg: InfusionSafetyConfig) -> Self {
        Self {
            cfg,
            orders: BTreeMap::new(),
            slots: BTreeMap::new(),
            ignored: 0,
            disagreements: 0,
        }
    }

    /// The thresholds in use.
    pub fn config(&self) -> &InfusionSafetyConfig {
        &self.cfg
    }

    /// Reports ignored so far: empty order id, non-finite or negative numbers, unknown measurement time, not newer
    /// than the order's latest report, or late reports of an order already replaced by a new one.
    pub fn ignored_reports(&self) -> u64 {
        self.ignored
    }

    /// Reports so far in which the device's own rate disagreed with the drop-derived rate by more than
    /// [`RATE_DISAGREEMENT_PCT`] % (the drop-derived rate was used).
    pub fn rate_disagreements(&self) -> u64 {
        self.disagreements
    }

    /// Feed one report; returns the condition changes it causes (raise after the configured persistence, clear
    /// when back in range), each with the order id it concerns. A report of a new order on the same line also
    /// returns the clearing of the previous order's conditions.
    pub fn observe(&mut self, s: &InfusionStatus) -> Vec<(String, ConditionChange)> {
        let numbers = [
            s.prescribed_rate_ml_h,
            s.measured_rate_ml_h,
            s.drops_per_min,
            s.volume_infused_ml,
            s.volume_remaining_ml,
        ];
        if s.order_id.is_empty()
            || numbers.iter().any(|x| !x.is_finite() || *x < 0.0)
            || s.measured_at_unix_ms <= 0
        {
            self.ignored += 1;
            return Vec::new();
        }
        let now = s.measured_at_unix_ms;
        let slot: Slot = match &s.location {
            Some(l) => (l.ward.clone(), l.bed.clone(), s.device_id.clone()),
            None => (String::new(), String::new(), s.device_id.clone()),
        };
        let mut changes = Vec::new();

        match self.orders.get(&s.order_id) {
            Some(o) if now <= o.last_report => {
                self.ignored += 1;
                return Vec::new();
            }
            Some(o) if o.slot != slot => {
                // The order moved (patient or device moved): re-home it.
                let old = o.slot.clone();
                if let Some(st) = self.slots.get_mut(&old)
                    && st.current.as_deref() == Some(s.order_id.as_str())
                {
                    st.current = None;
                }
                self.take_slot(&slot, &s.order_id, &mut changes);
                if let Some(o) = self.orders.get_mut(&s.order_id) {
                    o.slot = slot.clone();
                }
            }
            Some(_) => {}
            None => {
                if self
                    .slots
                    .get(&slot)
                    .is_some_and(|st| st.retired.iter().any(|r| *r == s.order_id))
                {
                    self.ignored += 1;
                    return Vec::new();
                }
                self.take_slot(&slot, &s.order_id, &mut changes);
                self.orders
                    .insert(s.order_id.clone(), Order::new(s, slot.clone()));
            }
        }

        let cfg = &self.cfg;
        let Some(o) = self.orders.get_mut(&s.order_id) else {
            return changes;
        };
        let mut out = Vec::new();

        // The measured rate: recomputed from drops when a drip monitor counts them.
        let (measured, source) = match ml_per_hour(s.drops_per_min, s.drop_factor_gtt_per_ml) {
            Some(r) if s.drops_per_min > 0.0 => {
                let reported = s.measured_rate_ml_h;
                if reported > 0.0 && (reported - r).abs() > r * RATE_DISAGREEMENT_PCT / 100.0 {
                    self.disagreements += 1;
                    (r, RateSource::DropsDisagreeing)
                } else {
                    (r, RateSource::Drops)
                }
            }
            _ => (s.measured_rate_ml_h, RateSource::Reported),
        };

        o.patient_id.clone_from(&s.patient_id);
        o.medication.clone_from(&s.medication);
        o.prescribed = s.prescribed_rate_ml_h;
        o.measured = measured;
        o.rate_source = source;
        o.infused = s.volume_infused_ml;
        o.remaining = s.volume_remaining_ml;
        o.volume_known |= s.volume_infused_ml > 0.0 || s.volume_remaining_ml > 0.0;
        o.state = s.state();
        o.last_report = now;

        if o.lost {
            o.lost = false;
            o.fast.restart_timers();
            o.slow.restart_timers();
            o.stopped.restart_timers();
            out.push(ConditionChange::Cleared(ConditionKey::DeviceLost));
        }

        // Completion supersedes everything else.
        let completed_now = matches!(o.state, InfusionState::Completed | InfusionState::Kvo)
            || (o.volume_known && o.remaining <= 0.0);
        if completed_now {
            if !o.completed {
                o.clear_all(&mut out);
                o.completed = true;
                out.push(ConditionChange::Raised(InfusionCondition::Completed));
            }
            changes.extend(out.into_iter().map(|c| (s.order_id.clone(), c)));
            return changes;
        }
        if o.completed {
            // Running again under the same order with volume left: a new bag under a continuing order.
            o.completed = false;
            out.push(ConditionChange::Cleared(ConditionKey::Completed));
        }

        // Out-of-range flags of this report.
        let running = o.running_like();
        let flowing = measured >= MIN_FLOW_ML_H;
        o.stopped.out = matches!(o.state, InfusionState::Stopped | InfusionState::Occluded)
            || (running && !flowing);
        let compare = running && flowing && o.prescribed > 0.0;
        let pct = if compare {
            (measured - o.prescribed) / o.prescribed * 100.0
        } else {
            0.0
        };
        o.fast.out = compare && pct > cfg.too_fast_pct + LIMIT_EPSILON_PCT;
        o.slow.out = compare && -pct > cfg.too_slow_pct + LIMIT_EPSILON_PCT;
        if compare && !o.fast.out {
            o.in_range_prescribed = Some(o.prescribed);
        }
        o.fast_pct = pct.max(0.0);
        o.slow_pct = (-pct).max(0.0);
        o.fast_manual = o
            .in_range_prescribed
            .is_some_and(|p| same_rate(p, o.prescribed));
        o.step_rates(now, cfg, true, &mut out);

        // Near completion: once per bag, latched.
        let eta = o.eta();
        let eta_min = if eta.is_some() {
            minutes_to_empty(o.remaining, o.measured)
        } else {
            None
        };
        if o.near_active && o.remaining > o.near_raised_at_ml + cfg.near_completion_ml {
            o.near_active = false;
            out.push(ConditionChange::Cleared(ConditionKey::NearCompletion));
        }
        let near = o.volume_known
            && o.remaining > 0.0
            && (o.remaining <= cfg.near_completion_ml
                || eta_min.is_some_and(|m| m <= cfg.near_completion_min));
        if near && !o.near_active {
            o.near_active = true;
            o.near_raised_at_ml = o.remaining;
            out.push(ConditionChange::Raised(InfusionCondition::NearCompletion {
                remaining_ml: o.remaining,
                eta_unix_ms: eta,
            }));
        }

        changes.extend(out.into_iter().map(|c| (s.order_id.clone(), c)));
        changes
    }

    /// Makes `order_id` the current order of `slot`, retiring (and clearing the conditions of) the order that was
    /// there.
    fn take_slot(
        &mut self,
        slot: &Slot,
        order_id: &str,
        changes: &mut Vec<(String, ConditionChange)>,
    ) {
        let st = self.slots.entry(slot.clone()).or_default();
        if let Some(prev) = st.current.take()
            && prev != order_id
        {
            if let Some(mut old) = self.orders.remove(&prev) {
                let mut out = Vec::new();
                old.clear_all(&mut out);
                changes.extend(out.into_iter().map(|c| (prev.clone(), c)));
            }
            st.retired.push_back(prev);
            while st.retired.len() > RETIRED_PER_SLOT {
                st.retired.pop_front();
            }
        }
        st.retired.retain(|r| r != order_id);
        st.current = Some(order_id.to_string());
    }

    /// Advance time with no report: device-lost detection and persistence timers (a condition whose persistence
    /// time passes after the latest report is raised, assuming the last reported state still holds until the
    /// device counts as lost). Returns the changes, in order id order.
    pub fn tick(&mut self, now_unix_ms: i64) -> Vec<(String, ConditionChange)> {
        let cfg = &self.cfg;
        let mut changes = Vec::new();
        for (id, o) in &mut self.orders {
            if o.lost || o.completed || now_unix_ms <= o.last_report {
                continue;
            }
            let mut out = Vec::new();
            let horizon = o.last_report.saturating_add(cfg.lost_after_ms);
            o.step_rates(now_unix_ms.min(horizon), cfg, false, &mut out);
            if now_unix_ms >= horizon {
                o.lost = true;
                out.push(ConditionChange::Raised(InfusionCondition::DeviceLost));
            }
            changes.extend(out.into_iter().map(|c| (id.clone(), c)));
        }
        changes
    }

    /// Stops watching an order (e.g. discontinued or the patient discharged); returns the clearing of its active
    /// conditions.
    pub fn remove_order(&mut self, order_id: &str) -> Vec<(String, ConditionChange)> {
        let Some(mut o) = self.orders.remove(order_id) else {
            return Vec::new();
        };
        if let Some(st) = self.slots.get_mut(&o.slot)
            && st.current.as_deref() == Some(order_id)
        {
            st.current = None;
        }
        let mut out = Vec::new();
        o.clear_all(&mut out);
        out.into_iter().map(|c| (order_id.to_string(), c)).collect()
    }

    /// The current view of one order, if it is watched.
    pub fn view(&self, order_id: &str) -> Option<InfusionView> {
        self.orders.get(order_id).map(|o| InfusionView {
            order_id: o.order_id.clone(),
            patient_id: o.patient_id.clone(),
            ward: o.slot.0.clone(),
            bed: o.slot.1.clone(),
            device_id: o.slot.2.clone(),
            medication: o.medication.clone(),
            prescribed_rate_ml_h: o.prescribed,
            measured_rate_ml_h: o.measured,
            rate_source: o.rate_source,
            volume_infused_ml: o.infused,
            volume_remaining_ml: o.remaining,
            eta_unix_ms: o.eta(),
            state: o.state,
            last_report_unix_ms: o.last_report,
            active: o.active(),
        })
    }

    /// Views of every watched order, sorted by ward, then bed (numerically where the labels are numbers), then
    /// device and order id.
    pub fn views(&self) -> Vec<InfusionView> {
        let mut v: Vec<InfusionView> = self.orders.keys().filter_map(|id| self.view(id)).collect();
        v.sort_by(|a, b| {
            natural_cmp(&a.ward, &b.ward)
                .then_with(|| natural_cmp(&a.bed, &b.bed))
                .then_with(|| natural_cmp(&a.device_id, &b.device_id))
                .then_with(|| a.order_id.cmp(&b.order_id))
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::simulator::{WardSimConfig, WardSimulator};
    use wardwatch_proto::v1::{BedLocation, edge_event::Payload};

    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000;
    const S: i64 = 1_000;
    const MIN: i64 = 60_000;

    /// A drip monitor report on ward 7A: 20 gtt/mL set, 1000 mL bag with `remaining` left, Running, and the
    /// device's own rate consistent with the drops.
    fn drip(order: &str, bed: &str, t: i64, prescribed: f64, dpm: f64) -> InfusionStatus {
        InfusionStatus {
            order_id: order.to_string(),
            patient_id: format!("SIM00000{bed}"),
            location: Some(BedLocation {
                ward: "7A".to_string(),
                bed: bed.to_string(),
            }),
            device_id: format!("drip-7A-{bed}"),
            medication: "Sodium chloride 0.9% 1000 mL".to_string(),
            prescribed_rate_ml_h: prescribed,
            measured_rate_ml_h: dpm * 3.0,
            drop_factor_gtt_per_ml: 20,
            drops_per_min: dpm,
            volume_infused_ml: 500.0,
            volume_remaining_ml: 500.0,
            state: InfusionState::Running as i32,
            measured_at_unix_ms: t,
            encounter: None,
        }
    }

    /// A pump report (no drops, device rate used).
    fn pump(order: &str, bed: &str, t: i64, prescribed: f64, rate: f64) -> InfusionStatus {
        InfusionStatus {
            device_id: format!("pump-7A-{bed}"),
            measured_rate_ml_h: rate,
            drop_factor_gtt_per_ml: 0,
            drops_per_min: 0.0,
            ..drip(order, bed, t, prescribed, 0.0)
        }
    }

    fn with_state(mut s: InfusionStatus, state: InfusionState) -> InfusionStatus {
        s.state = state as i32;
        s
    }

    fn with_remaining(mut s: InfusionStatus, remaining: f64) -> InfusionStatus {
        s.volume_remaining_ml = remaining;
        s.volume_infused_ml = 1000.0 - remaining;
        s
    }

    fn monitor() -> InfusionMonitor {
        InfusionMonitor::new(InfusionSafetyConfig::default())
    }

    fn raised(c: InfusionCondition) -> ConditionChange {
        ConditionChange::Raised(c)
    }

    fn change(order: &str, c: ConditionChange) -> (String, ConditionChange) {
        (order.to_string(), c)
    }

    #[test]
    fn drip_formulas_for_each_drop_factor() {
        // 25 gtt/min through each giving set.
        for (df, ml_h) in [(10, 150.0), (15, 100.0), (20, 75.0), (60, 25.0)] {
            assert_eq!(ml_per_hour(25.0, df), Some(ml_h), "{df} gtt/mL");
            assert_eq!(drops_per_min(ml_h, df), Some(25.0), "{df} gtt/mL");
        }
        // Micro-drip: gtt/min == mL/h.
        for x in [0.0, 1.0, 42.0, 83.5, 125.0] {
            assert_eq!(ml_per_hour(x, 60), Some(x));
            assert_eq!(drops_per_min(x, 60), Some(x));
        }
        assert_eq!(drops_per_min(120.0, 20), Some(40.0));
        assert_eq!(drops_per_min(100.0, 15), Some(25.0));
        assert_eq!(drops_per_min(90.0, 10), Some(15.0));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0] {
            assert_eq!(ml_per_hour(bad, 20), None);
            assert_eq!(drops_per_min(bad, 20), None);
        }
        assert_eq!(ml_per_hour(25.0, 0), None);
        assert_eq!(drops_per_min(75.0, 0), None);
        assert_eq!(ml_per_hour(f64::MAX, 1), None, "overflow is not a rate");
    }

    #[test]
    fn time_to_empty() {
        assert_eq!(minutes_to_empty(500.0, 125.0), Some(240.0));
        assert_eq!(minutes_to_empty(50.0, 100.0), Some(30.0));
        assert_eq!(minutes_to_empty(0.0, 100.0), Some(0.0));
        // Same as remaining × drop factor ÷ gtt/min: 100 mL, 20 gtt/mL at 50 gtt/min = 40 min.
        let rate = ml_per_hour(50.0, 20);
        assert_eq!(rate, Some(150.0));
        assert_eq!(minutes_to_empty(100.0, 150.0), Some(100.0 * 20.0 / 50.0));
        assert_eq!(minutes_to_empty(100.0, 0.0), None);
        assert_eq!(minutes_to_empty(100.0, -5.0), None);
        assert_eq!(minutes_to_empty(f64::NAN, 100.0), None);
        assert_eq!(minutes_to_empty(100.0, f64::NAN), None);
        assert_eq!(minutes_to_empty(-1.0, 100.0), None);
    }

    #[test]
    fn priorities_and_kinds_follow_the_table() {
        let fast = |pct| InfusionCondition::TooFast {
            pct_over: pct,
            possible_manual_change: false,
        };
        assert_eq!(fast(10.5).default_priority(), AlarmPriority::Medium);
        assert_eq!(fast(50.0).default_priority(), AlarmPriority::Medium);
        assert_eq!(fast(50.5).default_priority(), AlarmPriority::High);
        assert_eq!(fast(10.5).kind(), AlarmKind::InfusionTooFast);
        let table = [
            (
                InfusionCondition::TooSlow { pct_under: 25.0 },
                AlarmKind::InfusionTooSlow,
                AlarmPriority::Low,
            ),
            (
                InfusionCondition::Stopped,
                AlarmKind::InfusionStopped,
                AlarmPriority::Medium,
            ),
            (
                InfusionCondition::NearCompletion {
                    remaining_ml: 50.0,
                    eta_unix_ms: None,
                },
                AlarmKind::InfusionNearCompletion,
                AlarmPriority::Low,
            ),
            (
                InfusionCondition::Completed,
                AlarmKind::InfusionCompleted,
                AlarmPriority::Low,
            ),
            (
                InfusionCondition::DeviceLost,
                AlarmKind::DeviceLost,
                AlarmPriority::Low,
            ),
        ];
        for (c, kind, prio) in table {
            assert_eq!(c.kind(), kind, "{c:?}");
            assert_eq!(c.key().kind(), kind, "{c:?}");
            assert_eq!(c.default_priority(), prio, "{c:?}");
        }
    }

    #[test]
    fn too_fast_needs_persistence_and_more_than_ten_percent() {
        let mut m = monitor();
        // 120 mL/h prescribed = 40 gtt/min on a 20 gtt/mL set; in range for a minute.
        for k in 0..6 {
            assert!(
                m.observe(&drip("A", "1", T0 + k * 10 * S, 120.0, 40.0))
                    .is_empty()
            );
        }
        // Exactly 10 % over (44 gtt/min = 132 mL/h) for five minutes: not over the limit.
        let t1 = T0 + MIN;
        for k in 0..30 {
            assert!(
                m.observe(&drip("A", "1", t1 + k * 10 * S, 120.0, 44.0))
                    .is_empty()
            );
        }
        assert_eq!(m.view("A").map(|v| v.measured_rate_ml_h), Some(132.0));
        // 10.5 % over (44.2 gtt/min = 132.6 mL/h): nothing for 59 s ...
        let t2 = t1 + 5 * MIN;
        for k in 0..6 {
            assert!(
                m.observe(&drip("A", "1", t2 + k * 10 * S, 120.0, 44.2))
                    .is_empty()
            );
        }
        assert!(m.tick(t2 + 59 * S).is_empty());
        // ... raised at 60 s, flagged as a possible manual change (the order ran in range at 120 mL/h).
        let ch = m.observe(&drip("A", "1", t2 + 60 * S, 120.0, 44.2));
        assert_eq!(ch.len(), 1, "{ch:?}");
        let ConditionChange::Raised(c @ InfusionCondition::TooFast { .. }) = &ch[0].1 else {
            panic!("expected too fast, got {ch:?}");
        };
        let InfusionCondition::TooFast {
            pct_over,
            possible_manual_change,
        } = c
        else {
            unreachable!()
        };
        assert!((pct_over - 10.5).abs() < 1e-6, "{pct_over}");
        assert!(possible_manual_change);
        assert_eq!(c.default_priority(), AlarmPriority::Medium);
        assert_eq!(ch[0].0, "A");
        assert_eq!(
            m.view("A").map(|v| v.active),
            Some(vec![ConditionKey::TooFast])
        );
        // Raised once.
        assert!(
            m.observe(&drip("A", "1", t2 + 70 * S, 120.0, 44.2))
                .is_empty()
        );
        // Free flow (100 % over): updated to HIGH.
        let ch = m.observe(&drip("A", "1", t2 + 80 * S, 120.0, 80.0));
        assert_eq!(
            ch,
            vec![change(
                "A",
                ConditionChange::Updated(InfusionCondition::TooFast {
                    pct_over: 100.0,
                    possible_manual_change: true,
                })
            )]
        );
        if let ConditionChange::Updated(c) = &ch[0].1 {
            assert_eq!(c.default_priority(), AlarmPriority::High);
        }
        // Back in range: cleared only after 10 s in range.
        assert!(
            m.observe(&drip("A", "1", t2 + 90 * S, 120.0, 40.0))
                .is_empty()
        );
        assert_eq!(
            m.observe(&drip("A", "1", t2 + 100 * S, 120.0, 40.0)),
            vec![change("A", ConditionChange::Cleared(ConditionKey::TooFast))]
        );
        assert_eq!(m.view("A").map(|v| v.active), Some(vec![]));
    }

    #[test]
    fn a_spike_does_not_alarm_and_tick_completes_persistence() {
        let mut m = monitor();
        for k in 0..6 {
            assert!(
                m.observe(&drip("A", "1", T0 + k * 10 * S, 120.0, 40.0))
                    .is_empty()
            );
        }
        // 50 s over, one report in range, 50 s over again, then in range: never 60 s continuously.
        let mut t = T0 + MIN;
        for dpm in [80.0; 6].into_iter().chain([40.0]).chain([80.0; 6]) {
            assert!(m.observe(&drip("A", "1", t, 120.0, dpm)).is_empty(), "{t}");
            t += 10 * S;
        }
        assert!(m.observe(&drip("A", "1", t, 120.0, 40.0)).is_empty());
        assert!(m.tick(t + 30 * S).is_empty());
        // The persistence time passing between reports is caught by tick.
        let t = t + 40 * S;
        for k in 0..6 {
            assert!(
                m.observe(&drip("A", "1", t + k * 10 * S, 120.0, 48.0))
                    .is_empty()
            );
        }
        assert!(m.tick(t + 59_999).is_empty());
        let ch = m.tick(t + 60 * S);
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert!(matches!(
            &ch[0].1,
            ConditionChange::Raised(InfusionCondition::TooFast { pct_over, .. }) if (pct_over - 20.0).abs() < 1e-9
        ));
        assert!(
            m.observe(&drip("A", "1", t + 60 * S, 120.0, 48.0))
                .is_empty()
        );
    }

    #[test]
    fn prescribed_rate_change_is_not_a_manual_change() {
        let mut m = monitor();
        // Micro-drip (60 gtt/mL): gtt/min == mL/h. Runs at 100 mL/h as prescribed ...
        let micro = |t, prescribed, dpm| InfusionStatus {
            drop_factor_gtt_per_ml: 60,
            measured_rate_ml_h: dpm,
            ..drip("A", "1", t, prescribed, dpm)
        };
        for k in 0..6 {
            assert!(m.observe(&micro(T0 + k * 10 * S, 100.0, 100.0)).is_empty());
        }
        // ... then the order's rate drops to 50 mL/h and the clamp has not been adjusted yet.
        let t = T0 + MIN;
        for k in 0..6 {
            assert!(m.observe(&micro(t + k * 10 * S, 50.0, 100.0)).is_empty());
        }
        assert_eq!(
            m.observe(&micro(t + 60 * S, 50.0, 100.0)),
            vec![change(
                "A",
                raised(InfusionCondition::TooFast {
                    pct_over: 100.0,
                    possible_manual_change: false,
                })
            )]
        );
        // A new order that runs too fast from its first report: nothing to compare with, not flagged either.
        for k in 0..=6 {
            let ch = m.observe(&drip("B", "2", T0 + k * 10 * S, 120.0, 60.0));
            assert_eq!(ch.is_empty(), k < 6, "{k}: {ch:?}");
            if k == 6 {
                assert_eq!(
                    ch,
                    vec![change(
                        "B",
                        raised(InfusionCondition::TooFast {
                            pct_over: 50.0,
                            possible_manual_change: false,
                        })
                    )]
                );
            }
        }
    }

    #[test]
    fn too_slow_after_two_minutes() {
        let mut m = monitor();
        let micro = |t, dpm| InfusionStatus {
            drop_factor_gtt_per_ml: 60,
            measured_rate_ml_h: dpm,
            ..drip("A", "1", t, 100.0, dpm)
        };
        // 15 % under and exactly 20 % under, 5 minutes each: within the limit.
        for k in 0..30 {
            assert!(m.observe(&micro(T0 + k * 10 * S, 85.0)).is_empty());
        }
        for k in 30..60 {
            assert!(m.observe(&micro(T0 + k * 10 * S, 80.0)).is_empty());
        }
        // 25 % under: nothing for 110 s, raised at 120 s.
        let t = T0 + 10 * MIN;
        for k in 0..12 {
            assert!(m.observe(&micro(t + k * 10 * S, 75.0)).is_empty());
        }
        assert!(m.tick(t + 119 * S).is_empty());
        let ch = m.observe(&micro(t + 120 * S, 75.0));
        assert_eq!(
            ch,
            vec![change(
                "A",
                raised(InfusionCondition::TooSlow { pct_under: 25.0 })
            )]
        );
        assert_eq!(
            InfusionCondition::TooSlow { pct_under: 25.0 }.default_priority(),
            AlarmPriority::Low
        );
        assert!(m.observe(&micro(t + 130 * S, 100.0)).is_empty());
        assert_eq!(
            m.observe(&micro(t + 140 * S, 100.0)),
            vec![change("A", ConditionChange::Cleared(ConditionKey::TooSlow))]
        );
    }

    #[test]
    fn stopped_and_occluded() {
        let mut m = monitor();
        // A drip counting no drops while Running: stopped after 60 s, never "too slow".
        for k in 0..6 {
            assert!(
                m.observe(&drip("A", "1", T0 + k * 10 * S, 120.0, 0.0))
                    .is_empty()
            );
        }
        assert_eq!(
            m.observe(&drip("A", "1", T0 + 60 * S, 120.0, 0.0)),
            vec![change("A", raised(InfusionCondition::Stopped))]
        );
        for k in 7..30 {
            assert!(
                m.observe(&drip("A", "1", T0 + k * 10 * S, 120.0, 0.0))
                    .is_empty()
            );
        }
        assert_eq!(
            m.view("A").map(|v| v.active),
            Some(vec![ConditionKey::Stopped])
        );
        assert_eq!(m.view("A").and_then(|v| v.eta_unix_ms), None);
        // Flow resumes: cleared after 10 s.
        assert!(
            m.observe(&drip("A", "1", T0 + 300 * S, 120.0, 40.0))
                .is_empty()
        );
        assert_eq!(
            m.observe(&drip("A", "1", T0 + 310 * S, 120.0, 40.0)),
            vec![change("A", ConditionChange::Cleared(ConditionKey::Stopped))]
        );

        // A pump reporting an occlusion (it still shows its programmed rate).
        let occl = |t| with_state(pump("P", "2", t, 100.0, 100.0), InfusionState::Occluded);
        for k in 0..6 {
            assert!(m.observe(&occl(T0 + k * 10 * S)).is_empty());
        }
        assert_eq!(
            m.observe(&occl(T0 + 60 * S)),
            vec![change("P", raised(InfusionCondition::Stopped))]
        );
        // A stopped state raises it too.
        for k in 0..=6 {
            let s = with_state(
                pump("Q", "3", T0 + k * 10 * S, 100.0, 0.0),
                InfusionState::Stopped,
            );
            assert_eq!(m.observe(&s).len(), usize::from(k == 6));
        }
        // Paused by staff: no alarm however long.
        for k in 0..60 {
            let s = with_state(
                drip("R", "4", T0 + k * 10 * S, 120.0, 0.0),
                InfusionState::Paused,
            );
            assert!(m.observe(&s).is_empty());
        }
    }

    #[test]
    fn near_completion_by_volume_once_with_eta() {
        let mut m = monitor();
        let at = |k: i64, remaining| {
            with_remaining(drip("A", "1", T0 + k * 10 * S, 120.0, 40.0), remaining)
        };
        for (k, r) in [(0, 60.0), (1, 55.0), (2, 50.5)] {
            assert!(m.observe(&at(k, r)).is_empty());
        }
        // 50 mL left at 120 mL/h: empties in 25 min.
        let ch = m.observe(&at(3, 50.0));
        assert_eq!(
            ch,
            vec![change(
                "A",
                raised(InfusionCondition::NearCompletion {
                    remaining_ml: 50.0,
                    eta_unix_ms: Some(T0 + 30 * S + 25 * MIN),
                })
            )]
        );
        // Noise around the threshold does not re-raise it.
        for (k, r) in [(4, 50.2), (5, 49.9), (6, 50.1), (7, 49.5), (8, 30.0)] {
            assert!(m.observe(&at(k, r)).is_empty(), "{r}");
        }
        let v = m.view("A");
        assert_eq!(
            v.as_ref().map(|v| v.active.clone()),
            Some(vec![ConditionKey::NearCompletion])
        );
        assert_eq!(
            v.and_then(|v| v.eta_unix_ms),
            Some(T0 + 80 * S + 15 * MIN),
            "30 mL at 120 mL/h"
        );
    }

    #[test]
    fn near_completion_by_minutes() {
        let mut m = monitor();
        // A pump at 300 mL/h: 80 mL is 16 min, 75 mL is exactly 15 min (before 50 mL is reached).
        let at = |k: i64, remaining| {
            with_remaining(pump("A", "1", T0 + k * 10 * S, 300.0, 300.0), remaining)
        };
        assert!(m.observe(&at(0, 80.0)).is_empty());
        assert_eq!(
            m.observe(&at(1, 75.0)),
            vec![change(
                "A",
                raised(InfusionCondition::NearCompletion {
                    remaining_ml: 75.0,
                    eta_unix_ms: Some(T0 + 10 * S + 15 * MIN),
                })
            )]
        );
        // The rate drops (ETA moves out again): still raised once.
        assert!(
            m.observe(&with_remaining(
                pump("A", "1", T0 + 20 * S, 300.0, 200.0),
                74.9
            ))
            .is_empty()
        );
        assert!(m.observe(&at(3, 74.0)).is_empty());
    }

    #[test]
    fn completion_supersedes_and_is_final() {
        let mut m = monitor();
        let at = |k: i64, remaining| {
            with_remaining(drip("A", "1", T0 + k * 10 * S, 120.0, 40.0), remaining)
        };
        assert_eq!(m.observe(&at(0, 40.0)).len(), 1);
        assert!(m.observe(&at(1, 0.4)).is_empty());
        let done = |k: i64| {
            let mut s = with_state(at(k, 0.0), InfusionState::Completed);
            s.drops_per_min = 0.0;
            s.measured_rate_ml_h = 0.0;
            s
        };
        assert_eq!(
            m.observe(&done(2)),
            vec![
                change("A", ConditionChange::Cleared(ConditionKey::NearCompletion)),
                change("A", raised(InfusionCondition::Completed)),
            ]
        );
        for k in 3..10 {
            assert!(m.observe(&done(k)).is_empty());
        }
        // A completed order raises nothing, not even device lost, when its monitor goes quiet.
        assert!(m.tick(T0 + 60 * MIN).is_empty());
        assert_eq!(
            m.view("A").map(|v| v.active),
            Some(vec![ConditionKey::Completed])
        );
        assert_eq!(m.view("A").and_then(|v| v.eta_unix_ms), None);

        // Remaining 0 while still Running also means completed.
        let s = with_remaining(drip("B", "2", T0, 120.0, 40.0), 0.0);
        assert_eq!(
            m.observe(&s),
            vec![change("B", raised(InfusionCondition::Completed))]
        );
        // A pump that reports no volumes at all is not "completed".
        let mut p = pump("C", "3", T0, 100.0, 100.0);
        p.volume_infused_ml = 0.0;
        p.volume_remaining_ml = 0.0;
        assert!(m.observe(&p).is_empty());
        // A KVO state is after completion.
        let k = with_state(pump("D", "4", T0, 100.0, 5.0), InfusionState::Kvo);
        assert_eq!(
            m.observe(&k),
            vec![change("D", raised(InfusionCondition::Completed))]
        );
    }

    #[test]
    fn a_new_order_on_the_line_starts_fresh() {
        let mut m = monitor();
        for k in 0..=6 {
            let s = with_remaining(drip("ORD-1", "3", T0 + k * 10 * S, 120.0, 80.0), 45.0);
            m.observe(&s);
        }
        assert_eq!(
            m.view("ORD-1").map(|v| v.active),
            Some(vec![ConditionKey::TooFast, ConditionKey::NearCompletion])
        );
        // Another device on the same bed (a second line) is independent.
        assert!(
            m.observe(&pump("OTHER", "3", T0 + 65 * S, 100.0, 100.0))
                .is_empty()
        );
        // New bag, new order, same drip monitor.
        let ch = m.observe(&drip("ORD-2", "3", T0 + 70 * S, 120.0, 40.0));
        assert_eq!(
            ch,
            vec![
                change("ORD-1", ConditionChange::Cleared(ConditionKey::TooFast)),
                change(
                    "ORD-1",
                    ConditionChange::Cleared(ConditionKey::NearCompletion)
                ),
            ]
        );
        assert_eq!(m.view("ORD-1"), None);
        assert_eq!(m.view("ORD-2").map(|v| v.active), Some(vec![]));
        assert!(m.view("OTHER").is_some());
        // A late report of the replaced order is ignored.
        assert!(
            m.observe(&drip("ORD-1", "3", T0 + 75 * S, 120.0, 80.0))
                .is_empty()
        );
        assert_eq!(m.ignored_reports(), 1);
        assert_eq!(m.view("ORD-1"), None);
        // The new order's state is fresh: a too-fast run starts its own persistence.
        for k in 8..14 {
            assert!(
                m.observe(&drip("ORD-2", "3", T0 + k * 10 * S, 120.0, 80.0))
                    .is_empty()
            );
        }
        assert_eq!(
            m.observe(&drip("ORD-2", "3", T0 + 140 * S, 120.0, 80.0))
                .len(),
            1
        );
    }

    #[test]
    fn device_lost_via_tick_and_cleared_by_the_next_report() {
        let mut m = monitor();
        for k in 0..6 {
            assert!(
                m.observe(&drip("A", "1", T0 + k * 10 * S, 120.0, 40.0))
                    .is_empty()
            );
        }
        let last = T0 + 50 * S;
        assert!(m.tick(last + 59_999).is_empty());
        let ch = m.tick(last + 60 * S);
        assert_eq!(ch, vec![change("A", raised(InfusionCondition::DeviceLost))]);
        assert!(m.tick(last + 10 * MIN).is_empty(), "raised once");
        assert_eq!(
            m.view("A").map(|v| v.active),
            Some(vec![ConditionKey::DeviceLost])
        );
        assert_eq!(
            m.observe(&drip("A", "1", last + 11 * MIN, 120.0, 40.0)),
            vec![change(
                "A",
                ConditionChange::Cleared(ConditionKey::DeviceLost)
            )]
        );
        assert_eq!(m.view("A").map(|v| v.active), Some(vec![]));
    }

    #[test]
    fn bad_reports_are_ignored_and_counted() {
        let mut m = monitor();
        let good = drip("A", "1", T0, 120.0, 40.0);
        assert!(m.observe(&good).is_empty());
        let before = m.view("A");
        let t = T0 + 10 * S;
        let bad = [
            InfusionStatus {
                drops_per_min: f64::NAN,
                ..drip("A", "1", t, 120.0, 40.0)
            },
            InfusionStatus {
                prescribed_rate_ml_h: f64::INFINITY,
                ..drip("A", "1", t, 120.0, 40.0)
            },
            InfusionStatus {
                measured_rate_ml_h: f64::NEG_INFINITY,
                ..drip("A", "1", t, 120.0, 40.0)
            },
            InfusionStatus {
                volume_remaining_ml: f64::NAN,
                ..drip("A", "1", t, 120.0, 40.0)
            },
            InfusionStatus {
                volume_infused_ml: -3.0,
                ..drip("A", "1", t, 120.0, 40.0)
            },
            drip("", "1", t, 120.0, 40.0),
            drip("B", "2", 0, 120.0, 40.0),
            // Not newer than the latest report.
            drip("A", "1", T0, 120.0, 80.0),
        ];
        for s in &bad {
            assert!(m.observe(s).is_empty(), "{s:?}");
        }
        assert_eq!(m.ignored_reports(), bad.len() as u64);
        assert_eq!(m.view("A"), before);
        assert_eq!(m.views().len(), 1);
        // A NaN-laden report never raises anything even when sustained.
        for k in 2..20 {
            let s = InfusionStatus {
                drops_per_min: f64::NAN,
                ..drip("A", "1", T0 + k * 10 * S, 120.0, 0.0)
            };
            assert!(m.observe(&s).is_empty());
        }
    }

    #[test]
    fn drop_count_is_preferred_over_a_disagreeing_device_rate() {
        let mut m = monitor();
        // 40 gtt/min at 20 gtt/mL = 120 mL/h; the device claims 150.
        let s = InfusionStatus {
            measured_rate_ml_h: 150.0,
            ..drip("A", "1", T0, 120.0, 40.0)
        };
        m.observe(&s);
        let v = m.view("A");
        assert_eq!(v.as_ref().map(|v| v.measured_rate_ml_h), Some(120.0));
        assert_eq!(v.map(|v| v.rate_source), Some(RateSource::DropsDisagreeing));
        assert_eq!(m.rate_disagreements(), 1);
        // Within 5 %: no note.
        let s = InfusionStatus {
            measured_rate_ml_h: 125.0,
            ..drip("A", "1", T0 + 10 * S, 120.0, 40.0)
        };
        m.observe(&s);
        assert_eq!(m.view("A").map(|v| v.rate_source), Some(RateSource::Drops));
        assert_eq!(m.rate_disagreements(), 1);
        // A pump: its own rate.
        m.observe(&pump("P", "2", T0, 80.0, 83.0));
        let v = m.view("P");
        assert_eq!(v.as_ref().map(|v| v.measured_rate_ml_h), Some(83.0));
        assert_eq!(v.map(|v| v.rate_source), Some(RateSource::Reported));
    }

    #[test]
    fn views_are_sorted_by_ward_and_bed_with_volume_and_eta() {
        let mut m = monitor();
        let on = |ward: &str, s: InfusionStatus| InfusionStatus {
            location: Some(BedLocation {
                ward: ward.to_string(),
                bed: s.location.clone().map(|l| l.bed).unwrap_or_default(),
            }),
            ..s
        };
        // 100 mL/h on micro-drips with 500 mL left: empty in 5 h.
        let micro = |order: &str, bed: &str, remaining| InfusionStatus {
            drop_factor_gtt_per_ml: 60,
            measured_rate_ml_h: 100.0,
            ..with_remaining(drip(order, bed, T0, 100.0, 100.0), remaining)
        };
        m.observe(&on("7B", micro("W", "1", 500.0)));
        m.observe(&micro("X", "10", 500.0));
        m.observe(&micro("Y", "2", 250.0));
        m.observe(&micro("Z", "1", 100.0));
        m.observe(&with_state(
            pump("P", "3", T0, 100.0, 0.0),
            InfusionState::Paused,
        ));
        let v = m.views();
        let order: Vec<(&str, &str, &str)> = v
            .iter()
            .map(|v| (v.ward.as_str(), v.bed.as_str(), v.order_id.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("7A", "1", "Z"),
                ("7A", "2", "Y"),
                ("7A", "3", "P"),
                ("7A", "10", "X"),
                ("7B", "1", "W"),
            ]
        );
        let summary: Vec<(f64, Option<i64>)> = v
            .iter()
            .map(|v| (v.volume_remaining_ml, v.eta_unix_ms))
            .collect();
        assert_eq!(
            summary,
            vec![
                (100.0, Some(T0 + 60 * MIN)),
                (250.0, Some(T0 + 150 * MIN)),
                (500.0, None),
                (500.0, Some(T0 + 300 * MIN)),
                (500.0, Some(T0 + 300 * MIN)),
            ]
        );
        assert_eq!(v[0].patient_id, "SIM000001");
        assert_eq!(v[0].state, InfusionState::Running);
        assert_eq!(v[2].state, InfusionState::Paused);
        assert_eq!(v[0].last_report_unix_ms, T0);
        assert_eq!(natural_cmp("bed 02", "bed 2"), Ordering::Greater);
        assert_eq!(natural_cmp("9", "10"), Ordering::Less);
    }

    /// Two simulated hours of the default 40-bed ward (seed 1): normal simulated infusions must raise no flow
    /// alarms, and every bag that finishes raises near completion before completed.
    ///
    /// Note: the simulator's flow deviation is an AR(1) process with a standard deviation of 3 % (10 min time
    /// constant) clamped to ±15 %, so its excursions do reach the 10 % limit: with seed 1 the largest running
    /// deviations over these 2 h are −11.7 % / +9.9 % and nothing alarms, but other seeds (e.g. 7 and 12 of 1..=20)
    /// hold more than 10 % over for 60 s or more and rightly raise "too fast". The clinical thresholds are not
    /// loosened to hide that; the simulator is noisier than "≤ 3 %".
    #[test]
    fn two_simulated_hours_raise_no_false_flow_alarms() {
        // The default ward; only the infusion channel is needed, and every channel has its own random stream and
        // schedule, so switching the others off leaves the infusion reports exactly as in the default ward.
        let mut sim = WardSimulator::new(WardSimConfig {
            start_unix_ms: T0,
            vitals_period_ms: 0,
            temp_period_ms: 0,
            bp_period_ms: 0,
            consciousness_period_ms: 0,
            ..WardSimConfig::default()
        });
        let mut m = monitor();
        let mut near: HashSet<String> = HashSet::new();
        let mut completed: HashSet<String> = HashSet::new();
        let mut reports = 0;
        let mut max_dev: f64 = 0.0;
        let mut raised_by_kind: HashMap<ConditionKey, usize> = HashMap::new();
        for minute in 1..=120 {
            let now = T0 + minute * MIN;
            let mut changes = Vec::new();
            for e in sim.advance_to(now) {
                if let Payload::Infusion(s) = &e.payload {
                    reports += 1;
                    if s.state == InfusionState::Running as i32 {
                        max_dev = max_dev
                            .max((s.measured_rate_ml_h / s.prescribed_rate_ml_h - 1.0).abs());
                    }
                    changes.extend(m.observe(s));
                }
            }
            changes.extend(m.tick(now));
            for (order, c) in changes {
                match c {
                    ConditionChange::Raised(c) | ConditionChange::Updated(c) => {
                        *raised_by_kind.entry(c.key()).or_default() += 1;
                        match c {
                            InfusionCondition::NearCompletion {
                                remaining_ml,
                                eta_unix_ms,
                            } => {
                                assert!(remaining_ml <= 50.0 && remaining_ml > 0.0);
                                assert!(eta_unix_ms.is_some_and(|e| e > now - MIN));
                                assert!(near.insert(order), "near completion raised twice");
                            }
                            InfusionCondition::Completed => {
                                assert!(
                                    near.contains(&order),
                                    "{order} completed without near completion"
                                );
                                assert!(completed.insert(order));
                            }
                            other => panic!(
                                "{order}: {other:?} at minute {minute} (max flow deviation so far {:.1} %)",
                                max_dev * 100.0
                            ),
                        }
                    }
                    ConditionChange::Cleared(_) => {}
                }
            }
        }
        assert_eq!(reports, 24 * 6 * 120, "24 drips, every 10 s, 2 h");
        assert_eq!(m.ignored_reports(), 0);
        assert_eq!(m.rate_disagreements(), 0);
        assert!(!completed.is_empty(), "no bag finished in 2 h");
        assert!(near.len() >= completed.len());
        assert_eq!(m.views().len(), 24);
    }
}
