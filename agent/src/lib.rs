//! pathpulse-agent: probes paths and reports them.
//!
//! - [`config`], [`target`], [`options`], [`target_list`], [`anchors`]: what to probe and how,
//!   from file, flags and environment;
//! - [`probe`]: probers (ICMP on kernel-timestamped sockets, TCP connect) and reply matching;
//! - [`schedule`]: when each probe goes out;
//! - [`stats`], [`shared`]: per-path statistics of the current report interval;
//! - [`uplink`]: QUIC with mutual TLS to each aggregator, acknowledged reports;
//! - [`spool`]: unacknowledged reports on disk per aggregator (replayed after a restart);
//! - [`enroll`], [`renew`]: a one-time token exchanged for a certificate; renewal before expiry;
//! - [`reload`]: new targets on SIGHUP without losing the state of those that stay;
//! - [`systemd`]: readiness, reload, stop and watchdog notifications to the service manager;
//! - [`assets`]: man pages and shell completions from the command line definition;
//! - [`run`]: the agent assembled from the above; `main.rs` only parses the command line.

pub mod anchors;
pub mod assets;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod enroll;
pub mod options;
pub mod peers;
pub mod probe;
pub mod reload;
pub mod renew;
pub mod resolve;
pub mod run;
pub mod schedule;
pub mod shared;
pub mod spool;
pub mod stats;
pub mod systemd;
pub mod target;
pub mod target_list;
pub mod uplink;

pub use config::{AgentConfig, RunArgs};
pub use run::{RunError, run};
