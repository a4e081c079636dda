//! End-to-end tests: real binaries on real sockets. One test binary (see ripgrep's tests).

mod accuracy;
mod alert_bench;
mod alerts;
mod cli;
mod demo;
mod lab;
mod loopback;
mod prometheus;
mod security;
mod setup;
