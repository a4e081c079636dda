//! Mesh membership: the aggregator as the controller (Pingmesh-style). Agents become
//! members with their hello; agents of protocol 3 join (how they are reached, their
//! STAMP port) and get their peer list ([`policy`]) on a stream the aggregator opens, at
//! join and after every change. A member disconnected for longer than `leave_after`
//! leaves: it drops out of every list and its paths, from it and toward it, are removed
//! from the store (and swept again for a while, for reports still on their way).

pub mod config;
pub mod policy;
pub mod table;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use pathpulse_metrics::SharedStore;
use pathpulse_metrics::export::wall_clock_ms;
use pathpulse_wire::{Join, ServerMsg, frame};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::{MeshConfig, MeshFile};
use table::{HelloInfo, Table};

/// After a member left, its paths are swept this long (a report of another agent made
/// before that agent saw the new list may bring one back).
const SWEEP_FOR_MS: u64 = 5 * 60 * 1000;

#[derive(Debug)]
pub struct Mesh {
    cfg: MeshConfig,
    table: Mutex<Table>,
    /// The table's epoch: every push task wakes when it moves.
    epoch: watch::Sender<u64>,
    store: SharedStore,
    /// Members that left: name → when (ms since the epoch).
    departed: Mutex<BTreeMap<String, u64>>,
    /// Connections with a push task (one peer stream per connection, however many joins).
    pushing: Mutex<std::collections::BTreeSet<usize>>,
}

impl Mesh {
    pub fn new(cfg: MeshConfig, store: SharedStore) -> Arc<Mesh> {
        Arc::new(Mesh {
            cfg,
            table: Mutex::new(Table::default()),
            epoch: watch::channel(0).0,
            store,
            departed: Mutex::new(BTreeMap::new()),
            pushing: Mutex::new(Default::default()),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, changed: bool, why: &str, agent: &str) {
        if changed {
            let (epoch, members) = {
                let t = self.table();
                (t.epoch(), t.members().len())
            };
            tracing::info!(%agent, epoch, members, "membership changed: {why}");
            self.epoch.send_replace(epoch);
        }
    }

    /// An agent said hello on connection `conn` (seen coming from `seen`).
    pub fn hello(
        &self,
        agent: &str,
        site: Option<String>,
        isp: Option<String>,
        seen: IpAddr,
        conn: usize,
    ) {
        let changed = self
            .table()
            .hello(agent, HelloInfo { site, isp, seen }, conn);
        self.departed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(agent);
        self.publish(changed, "agent connected", agent);
    }

    /// An agent joined on `conn`: record how it is reached and start pushing its peer
    /// list. False when the join is not after a hello of this connection.
    pub fn join(
        self: &Arc<Self>,
        agent: &str,
        conn: &quinn::Connection,
        j: Join,
        version: u16,
    ) -> bool {
        let r = self
            .table()
            .join(agent, conn.stable_id(), j.advertise, j.stamp_port);
        let Some(changed) = r else { return false };
        self.publish(changed, "agent joined", agent);
        let id = conn.stable_id();
        let first = self
            .pushing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        if first {
            let (mesh, agent, conn) = (self.clone(), agent.to_string(), conn.clone());
            tokio::spawn(async move {
                mesh.clone().push(agent, conn, version).await;
                mesh.pushing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            });
        }
        true
    }

    /// A connection of `agent` ended.
    pub fn disconnected(&self, agent: &str, conn: usize) {
        self.table().disconnected(agent, conn, wall_clock_ms());
    }

    /// Send `agent` its peer list on a stream of its own, again after every change, in
    /// the protocol version of its join (3 or later: version 2 has no join).
    async fn push(self: Arc<Self>, agent: String, conn: quinn::Connection, version: u16) {
        let mut epochs = self.epoch.subscribe();
        let mut send = match conn.open_uni().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%agent, error = %e, "cannot open the peer stream");
                return;
            }
        };
        let mut last = None;
        loop {
            let (epoch, peers) = {
                let t = self.table();
                (t.epoch(), t.peers_of(&agent, self.cfg.peers_per_site))
            };
            if last.as_ref() != Some(&peers) {
                let n = peers.len();
                let msg = ServerMsg::Peers {
                    epoch,
                    peers: peers.clone(),
                };
                if let Err(e) = frame::write_as(&mut send, &msg, version).await {
                    tracing::debug!(%agent, error = %e, "peer stream closed");
                    return;
                }
                tracing::debug!(%agent, epoch, peers = n, "peer list sent");
                last = Some(peers);
            }
            tokio::select! {
                r = epochs.changed() => if r.is_err() { return },
                _ = conn.closed() => return,
            }
        }
    }

    /// Let members whose grace period is over leave, and sweep departed members' paths.
    pub fn tick(&self, now_ms: u64) {
        let gone = self
            .table()
            .expire(now_ms, self.cfg.leave_after.as_millis() as u64);
        let mut departed = self.departed.lock().unwrap_or_else(|e| e.into_inner());
        for g in &gone {
            departed.insert(g.clone(), now_ms);
        }
        departed.retain(|_, at| now_ms.saturating_sub(*at) <= SWEEP_FOR_MS);
        if !departed.is_empty() {
            let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            for (name, at) in departed.iter() {
                let n = store.remove_paths_of(name);
                if n > 0 {
                    tracing::info!(agent = %name, paths = n, left_ms_ago = now_ms - at, "paths of a departed member removed");
                }
            }
        }
        drop(departed);
        for g in &gone {
            self.publish(true, "agent left (disconnected past leave_after)", g);
        }
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let every =
            (self.cfg.leave_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.tick(wall_clock_ms()),
            }
        }
    }

    /// `GET /api/members`: the membership table and every member's peer list.
    pub fn routes(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/api/members", get(members))
            .with_state(self)
    }
}

#[derive(Debug, Serialize)]
struct Members {
    enabled: bool,
    epoch: u64,
    /// `null`: full mesh.
    peers_per_site: Option<usize>,
    leave_after_ms: u64,
    members: Vec<MemberView>,
}

#[derive(Debug, Serialize)]
struct MemberView {
    name: String,
    site: Option<String>,
    isp: Option<String>,
    addrs: Vec<String>,
    stamp_port: Option<u16>,
    /// It takes peer lists (protocol 3).
    joined: bool,
    /// `connected`, or `away` during the grace period.
    state: &'static str,
    away_ms: Option<u64>,
    peers: Vec<String>,
}

async fn members(State(mesh): State<Arc<Mesh>>) -> Response {
    let body = serde_json::to_string(&mesh.view()).unwrap_or_default();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

impl Mesh {
    fn view(&self) -> Members {
        let now = wall_clock_ms();
        let mesh = self;
        let t = mesh.table();
        let all = t.all_peers(mesh.cfg.peers_per_site);
        let members = t
            .members()
            .iter()
            .map(|(n, m)| MemberView {
                name: n.clone(),
                site: m.site.clone(),
                isp: m.isp.clone(),
                addrs: m.addrs().iter().map(IpAddr::to_string).collect(),
                stamp_port: m.stamp_port,
                joined: m.joined,
                state: if m.conns.is_empty() {
                    "away"
                } else {
                    "connected"
                },
                away_ms: m.away_since_ms.map(|t| now.saturating_sub(t)),
                peers: all
                    .get(n.as_str())
                    .map(|p| p.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
            })
            .collect();
        Members {
            enabled: mesh.cfg.enabled,
            epoch: t.epoch(),
            peers_per_site: mesh.cfg.peers_per_site,
            leave_after_ms: mesh.cfg.leave_after.as_millis() as u64,
            members,
        }
    }
}
