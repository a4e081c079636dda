//! The service manager's protocol (`sd_notify`): readiness, reload, stop, status and the
//! watchdog. Every call is a no-op when the process was not started by systemd (no
//! `NOTIFY_SOCKET`), so the binaries behave the same by hand.
//!
//! The watchdog is pinged from its own task, but only while every registered main loop
//! has shown a sign of life ([`Beat::beat`]) within [`STALE_AFTER`]: a wedged prober,
//! reporter or ingest loop (or a runtime that no longer schedules them) stops the pings,
//! and systemd restarts the service after `WatchdogSec`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

/// Main loops wake up at least this often, to beat, even when they have nothing to do.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A loop that has not beaten for this long counts as stalled.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// `READY=1` with a status line: sockets are bound, work has started.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` (with the monotonic time systemd 253+ wants), before a reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A free-form status line (`systemctl status` shows it).
pub fn status(s: &str) {
    send(&[NotifyState::Status(s)]);
}

/// The main loops the watchdog vouches for.
#[derive(Debug)]
pub struct Liveness {
    origin: Instant,
    loops: Mutex<Vec<Arc<Beat>>>,
}

/// One loop's sign of life.
#[derive(Debug)]
pub struct Beat {
    name: &'static str,
    origin: Instant,
    /// Milliseconds since `origin` of the last beat.
    last_ms: AtomicU64,
}

impl Beat {
    /// The loop is alive now.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    pub fn beat_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            origin: Instant::now(),
            loops: Mutex::default(),
        }
    }
}

impl Liveness {
    pub fn new() -> Arc<Self> {
        Arc::new(Liveness::default())
    }

    /// A loop to watch, alive from now on.
    pub fn register(&self, name: &'static str) -> Arc<Beat> {
        let b = Arc::new(Beat {
            name,
            origin: self.origin,
            last_ms: AtomicU64::new(self.origin.elapsed().as_millis() as u64),
        });
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(b.clone());
        b
    }

    /// Names of the loops that have not beaten within `STALE_AFTER` of `now`.
    pub fn stale(&self, now: Instant) -> Vec<&'static str> {
        let now_ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        self.loops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|b| {
                now_ms.saturating_sub(b.last_ms.load(Ordering::Relaxed))
                    > STALE_AFTER.as_millis() as u64
            })
            .map(|b| b.name)
            .collect()
    }
}

/// The watchdog period systemd asked for (`WATCHDOG_USEC`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Ping the watchdog every half period while every loop in `liveness` is alive; returns
/// at once when systemd set no watchdog, and at shutdown.
pub async fn watchdog(liveness: Arc<Liveness>, shutdown: CancellationToken) {
    let Some(period) = watchdog_period() else {
        return;
    };
    let every = period / 2;
    tracing::info!(period = ?period, every = ?every, "systemd watchdog on");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stale = liveness.stale(Instant::now());
        if stale.is_empty() {
            send(&[NotifyState::Watchdog]);
            if withheld {
                tracing::info!("main loops alive again; watchdog pings resume");
                withheld = false;
            }
        } else if !withheld {
            tracing::error!(loops = ?stale, "main loops stalled; withholding the watchdog ping (systemd restarts the service after WatchdogSec)");
            withheld = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_goes_stale() {
        let l = Liveness::new();
        let a = l.register("reporter");
        let _b = l.register("icmp");
        let t0 = Instant::now();
        assert!(l.stale(t0).is_empty());
        let later = t0 + STALE_AFTER + Duration::from_millis(500);
        a.beat_at(later - Duration::from_secs(1));
        assert_eq!(l.stale(later), ["icmp"]);
        assert_eq!(a.name(), "reporter");
    }
}
