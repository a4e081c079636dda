//! pathpulse-wire: what crosses the network between agent and aggregator.
//!
//! - [`message`]: hello, report, acknowledgement and refusal messages;
//! - [`frame`]: framing with a version check and size limits;
//! - [`stamp`]: STAMP per-direction loss and one-way delay, reflector counters;
//! - [`hist`]: the sparse HDR histogram codec;
//! - [`tls`]: the CA, certificates and rustls configurations for mutual TLS.
//!
//! No I/O loops live here.

pub mod frame;
pub mod hist;
pub mod message;
pub mod stamp;
pub mod tls;

pub use hist::SparseHist;
pub use message::{
    AgentHealth, ClientMsg, Confirm, ConfirmPath, EnrollReply, EnrollRequest, Hello, HopReport,
    HopRole, Join, PathReport, Peer, ProbeKind, RefuseReason, Report, ServerMsg,
};
