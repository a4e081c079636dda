//! Network namespaces for lab tests: created with `ip netns add`, always deleted on drop;
//! commands and real pathpulse binaries run inside them with `ip netns exec`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Proc;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short prefix for this test's names (namespaces, devices: at most 15 chars).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("pp{}{}{}", std::process::id() % 10_000, tag, n)
}

/// Run `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace with `lo` up.
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a);
    }

    /// Run a program inside the namespace to completion: (exit code, stdout + stderr).
    pub fn run(&self, program: &str, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("ip netns exec");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    }

    /// Start a long-running program inside the namespace (killed on drop of the `Proc`).
    pub fn spawn(&self, name: &str, program: &Path, args: &[&str], logdir: &Path) -> Proc {
        let mut a = vec![
            "netns",
            "exec",
            self.name.as_str(),
            program.to_str().expect("utf-8 path"),
        ];
        a.extend_from_slice(args);
        Proc::start(name, Path::new("ip"), &a, logdir)
    }

    /// Run `f` on a thread that entered this namespace: sockets it opens live there (a
    /// listener bound inside stays there when handed back to another thread).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
                f()
            })
            .join()
            .expect("thread in namespace")
        })
    }

    /// Move a device (e.g. a TUN of the emulator) into this namespace, address it, bring it up.
    pub fn adopt(&self, dev: &str, cidr: &str) {
        ip(&["link", "set", dev, "netns", &self.name]);
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its devices; processes in it were killed first
        // by their own `Proc` drops (declare them after the namespace).
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
