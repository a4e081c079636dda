//! The network lab: namespaces, the TUN link emulator and its impairment models.

pub mod emu;
pub mod impair;
pub mod netns;
pub mod topo;

use emu::Emulator;
use impair::Impairment;
use netns::{Netns, unique};

/// Two namespaces joined by an emulated link: `a` has 10.77.0.1, `b` 10.77.0.2 (/24).
pub struct Link {
    pub emu: Emulator,
    pub a: Netns,
    pub b: Netns,
}

pub const ADDR_A: &str = "10.77.0.1";
pub const ADDR_B: &str = "10.77.0.2";

impl Link {
    pub fn new(ab: Impairment, ba: Impairment, seed: u64) -> Link {
        let (a, b) = (Netns::new("a"), Netns::new("b"));
        let (ta, tb) = (unique("ta"), unique("tb"));
        let emu = Emulator::start((&ta, &tb), ab, ba, seed).expect("TUN devices (needs root)");
        a.adopt(&ta, &format!("{ADDR_A}/24"));
        b.adopt(&tb, &format!("{ADDR_B}/24"));
        Link { emu, a, b }
    }
}
