//! pathpulse-linkemu: the lab's link emulator as a program. Creates two TUN devices, moves
//! them into two existing network namespaces with the given addresses, forwards packets
//! with the configured impairment per direction (changing by phase), and on SIGINT/SIGTERM
//! writes the per-packet log as JSON lines.
//!
//!   pathpulse-linkemu --ns-a A --addr-a 10.77.0.1/24 --ns-b B --addr-b 10.77.0.2/24 \
//!       --config impair.toml --log truth.jsonl --seed 1
//!
//! impair.toml:
//!   [ab]                      # from A to B
//!   delay = { kind = "uniform", mean_ms = 20.0, spread_ms = 5.0 }
//!   [ba]
//!   delay = { kind = "constant", ms = 20.0 }
//!   [[phase]]                 # from t = 10 s on
//!   at = "10s"
//!   ab = { loss = { kind = "bernoulli", p = 0.2 } }

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use pathpulse_tests::lab::emu::{Dir, Emulator};
use pathpulse_tests::lab::impair::Impairment;
use pathpulse_tests::lab::netns::{ip, unique};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    ab: Impairment,
    #[serde(default)]
    ba: Impairment,
    #[serde(default)]
    phase: Vec<Phase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Phase {
    at: String,
    ab: Option<Impairment>,
    ba: Option<Impairment>,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let need = |n: &str| {
        arg(&args, n)
            .with_context(|| format!("missing {n} (see the comment at the top of the source)"))
    };
    let (ns_a, ns_b, addr_a, addr_b) = (
        need("--ns-a")?,
        need("--ns-b")?,
        need("--addr-a")?,
        need("--addr-b")?,
    );
    let cfg: Config = match arg(&args, "--config") {
        Some(p) => toml::from_str(&std::fs::read_to_string(&p).with_context(|| p.clone())?)
            .with_context(|| p.clone())?,
        None => Config::default(),
    };
    let mut phases = Vec::new();
    for p in cfg.phase {
        let at =
            humantime::parse_duration(&p.at).with_context(|| format!("phase at `{}`", p.at))?;
        phases.push((at, p.ab, p.ba));
    }
    phases.sort_by_key(|p| p.0);
    // Block SIGINT and SIGTERM in every thread (threads inherit the mask) and take them
    // with sigwait in one, so a signal ends the loop below and the log gets written.
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.thread_block()?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        if signals.wait().is_ok() {
            s.store(true, Ordering::SeqCst);
        }
    });
    let seed = arg(&args, "--seed")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1);
    let (ta, tb) = (unique("ea"), unique("eb"));
    let mut emu = Emulator::start((&ta, &tb), cfg.ab, cfg.ba, seed)
        .context("creating TUN devices (root needed)")?;
    for (dev, ns, addr) in [(&ta, &ns_a, &addr_a), (&tb, &ns_b, &addr_b)] {
        ip(&["link", "set", dev, "netns", ns]);
        ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }
    eprintln!(
        "linkemu: {ta} in {ns_a} ({addr_a}) <-> {tb} in {ns_b} ({addr_b}); Ctrl-C writes the log"
    );
    let start = Instant::now();
    let mut next = 0;
    while !stop.load(Ordering::SeqCst) {
        while next < phases.len() && start.elapsed() >= phases[next].0 {
            if let Some(i) = phases[next].1 {
                emu.set(Dir::Ab, i);
            }
            if let Some(i) = phases[next].2 {
                emu.set(Dir::Ba, i);
            }
            eprintln!("linkemu: phase {} at {:?}", next + 1, phases[next].0);
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    emu.stop();
    let log = emu.log();
    if let Some(path) = arg(&args, "--log") {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| path.clone())?);
        for r in &log {
            serde_json::to_writer(&mut f, r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
        eprintln!("linkemu: {} packets logged to {path}", log.len());
    }
    Ok(())
}
