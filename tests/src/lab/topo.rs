//! Lab topologies: several namespaces joined by links, each link a veth pair or an emulated
//! link (the TUN emulator, with its impairments and its log), with forwarding and static
//! routes computed from the graph, so any node reaches any address of any other node and
//! routers answer TTL-limited probes with Time Exceeded like real ones.
//!
//! Two shapes are ready-made (LAB.md): [`Topo::mesh`], endpoints joined through a `core`
//! router, and [`Topo::isp_chain`], `home` → `cpe` → `isp` → `transit` → `anchor`.

use std::collections::{BTreeMap, VecDeque};

use super::emu::{Dir, Emulator};
use super::impair::Impairment;
use super::netns::{Netns, ip, unique};

/// One link of a topology to build.
#[derive(Clone)]
pub struct LinkSpec {
    pub a: String,
    pub b: String,
    /// First three octets of the link's /24: `a` gets `.1`, `b` gets `.2`.
    pub subnet: String,
    /// `Some((a→b, b→a))`: an emulated link with these impairments; `None`: a veth pair.
    pub emulate: Option<(Impairment, Impairment)>,
}

impl LinkSpec {
    pub fn veth(a: &str, b: &str, subnet: &str) -> LinkSpec {
        LinkSpec {
            a: a.into(),
            b: b.into(),
            subnet: subnet.into(),
            emulate: None,
        }
    }

    pub fn emulated(a: &str, b: &str, subnet: &str, ab: Impairment, ba: Impairment) -> LinkSpec {
        LinkSpec {
            emulate: Some((ab, ba)),
            ..LinkSpec::veth(a, b, subnet)
        }
    }
}

/// A built topology. Dropping it stops the emulators, then deletes the namespaces (and with
/// them every device).
pub struct Topo {
    /// Emulators by link (`a`, `b`) as specified; declared first so they stop first.
    emus: BTreeMap<(String, String), Emulator>,
    nodes: BTreeMap<String, Netns>,
    links: Vec<LinkSpec>,
}

impl Topo {
    /// Build the namespaces, links, addresses, forwarding and routes.
    pub fn build(nodes: &[&str], links: &[LinkSpec], seed: u64) -> Topo {
        let mut topo = Topo {
            emus: BTreeMap::new(),
            nodes: nodes
                .iter()
                .map(|n| (n.to_string(), Netns::new(&n[..n.len().min(4)])))
                .collect(),
            links: links.to_vec(),
        };
        for (i, l) in links.iter().enumerate() {
            let (na, nb) = (&topo.nodes[&l.a], &topo.nodes[&l.b]);
            let (da, db) = (unique("la"), unique("lb"));
            match &l.emulate {
                None => ip(&["link", "add", &da, "type", "veth", "peer", "name", &db]),
                Some((ab, ba)) => {
                    let emu = Emulator::start((&da, &db), *ab, *ba, seed.wrapping_add(i as u64))
                        .expect("TUN devices (needs root)");
                    topo.emus.insert((l.a.clone(), l.b.clone()), emu);
                }
            }
            na.adopt(&da, &format!("{}.1/24", l.subnet));
            nb.adopt(&db, &format!("{}.2/24", l.subnet));
        }
        for ns in topo.nodes.values() {
            let (code, out) = ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
            assert_eq!(code, 0, "forwarding in {}: {out}", ns.name);
        }
        for node in nodes {
            for (subnet, via) in topo.routes_of(node) {
                topo.nodes[*node].ip(&["route", "add", &format!("{subnet}.0/24"), "via", &via]);
            }
        }
        topo
    }

    /// `endpoints` namespaces (`e1`, `e2`, ...) each joined to a `core` router by a veth
    /// pair on 10.90.K.0/24 (the endpoint is `.2`), except the links named in `emulated`
    /// (endpoint index from 1, impairment toward the core, impairment from it).
    pub fn mesh(endpoints: usize, emulated: &[(usize, Impairment, Impairment)], seed: u64) -> Topo {
        let names: Vec<String> = (1..=endpoints).map(|i| format!("e{i}")).collect();
        let mut nodes = vec!["core"];
        nodes.extend(names.iter().map(String::as_str));
        let links: Vec<LinkSpec> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let subnet = format!("10.90.{}", i + 1);
                match emulated.iter().find(|(k, ..)| *k == i + 1) {
                    // Direction `Ab` of the emulator is core → endpoint.
                    Some((_, up, down)) => LinkSpec::emulated("core", n, &subnet, *down, *up),
                    None => LinkSpec::veth("core", n, &subnet),
                }
            })
            .collect();
        Topo::build(&nodes, &links, seed)
    }

    /// The ISP path of LAB.md: `home` (an endpoint on a private LAN) → `cpe` (its router) →
    /// `isp` (the ISP edge) → `transit` → `anchor`, on 192.168.1/24, 203.0.113/24,
    /// 198.51.100/24 and 192.0.2/24. `emulated` puts the emulator on links, each named by
    /// its nearer-to-home node (`"home"`, `"cpe"`, `"isp"`, `"transit"`), with the
    /// impairments toward the anchor and back.
    pub fn isp_chain(emulated: &[(&str, Impairment, Impairment)], seed: u64) -> Topo {
        let hops = [
            ("home", "cpe", "192.168.1"),
            ("cpe", "isp", "203.0.113"),
            ("isp", "transit", "198.51.100"),
            ("transit", "anchor", "192.0.2"),
        ];
        let links: Vec<LinkSpec> = hops
            .iter()
            .map(|(a, b, s)| match emulated.iter().find(|(at, ..)| at == a) {
                Some((_, up, down)) => LinkSpec::emulated(a, b, s, *up, *down),
                None => LinkSpec::veth(a, b, s),
            })
            .collect();
        let topo = Topo::build(&["home", "cpe", "isp", "transit", "anchor"], &links, seed);
        // The home's default gateway is its CPE, as on a real LAN.
        let cpe = topo.addr("cpe", "home");
        topo.ns("home")
            .ip(&["route", "add", "default", "via", &cpe]);
        topo
    }

    pub fn ns(&self, node: &str) -> &Netns {
        &self.nodes[node]
    }

    /// `node`'s address on its link to `peer`.
    pub fn addr(&self, node: &str, peer: &str) -> String {
        let l = self
            .links
            .iter()
            .find(|l| (l.a == node && l.b == peer) || (l.b == node && l.a == peer))
            .unwrap_or_else(|| panic!("no link {node} - {peer}"));
        let host = if l.a == node { 1 } else { 2 };
        format!("{}.{host}", l.subnet)
    }

    /// The emulator on the link between `a` and `b`, and the direction that carries
    /// packets from `a` to `b`.
    pub fn emu(&self, a: &str, b: &str) -> Option<(&Emulator, Dir)> {
        let key = (a.to_string(), b.to_string());
        if let Some(e) = self.emus.get(&key) {
            return Some((e, Dir::Ab));
        }
        self.emus
            .get(&(b.to_string(), a.to_string()))
            .map(|e| (e, Dir::Ba))
    }

    fn neighbours(&self, node: &str) -> Vec<(&str, &LinkSpec)> {
        self.links
            .iter()
            .filter_map(|l| {
                if l.a == node {
                    Some((l.b.as_str(), l))
                } else if l.b == node {
                    Some((l.a.as_str(), l))
                } else {
                    None
                }
            })
            .collect()
    }

    /// Static routes of `node`: every subnet it is not on, via the neighbour that starts a
    /// shortest path toward it (breadth-first over the links).
    fn routes_of(&self, node: &str) -> Vec<(String, String)> {
        // First hop (neighbour) toward every node.
        let mut first: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = VecDeque::new();
        for (n, _) in self.neighbours(node) {
            if first.insert(n, n).is_none() {
                queue.push_back(n);
            }
        }
        while let Some(cur) = queue.pop_front() {
            let via = first[cur];
            for (n, _) in self.neighbours(cur) {
                if n != node && !first.contains_key(n) {
                    first.insert(n, via);
                    queue.push_back(n);
                }
            }
        }
        let mut routes = Vec::new();
        for l in &self.links {
            if l.a == node || l.b == node {
                continue;
            }
            // Toward whichever end of the link is reached first (both have a first hop).
            let Some(hop) = first.get(l.a.as_str()).or_else(|| first.get(l.b.as_str())) else {
                continue;
            };
            routes.push((l.subnet.clone(), self.addr(hop, node)));
        }
        routes
    }
}
