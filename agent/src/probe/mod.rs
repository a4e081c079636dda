//! Probers. Each owns its sockets and writes outcomes into [`crate::shared::Shared`].

pub mod confirm;
pub mod dns;
pub mod hop_udp;
pub mod hops;
pub mod icmp;
pub mod icmp_socket;
pub mod matcher;
pub mod recent;
pub mod route;
pub mod sockopt;
pub mod stamp;
pub mod tcp;

/// Packets read per socket queue, without waiting, before probes whose deadline passed are
/// declared lost. A process starved of CPU wakes to find replies the kernel received in
/// time still queued; they are answers, not losses. Past this many the prober reads on in
/// its next turn and expires then.
pub(crate) const DRAIN_LIMIT: usize = 4096;
