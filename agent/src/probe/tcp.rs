//! TCP-connect prober: handshake time to HOST:PORT, for targets that drop ICMP and for
//! users without CAP_NET_RAW. The time is read from the monotonic clock next to the
//! `connect` call (the kernel offers no timestamps for a handshake). A refused or timed
//! out connection is a lost probe.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pathpulse_wire::ProbeKind;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::reload::ProbePlan;
use crate::resolve::Resolver;
use crate::schedule::Schedule;
use crate::shared::Shared;
use crate::systemd::{BEAT_EVERY, Beat};

/// A TCP connection with the target's options (DSCP, TTL, source, interface).
async fn connect(
    dst: SocketAddr,
    opts: &crate::options::TargetOptions,
) -> std::io::Result<tokio::net::TcpStream> {
    if !crate::probe::sockopt::per_packet(opts) {
        return tokio::net::TcpStream::connect(dst).await;
    }
    let domain = socket2::Domain::for_address(dst);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    crate::probe::sockopt::apply(&sock, dst.is_ipv6(), opts)?;
    if let Some(src) = opts.source {
        sock.bind(&SocketAddr::new(src, 0).into())?;
    }
    let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    sock.connect(dst).await
}

/// Most connection attempts in progress at once.
const MAX_CONCURRENT: usize = 1024;

pub struct TcpProber {
    pub plan: watch::Receiver<ProbePlan>,
    pub shared: Arc<Shared>,
    pub resolver: Arc<Resolver>,
    pub beat: Arc<Beat>,
}

impl TcpProber {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut plan = self.plan.borrow_and_update().clone();
        let mut targets = plan.of_kind(ProbeKind::Tcp);
        let new_schedule =
            |n: usize, iv: Duration| Schedule::new(vec![iv; n], Instant::now(), rand::random());
        let mut sched = new_schedule(targets.len(), plan.interval);
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
        let mut plan_open = true;
        loop {
            self.beat.beat();
            let beat_at = Instant::now() + BEAT_EVERY;
            let wake = sched.next_due().unwrap_or(beat_at).min(beat_at);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
                r = self.plan.changed(), if plan_open => match r {
                    Ok(()) => {
                        plan = self.plan.borrow_and_update().clone();
                        targets = plan.of_kind(ProbeKind::Tcp);
                        sched = new_schedule(targets.len(), plan.interval);
                        continue;
                    }
                    Err(_) => plan_open = false,
                },
            }
            for due in sched.pop_due(Instant::now()) {
                let (path, spec) = &targets[due.target];
                let path = *path;
                self.shared.lag(due.lag.as_micros() as u64);
                let (Some(ip), Some(port)) = (self.resolver.target_addr(spec), spec.port) else {
                    self.shared.path(path, |p| p.on_send_error());
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    self.shared.path(path, |p| p.on_send_error());
                    continue;
                };
                self.shared.path(path, |p| p.on_sent());
                let (shared, timeout) = (self.shared.clone(), plan.timeout);
                let opts = spec.options.clone();
                tokio::spawn(async move {
                    let start = Instant::now();
                    let res =
                        tokio::time::timeout(timeout, connect(SocketAddr::new(ip, port), &opts))
                            .await;
                    let rtt = start.elapsed();
                    match res {
                        Ok(Ok(_stream)) => {
                            shared.path(path, |p| p.on_reply(rtt.as_micros() as u64, false))
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(target_addr = %ip, port, error = %e, "tcp probe failed");
                            shared.lost(path);
                        }
                        Err(_) => shared.lost(path),
                    }
                    drop(permit);
                });
            }
        }
    }
}
