//! End-to-end tests: real binaries on real sockets. One test binary (see ripgrep's tests).

mod accuracy;
mod cli;
mod dashboards;
mod demo;
mod lab;
mod loopback;
mod package;
mod prometheus;
mod reload;
mod security;
mod setup;
mod systemd;
