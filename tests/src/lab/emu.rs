//! The link emulator: a userspace stand-in for netem. Two TUN devices, one in each of two
//! network namespaces; IP packets read from one are written to the other after the
//! direction's impairment (delay, loss, duplication, reordering, rate). Every packet's
//! fate is logged with its arrival and departure times: the ground truth tests compare
//! pathpulse, `ping` and `fping` with.
//!
//! One reader thread per device and one sender thread per direction; the sender sleeps
//! until shortly before a departure and spins the last stretch, so departures are within a
//! few microseconds of their schedule (the log records the real departure anyway).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tun_rs::{DeviceBuilder, SyncDevice};

use super::impair::{Direction, Impairment};

/// Direction of travel: `Ab` is from the device in namespace A to the one in B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dir {
    Ab,
    Ba,
}

/// What the emulator did with one packet.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Record {
    pub dir: Dir,
    /// Arrival, ns since the emulator started.
    pub arrive_ns: u64,
    /// Departures actually made (empty when dropped; two when duplicated).
    pub depart_ns: Vec<u64>,
    pub dropped: bool,
    pub reordered: bool,
    /// IP protocol (1 ICMP, 58 ICMPv6, 17 UDP, 6 TCP).
    pub proto: u8,
    /// ICMP echo type, identifier and sequence when the packet is an echo request/reply
    /// of a regular probe (not of a confirmation burst).
    pub echo: Option<(u8, u16, u16)>,
    /// An echo request/reply of an agent's confirmation burst (its payload marked so):
    /// extra probes the agent keeps out of its counters, so the log's truth leaves them
    /// out too.
    pub confirm: bool,
}

/// Whether the ICMP(v6) echo in `p` carries a pathpulse confirmation probe's payload:
/// magic `PPv1`, then token and probe id, then the mark `C` (the agent's
/// `matcher::mark_confirm`).
pub fn is_confirm(p: &[u8]) -> bool {
    let l4 = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => p.get(usize::from(p[0] & 0x0f) * 4..),
        Some(6) if p.len() >= 40 => p.get(40..),
        _ => None,
    };
    l4.and_then(|i| i.get(8..))
        .is_some_and(|pl| pl.starts_with(b"PPv1") && pl.get(20) == Some(&b'C'))
}

/// Parse protocol and echo fields of an IP packet.
pub fn classify(p: &[u8]) -> (u8, Option<(u8, u16, u16)>) {
    let (proto, l4) = match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            (p[9], p.get(ihl..))
        }
        Some(6) if p.len() >= 40 => (p[6], p.get(40..)),
        _ => (0, None),
    };
    let echo = match (proto, l4) {
        (1, Some(i)) if i.len() >= 8 && (i[0] == 0 || i[0] == 8) => Some((
            i[0],
            u16::from_be_bytes([i[4], i[5]]),
            u16::from_be_bytes([i[6], i[7]]),
        )),
        (58, Some(i)) if i.len() >= 8 && (i[0] == 128 || i[0] == 129) => Some((
            i[0],
            u16::from_be_bytes([i[4], i[5]]),
            u16::from_be_bytes([i[6], i[7]]),
        )),
        _ => None,
    };
    (proto, echo)
}

struct Pending {
    due: Instant,
    seq: u64,
    record: usize,
    packet: Arc<Vec<u8>>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

struct Queue {
    heap: Mutex<BinaryHeap<Reverse<Pending>>>,
    cv: Condvar,
}

struct Shared {
    start: Instant,
    stop: AtomicBool,
    log: Mutex<Vec<Record>>,
    dirs: [Mutex<Direction>; 2],
    queues: [Queue; 2],
    seq: AtomicU64,
}

/// A running emulator. Dropping it stops the threads.
pub struct Emulator {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    pub names: (String, String),
}

fn idx(d: Dir) -> usize {
    match d {
        Dir::Ab => 0,
        Dir::Ba => 1,
    }
}

impl Emulator {
    /// Create the two TUN devices `names.0` and `names.1` (in the caller's namespace; move
    /// them with `ip link set NAME netns NS` afterwards) and start forwarding.
    pub fn start(
        names: (&str, &str),
        ab: Impairment,
        ba: Impairment,
        seed: u64,
    ) -> std::io::Result<Emulator> {
        let a = Arc::new(
            DeviceBuilder::new()
                .name(names.0)
                .packet_information(false)
                .build_sync()?,
        );
        let b = Arc::new(
            DeviceBuilder::new()
                .name(names.1)
                .packet_information(false)
                .build_sync()?,
        );
        let shared = Arc::new(Shared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            dirs: [
                Mutex::new(Direction::new(ab, seed)),
                Mutex::new(Direction::new(ba, seed ^ 0x9e37_79b9_7f4a_7c15)),
            ],
            queues: [
                Queue {
                    heap: Mutex::new(BinaryHeap::new()),
                    cv: Condvar::new(),
                },
                Queue {
                    heap: Mutex::new(BinaryHeap::new()),
                    cv: Condvar::new(),
                },
            ],
            seq: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for (dir, from, to) in [
            (Dir::Ab, a.clone(), b.clone()),
            (Dir::Ba, b.clone(), a.clone()),
        ] {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("emu-read-{dir:?}"))
                    .spawn(move || reader(s, dir, from))?,
            );
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("emu-send-{dir:?}"))
                    .spawn(move || sender(s, dir, to))?,
            );
        }
        Ok(Emulator {
            shared,
            threads,
            names: (names.0.to_string(), names.1.to_string()),
        })
    }

    /// Change a direction's impairment while running.
    pub fn set(&self, dir: Dir, imp: Impairment) {
        self.shared.dirs[idx(dir)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .imp = imp;
    }

    /// Nanoseconds since the emulator started (the log's clock).
    pub fn now_ns(&self) -> u64 {
        self.shared.start.elapsed().as_nanos() as u64
    }

    /// A copy of the log so far.
    pub fn log(&self) -> Vec<Record> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for q in &self.shared.queues {
            q.cv.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run the calling thread at real-time priority (SCHED_FIFO), as a link is never
/// descheduled: the emulator's reader must wake the moment a packet arrives (its wake-up
/// delay is invisible to the log and would look like prober error), and its senders must
/// depart on time even when the probers and the rest of the machine keep both cores busy.
/// Needs root or CAP_SYS_NICE; without it the emulator runs, less exactly, and says so.
fn realtime(what: &str) {
    let param = nix::libc::sched_param { sched_priority: 50 };
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread; `param` is a
    // valid, initialized sched_param that outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_FIFO, &param) };
    if rc != 0 {
        eprintln!(
            "linkemu: {what} stays at normal priority ({}); its timing is less exact",
            std::io::Error::last_os_error()
        );
    }
}

fn reader(s: Arc<Shared>, dir: Dir, dev: Arc<SyncDevice>) {
    realtime("reader");
    let mut buf = vec![0u8; 65536];
    while !s.stop.load(Ordering::Relaxed) {
        // Wait for a packet at most 50 ms so a stop is noticed.
        let mut pfd = [nix::poll::PollFd::new(
            dev.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(50u8)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                eprintln!("linkemu: poll on {dir:?} failed ({e}); this direction stops");
                return;
            }
        }
        let gone = nix::poll::PollFlags::POLLERR
            | nix::poll::PollFlags::POLLHUP
            | nix::poll::PollFlags::POLLNVAL;
        if pfd[0].revents().is_some_and(|r| r.intersects(gone)) {
            // The device went away (its namespace was deleted): stop instead of spinning.
            eprintln!("linkemu: device of {dir:?} is gone; this direction stops");
            return;
        }
        let n = match dev.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue;
            }
            Err(e) => {
                eprintln!("linkemu: reading {dir:?} failed ({e}); this direction stops");
                return;
            }
        };
        let now = Instant::now();
        let since = now - s.start;
        let packet = Arc::new(buf[..n].to_vec());
        let decision = s.dirs[idx(dir)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .decide(since, n);
        let (proto, echo) = classify(&packet);
        let confirm = echo.is_some() && is_confirm(&packet);
        let echo = echo.filter(|_| !confirm);
        let record = {
            let mut log = s.log.lock().unwrap_or_else(|e| e.into_inner());
            log.push(Record {
                dir,
                arrive_ns: since.as_nanos() as u64,
                depart_ns: Vec::new(),
                dropped: decision.dropped,
                reordered: decision.reordered,
                proto,
                echo,
                confirm,
            });
            log.len() - 1
        };
        if decision.dropped {
            continue;
        }
        let q = &s.queues[idx(dir)];
        let mut heap = q.heap.lock().unwrap_or_else(|e| e.into_inner());
        for d in decision.delays {
            let seq = s.seq.fetch_add(1, Ordering::Relaxed);
            heap.push(Reverse(Pending {
                due: now + d,
                seq,
                record,
                packet: packet.clone(),
            }));
        }
        q.cv.notify_one();
    }
}

/// Sleep until shortly before `due`, then spin. The sender threads run with a timer slack
/// of 1 ns (see `sender`), so a sleep ends within a few microseconds of its deadline and
/// the spin stays short: on a 2-core machine a long spin steals the core that the reader
/// threads (whose wake-up delay is the emulator's own error) and the probers need.
fn wait_until(due: Instant) {
    const SPIN: Duration = Duration::from_micros(25);
    loop {
        let now = Instant::now();
        if now >= due {
            return;
        }
        let left = due - now;
        if left > SPIN {
            std::thread::sleep(left - SPIN);
        } else {
            std::hint::spin_loop();
        }
    }
}

fn sender(s: Arc<Shared>, dir: Dir, dev: Arc<SyncDevice>) {
    realtime("sender");
    // Default timer slack is 50 µs: sleeps would end up to 50 µs late.
    if let Err(e) = nix::sys::prctl::set_timerslack(1) {
        eprintln!("linkemu: timer slack stays at its default ({e}); departures may be late");
    }
    let q = &s.queues[idx(dir)];
    loop {
        let next = {
            let mut heap = q.heap.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                match heap.peek() {
                    None => {
                        heap =
                            q.cv.wait_timeout(heap, Duration::from_millis(50))
                                .map(|r| r.0)
                                .unwrap_or_else(|e| e.into_inner().0)
                    }
                    Some(Reverse(p)) => {
                        let now = Instant::now();
                        if p.due <= now + Duration::from_millis(1) {
                            break heap.pop().map(|Reverse(p)| p);
                        }
                        let wait = p.due - now - Duration::from_millis(1);
                        heap =
                            q.cv.wait_timeout(heap, wait)
                                .map(|r| r.0)
                                .unwrap_or_else(|e| e.into_inner().0);
                    }
                }
            }
        };
        let Some(p) = next else { continue };
        wait_until(p.due);
        let _ = dev.send(&p.packet);
        let t = (Instant::now() - s.start).as_nanos() as u64;
        if let Some(r) = s
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(p.record)
        {
            r.depart_ns.push(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_echo_packets() {
        let mut v4 = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        v4.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0x00, 0x07]);
        assert_eq!(classify(&v4), (1, Some((8, 0x1234, 7))));
        let mut udp = v4.clone();
        udp[9] = 17;
        assert_eq!(classify(&udp), (17, None));
        assert_eq!(classify(&[0xff; 3]), (0, None));
        // A regular probe's payload, and a confirmation probe's (marked after the header).
        let mut probe = v4.clone();
        probe.extend_from_slice(b"PPv1");
        probe.extend_from_slice(&[0; 16]);
        probe.extend_from_slice(&[0; 36]);
        assert!(!is_confirm(&probe));
        probe[28 + 20] = b'C';
        assert!(is_confirm(&probe));
        assert!(!is_confirm(&v4), "no payload");
    }
}
