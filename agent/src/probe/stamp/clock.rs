//! Is the host clock synchronized? The kernel knows (`adjtimex`): the NTP daemon (chrony,
//! ntpd, systemd-timesyncd) clears `STA_UNSYNC` and keeps `maxerror` small while it
//! disciplines the clock. The STAMP error estimate's S bit is set only when both say so;
//! one-way delays are reported only when both ends set it. Where the kernel cannot know
//! (PTP through phc2sys leaves `STA_UNSYNC` set; namespaces sharing one kernel clock), the
//! operator declares it: [`ClockSync::Assume`].

use super::packet::ErrorEstimate;

/// Largest kernel `maxerror` still called synchronized (the kernel itself gives up at 16 s).
pub const MAX_SYNC_ERROR_US: i64 = 100_000;
/// Error estimate sent when the kernel cannot be asked or is not synchronized: 1 s.
pub const UNSYNC_ERROR_NS: u64 = 1_000_000_000;

/// Error estimate sent under [`ClockSync::Assume`] when the kernel has none of its own: 1 µs
/// (PTP-disciplined clocks are within it; namespaces on one kernel share the clock).
pub const ASSUMED_ERROR_NS: u64 = 1_000;

/// `STA_UNSYNC` from `<sys/timex.h>`.
const STA_UNSYNC: i32 = 0x0040;
/// `TIME_ERROR` return of `adjtimex`.
const TIME_ERROR: i32 = 5;

/// What the kernel said, pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockState {
    pub synchronized: bool,
    /// Estimated error in nanoseconds.
    pub error_ns: u64,
}

impl ClockState {
    /// From `adjtimex`'s return value, `status`, `maxerror` and `esterror` (µs).
    pub fn from_timex(ret: i32, status: i32, maxerror_us: i64, esterror_us: i64) -> ClockState {
        let synchronized = ret != TIME_ERROR
            && status & STA_UNSYNC == 0
            && (0..=MAX_SYNC_ERROR_US).contains(&maxerror_us);
        if synchronized {
            ClockState {
                synchronized,
                // esterror is the daemon's estimate; at least 1 µs (the unit of the field).
                error_ns: (esterror_us.max(1) as u64) * 1_000,
            }
        } else {
            ClockState {
                synchronized,
                error_ns: UNSYNC_ERROR_NS,
            }
        }
    }

    pub fn unknown() -> ClockState {
        ClockState {
            synchronized: false,
            error_ns: UNSYNC_ERROR_NS,
        }
    }

    pub fn error_estimate(self) -> ErrorEstimate {
        ErrorEstimate::new(self.synchronized, self.error_ns)
    }
}

/// Who says whether the clock is synchronized (`clock_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClockSync {
    /// The kernel (`adjtimex`): synchronized while an NTP daemon disciplines the clock.
    #[default]
    Kernel,
    /// The operator: always synchronized (PTP via phc2sys, or one clock shared by lab
    /// namespaces); the kernel's error estimate when it has one, else [`ASSUMED_ERROR_NS`].
    Assume,
}

impl ClockSync {
    /// What this mode makes of what the kernel said, pure.
    pub fn apply(self, kernel: ClockState) -> ClockState {
        match self {
            ClockSync::Kernel => kernel,
            ClockSync::Assume if kernel.synchronized => kernel,
            ClockSync::Assume => ClockState {
                synchronized: true,
                error_ns: ASSUMED_ERROR_NS,
            },
        }
    }

    /// Ask the kernel, then apply this mode.
    pub fn query(self) -> ClockState {
        self.apply(query())
    }
}

impl std::fmt::Display for ClockSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClockSync::Kernel => "kernel",
            ClockSync::Assume => "assume",
        })
    }
}

/// Ask the kernel (read only: `modes` = 0). Unknown (not synchronized) if the call fails.
// Neither nix nor socket2 wraps adjtimex, so this one call goes through libc.
#[allow(unsafe_code)]
pub fn query() -> ClockState {
    // SAFETY: `timex` is a plain C struct for which all-zero bytes are a valid value
    // (modes = 0 asks for nothing to be changed).
    let mut tx: nix::libc::timex = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
    // SAFETY: `tx` is a valid, writable `struct timex` that outlives the call; with
    // modes = 0 the kernel only fills it in.
    let ret = unsafe { nix::libc::adjtimex(&mut tx) };
    if ret < 0 {
        return ClockState::unknown();
    }
    ClockState::from_timex(ret, tx.status, tx.maxerror, tx.esterror)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synchronized_only_when_the_kernel_says_so() {
        let ok = ClockState::from_timex(0, 0x2001, 20_000, 150);
        assert!(ok.synchronized);
        assert_eq!(ok.error_ns, 150_000);
        assert!(ok.error_estimate().synchronized);
        assert!(!ClockState::from_timex(0, STA_UNSYNC, 20_000, 150).synchronized);
        assert!(!ClockState::from_timex(TIME_ERROR, 0, 20_000, 150).synchronized);
        assert!(!ClockState::from_timex(0, 0, 16_000_000, 150).synchronized);
        let un = ClockState::from_timex(0, STA_UNSYNC, 16_000_000, 0);
        assert!(!un.error_estimate().synchronized);
        assert!(un.error_estimate().error_ns() >= 1e9 * 0.999);
    }

    #[test]
    fn assume_sets_the_s_bit_and_kernel_leaves_it_to_the_kernel() {
        let unsynced = ClockState::from_timex(TIME_ERROR, STA_UNSYNC, 16_000_000, 16_000_000);
        let synced = ClockState::from_timex(0, 0x2001, 20_000, 150);
        // kernel: whatever the kernel said.
        assert_eq!(ClockSync::Kernel.apply(unsynced), unsynced);
        assert!(
            !ClockSync::Kernel
                .apply(unsynced)
                .error_estimate()
                .synchronized
        );
        assert_eq!(ClockSync::Kernel.apply(synced), synced);
        // assume: the S bit always, with the kernel's estimate when it has one.
        let e = ClockSync::Assume.apply(unsynced).error_estimate();
        assert!(e.synchronized);
        assert!(
            (1_000.0..=1_010.0).contains(&e.error_ns()),
            "{}",
            e.error_ns()
        );
        assert_eq!(ClockSync::Assume.apply(synced), synced);
        assert_eq!(ClockSync::default(), ClockSync::Kernel);
        let parse = |s: &str| toml::from_str::<std::collections::BTreeMap<String, ClockSync>>(s);
        assert_eq!(
            parse("c = \"assume\"").expect("assume")["c"],
            ClockSync::Assume
        );
        assert!(parse("c = \"ptp\"").is_err());
    }

    #[test]
    fn the_kernel_answers() {
        // Whatever this host's state, the call works and gives a valid estimate.
        let s = query();
        assert!(s.error_estimate().multiplier > 0);
        eprintln!("host clock: {s:?}");
    }
}
