//! Real-time alerts, decided inside the aggregator as reports arrive.
//!
//! - [`rules`]: rules, thresholds with hysteresis, and their pure evaluation;
pub mod rules;
