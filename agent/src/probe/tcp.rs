//! TCP-connect prober: handshake time to HOST:PORT, for targets that drop ICMP and for
//! users without CAP_NET_RAW. The time is read from the monotonic clock next to the
//! `connect` call (the kernel offers no timestamps for a handshake). A refused or timed
//! out connection is a lost probe.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::resolve::Resolver;
use crate::schedule::Schedule;
use crate::shared::Shared;
use crate::target::TargetSpec;

/// Most connection attempts in progress at once.
const MAX_CONCURRENT: usize = 1024;

pub struct TcpProber {
    /// (path index, spec)
    pub targets: Vec<(usize, TargetSpec)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub shared: Arc<Shared>,
    pub resolver: Arc<Resolver>,
}

impl TcpProber {
    pub async fn run(self, shutdown: CancellationToken) {
        if self.targets.is_empty() {
            return;
        }
        let mut sched = Schedule::new(
            vec![self.interval; self.targets.len()],
            Instant::now(),
            rand::random(),
        );
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
        loop {
            let Some(next) = sched.next_due() else { return };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next.into()) => {}
            }
            for due in sched.pop_due(Instant::now()) {
                let (path, spec) = &self.targets[due.target];
                let path = *path;
                self.shared.lag(due.lag.as_micros() as u64);
                let (Some(ip), Some(port)) = (self.resolver.addr(&spec.host), spec.port) else {
                    self.shared.path(path, |p| p.on_send_error());
                    continue;
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    self.shared.path(path, |p| p.on_send_error());
                    continue;
                };
                self.shared.path(path, |p| p.on_sent());
                let (shared, timeout) = (self.shared.clone(), self.timeout);
                tokio::spawn(async move {
                    let start = Instant::now();
                    let res = tokio::time::timeout(
                        timeout,
                        tokio::net::TcpStream::connect(SocketAddr::new(ip, port)),
                    )
                    .await;
                    let rtt = start.elapsed();
                    match res {
                        Ok(Ok(_stream)) => {
                            shared.path(path, |p| p.on_reply(rtt.as_micros() as u64, false))
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(target_addr = %ip, port, error = %e, "tcp probe failed");
                            shared.path(path, |p| p.on_lost());
                        }
                        Err(_) => shared.path(path, |p| p.on_lost()),
                    }
                    drop(permit);
                });
            }
        }
    }
}
