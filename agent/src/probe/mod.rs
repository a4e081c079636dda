//! Probers. Each owns its sockets and writes outcomes into [`crate::shared::Shared`].

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
