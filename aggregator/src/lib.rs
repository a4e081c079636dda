//! pathpulse-aggregator: receives agent reports and exports them.
//!
//! - [`config`]: file, flags and environment;
//! - [`pki`]: the CA and the certificates it issues;
//! - [`state`]: enrollment tokens, issued and revoked certificates (redb);
//! - [`ingest`]: QUIC with mutual TLS, reports applied once each and acknowledged;
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`server`]: the aggregator assembled; [`demo`]: aggregator plus local agents;
//! - [`cli`]: the command line (`main.rs` only calls it).

pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod ingest;
pub mod pki;
pub mod server;
pub mod state;
