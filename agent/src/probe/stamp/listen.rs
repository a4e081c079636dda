//! Where the reflector's sockets come from: systemd (socket activation,
//! `pathpulse-agent.socket`, which can bind UDP 862 for an agent holding only
//! CAP_NET_RAW), or bound here. A mesh member's default port that cannot be bound leaves
//! the agent running without a reflector, with one warning; addresses given by hand must
//! bind.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use super::socket::StampSocket;
use crate::config::StampListen;

/// Why the reflector cannot run as configured (exit 78: the addresses were given by hand).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on UDP {addr}: {source} (ports below 1024 need pathpulse-agent.socket, root or CAP_NET_BIND_SERVICE)"
)]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The reflector's sockets, and whether the reflector was wanted at all.
#[derive(Debug, Default)]
pub struct Listening {
    pub sockets: Vec<StampSocket>,
    /// The configuration asks for a reflector (not `off`, and not a standalone agent
    /// without sockets from systemd).
    pub wanted: bool,
}

impl Listening {
    /// The port to advertise to the aggregators (none without a reflector).
    pub fn port(&self) -> Option<u16> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .map(|a| a.port())
            .find(|p| *p != 0)
    }
}

/// Open the reflector's sockets as `listen` says.
pub fn open(listen: &StampListen) -> Result<Listening, ListenError> {
    if *listen == StampListen::Off {
        if sd_notify::listen_fds().is_ok_and(|fds| fds.len() > 0) {
            tracing::info!("STAMP reflector off: sockets from systemd left unused");
        }
        return Ok(Listening::default());
    }
    let passed = activated_sockets();
    if !passed.is_empty() {
        for s in &passed {
            tracing::info!(addr = ?s.local_addr().ok(), "STAMP reflector listening (socket from systemd)");
        }
        return Ok(Listening {
            sockets: passed,
            wanted: true,
        });
    }
    let mut sockets = Vec::new();
    let mut failed = Vec::new();
    for addr in listen.addrs() {
        match StampSocket::bind(addr) {
            Ok(s) => {
                tracing::info!(addr = %s.local_addr().unwrap_or(addr), "STAMP reflector listening");
                sockets.push(s);
            }
            Err(source) if matches!(listen, StampListen::Addrs(_)) => {
                return Err(ListenError { addr, source });
            }
            Err(e) => failed.push(format!("{addr}: {e}")),
        }
    }
    if !failed.is_empty() && sockets.is_empty() {
        tracing::warn!(
            failed = %failed.join(", "),
            "STAMP reflector not running: its UDP port cannot be bound (862 needs privileges the service does not have), so peers get no STAMP path to this agent. Fix: `systemctl enable --now pathpulse-agent.socket` (systemd binds the port for the agent), or `--stamp-listen 0.0.0.0:PORT` with a free port above 1023, or `--stamp-listen off`"
        );
    } else if !failed.is_empty() {
        tracing::info!(failed = %failed.join(", "), "STAMP reflector on some addresses only");
    }
    Ok(Listening {
        sockets,
        wanted: *listen != StampListen::Activated,
    })
}

/// Taken once per process: the descriptors belong to whoever takes them first.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The UDP sockets systemd passed (`LISTEN_FDS` for this process); others are closed
/// with a warning.
fn activated_sockets() -> Vec<StampSocket> {
    let fds = match sd_notify::listen_fds() {
        Ok(fds) => fds,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring LISTEN_FDS from the service manager");
            return Vec::new();
        }
    };
    if fds.len() == 0 || TAKEN.swap(true, Ordering::SeqCst) {
        return Vec::new();
    }
    fds.filter_map(|fd| {
        let sock = socket2::Socket::from(take(fd));
        StampSocket::adopt(sock)
            .map_err(|e| {
                tracing::warn!(fd, error = %e, "socket from systemd is not a UDP socket: closed")
            })
            .ok()
    })
    .collect()
}

/// Own a descriptor systemd passed.
#[allow(unsafe_code)]
fn take(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` is one of the descriptors the service manager passed to this process
    // (LISTEN_PID is ours, `listen_fds` checked it); nothing else in the process owns it,
    // and TAKEN makes sure it is taken once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
