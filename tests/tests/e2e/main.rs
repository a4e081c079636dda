//! End-to-end tests: real binaries on real sockets. One test binary (see ripgrep's tests).

mod accuracy;
mod alert_bench;
mod alerts;
mod cli;
mod dashboards;
mod delivery;
mod demo;
mod enroll;
mod hops;
mod http_auth;
mod lab;
mod loopback;
mod package;
mod prometheus;
mod rate_limit;
mod reload;
mod remote_write;
mod security;
mod setup;
mod stamp;
mod systemd;
mod topo;
mod ui;
