//! State the probers write and the reporter reads: per-path statistics of the current
//! interval and the agent's own health counters. One short lock per event.

use std::sync::{Mutex, MutexGuard};

use pathpulse_wire::{AgentHealth, PathReport};

use crate::probe::matcher::StrayReason;
use crate::stats::PathStats;

#[derive(Debug, Default)]
pub struct Shared {
    paths: Mutex<Vec<PathStats>>,
    health: Mutex<AgentHealth>,
}

impl Shared {
    pub fn new(paths: Vec<PathStats>) -> Self {
        Shared {
            paths: Mutex::new(paths),
            health: Mutex::default(),
        }
    }

    /// Run `f` on path `i` (ignores an index out of range).
    pub fn path(&self, i: usize, f: impl FnOnce(&mut PathStats)) {
        if let Some(p) = self.lock_paths().get_mut(i) {
            f(p);
        }
    }

    pub fn lock_paths(&self) -> MutexGuard<'_, Vec<PathStats>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn health(&self, f: impl FnOnce(&mut AgentHealth)) {
        f(&mut self.health.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn stray(&self, r: StrayReason) {
        self.health(|h| match r {
            StrayReason::NotOurs => h.stray_not_ours += 1,
            StrayReason::WrongSource => h.stray_wrong_source += 1,
            StrayReason::UnknownProbe => h.stray_unknown_probe += 1,
        });
    }

    pub fn lag(&self, lag_us: u64) {
        let lag = u32::try_from(lag_us).unwrap_or(u32::MAX);
        self.health(|h| h.max_scheduling_lag_us = h.max_scheduling_lag_us.max(lag));
    }

    /// End the interval: every path's report and the health counters, reset.
    pub fn take(&self) -> (Vec<PathReport>, AgentHealth) {
        let paths = self
            .lock_paths()
            .iter_mut()
            .map(PathStats::take_report)
            .collect();
        let health = std::mem::take(&mut *self.health.lock().unwrap_or_else(|e| e.into_inner()));
        (paths, health)
    }
}
