//! pathpulse-metrics: what a number means and how it is exported.
//!
//! - [`stats`]: loss ratio with a Wilson interval, RFC 3550 jitter (pure functions);
//! - [`window`]: per-path 10 s / 1 min / 5 min windows over sparse HDR histograms;
//! - [`store`]: per-path and per-agent state that reports are applied to;
//! - [`localize`]: where a problem is (LAN, site uplink, ISP, transit, target), pure;
//! - [`export`]: every metric name and label set, as a prometheus-client collector;
//! - [`stream`]: the text exposition streamed to the scraper in chunks;
//! - [`protobuf`]: the protobuf exposition, encoded a chunk of paths at a time.
//!
//! Used by the aggregator and by the agent's standalone `/metrics`, so both expose the
//! same series.

pub mod durable;
pub mod export;
pub mod http;
pub mod http_limit;
pub mod localize;
pub mod protobuf;
pub mod slot;
pub mod stats;
pub mod store;
pub mod stream;
pub mod window;

pub use export::SharedStore;
pub use store::{Applied, Store};
