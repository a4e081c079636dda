//! End-to-end tests: real binaries on real sockets. One test binary (see ripgrep's tests).

mod accuracy;
mod cli;
mod demo;
mod hops;
mod lab;
mod loopback;
mod prometheus;
mod security;
mod setup;
mod stamp;
mod topo;
