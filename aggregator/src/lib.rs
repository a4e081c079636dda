//! pathpulse-aggregator: receives agent reports and exports them.
//!
//! - [`alert`]: alert rules, engine, delivery to webhooks and Alertmanager, state;
//! - [`config`]: file, flags and environment;
//! - [`pki`]: the CA and the certificates it issues;
//! - [`state`]: enrollment tokens, issued and revoked certificates (redb);
//! - [`durable`]: per-path counters and applied sequences, kept across restarts (redb);
//! - [`ingest`]: QUIC with mutual TLS, reports applied once each and acknowledged;
//! - [`mesh`]: membership and peer lists (who probes whom), pushed to the agents;
//! - [`limits`]: per-agent rate limits on reports and registrations;
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`auth`]: HTTP bearer tokens and roles ([`tokens`]), the admin writes ([`admin`]);
//! - [`ui`]: the live mesh page at `/` and its JSON API (`/api/...`);
//! - [`server`]: the aggregator assembled; [`demo`]: aggregator plus local agents;
//! - [`cli`]: the command line (`main.rs` only calls it).

pub mod admin;
pub mod alert;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod durable;
pub mod heap;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod mesh;
pub mod pki;
pub mod reload;
pub mod remote_write;
pub mod server;
pub mod state;
pub mod tokens;
pub mod ui;
