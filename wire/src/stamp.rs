//! STAMP additions to reports: loss per direction and one-way delay of a path, and the
//! agent's reflector counters. Kept apart from `message` so the core messages stay short.

use serde::{Deserialize, Serialize};

use crate::hist::SparseHist;

/// A STAMP path per direction over one report interval.
///
/// Forward = sender → reflector, reverse = reflector → sender. A lost probe is attributed
/// once a later reply shows how far the reflector's sequence moved meanwhile (stateful
/// reflector): the gap in reflector sequence numbers is the number reflected and lost on
/// the way back, the rest never reached the reflector.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Directional {
    /// Probes whose fate per direction is known: received, or lost and attributed.
    pub attributed: u32,
    /// Lost on the way to the reflector.
    pub forward_lost: u32,
    /// Reflected, never back.
    pub reverse_lost: u32,
    /// One-way delay sender → reflector in µs; only when both ends said synchronized.
    pub owd_forward: SparseHist,
    /// One-way delay reflector → sender in µs; same condition.
    pub owd_reverse: SparseHist,
}

impl Directional {
    /// forward_lost / attributed.
    pub fn forward_ratio(attributed: u64, forward_lost: u64) -> Option<f64> {
        (attributed > 0).then(|| forward_lost as f64 / attributed as f64)
    }

    /// reverse_lost / (probes that reached the reflector).
    pub fn reverse_ratio(attributed: u64, forward_lost: u64, reverse_lost: u64) -> Option<f64> {
        let reached = attributed.saturating_sub(forward_lost);
        (reached > 0).then(|| reverse_lost as f64 / reached as f64)
    }
}

/// Invariants of a path's directional counts (`received`: the path's replies).
pub fn validate(d: &Directional, received: u32) -> Result<(), String> {
    if u64::from(d.forward_lost) + u64::from(d.reverse_lost) > u64::from(d.attributed) {
        return Err("more probes lost per direction than attributed".into());
    }
    if d.owd_forward.count() > u64::from(received) || d.owd_reverse.count() > u64::from(received) {
        return Err("more one-way delay samples than replies".into());
    }
    Ok(())
}

/// The agent's STAMP reflector over one report interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReflectorCounts {
    pub reflected: u32,
    /// Dropped, never answered: shorter than a STAMP packet.
    pub truncated: u32,
    /// Dropped: larger than the reflector accepts.
    pub oversize: u32,
    /// Dropped: not a valid STAMP packet (zero error-estimate multiplier).
    pub malformed: u32,
    /// Dropped: the source exceeded its rate.
    pub rate_limited: u32,
    /// Dropped: session or source table full (bounded memory).
    pub table_full: u32,
    /// Dropped: authenticated mode and the HMAC did not match.
    pub auth_failed: u32,
}

impl ReflectorCounts {
    /// Drop reasons with their label value (bounded).
    pub fn dropped(&self) -> [(&'static str, u32); 6] {
        [
            ("truncated", self.truncated),
            ("oversize", self.oversize),
            ("malformed", self.malformed),
            ("rate_limited", self.rate_limited),
            ("table_full", self.table_full),
            ("auth_failed", self.auth_failed),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_invariants() {
        assert_eq!(Directional::forward_ratio(100, 10), Some(0.1));
        assert_eq!(Directional::reverse_ratio(100, 10, 9), Some(0.1));
        assert_eq!(Directional::forward_ratio(0, 0), None);
        assert_eq!(Directional::reverse_ratio(10, 10, 0), None);
        let mut d = Directional {
            attributed: 10,
            forward_lost: 6,
            reverse_lost: 5,
            ..Default::default()
        };
        assert!(validate(&d, 0).is_err());
        d.reverse_lost = 4;
        assert!(validate(&d, 0).is_ok());
        d.owd_forward.record(5);
        assert!(validate(&d, 0).is_err());
        assert!(validate(&d, 1).is_ok());
    }
}
