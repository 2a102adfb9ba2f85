//! The in-memory network between simulated gateways: it implements
//! gantry's `Transport` and delivers each call to the target gateway's
//! `ClusterHandlers` (the same decode/execute code tonic runs), after a
//! seeded delay, through per-link faults: partitions (either direction),
//! loss and latency. A lost request or reply costs the caller a timeout, as
//! a dropped packet would; a lost reply leaves the call's effect unknown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gantry::api::cluster_service::{Caller, ClusterHandlers};
use gantry::cluster::transport::{RaftRpc, Transport, TransportError};
use gantry::cluster::NodeId;
use gantry_proto::v1::{HeartbeatReply, HeartbeatRequest, RaftMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::AbortHandle;

/// What a lost packet costs: the connect timeout of the real channels.
pub const LOST_AFTER: Duration = Duration::from_millis(1000);

/// One direction of one link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    pub cut: bool,
    /// Probability that a message is dropped.
    pub loss: f64,
    /// One-way latency, uniform in [min, max] ms.
    pub delay_ms: (u64, u64),
}

impl Default for Link {
    fn default() -> Self {
        Self {
            cut: false,
            loss: 0.0,
            delay_ms: (1, 3),
        }
    }
}

/// A gateway's current daemon, reachable on the network.
struct Endpoint {
    incarnation: u64,
    handlers: ClusterHandlers,
    /// Handler tasks in flight: a crash aborts them.
    running: Vec<AbortHandle>,
}

struct State {
    links: BTreeMap<(NodeId, NodeId), Link>,
    endpoints: BTreeMap<NodeId, Endpoint>,
    /// Hosts without power: connections to them time out instead of
    /// being refused.
    dark: std::collections::BTreeSet<NodeId>,
    rng: StdRng,
}

/// The network.
#[derive(Clone)]
pub struct Net {
    state: Arc<Mutex<State>>,
}

enum Fate {
    Cut,
    Lost,
    After(Duration),
}

impl Net {
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                links: BTreeMap::new(),
                endpoints: BTreeMap::new(),
                dark: Default::default(),
                rng: StdRng::seed_from_u64(seed),
            })),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The link from `from` to `to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> Link {
        self.with(|s| s.links.get(&(from, to)).copied().unwrap_or_default())
    }

    pub fn set_link(&self, from: NodeId, to: NodeId, link: Link) {
        self.with(|s| {
            if link == Link::default() {
                s.links.remove(&(from, to));
            } else {
                s.links.insert((from, to), link);
            }
        });
    }

    /// Every link back to normal.
    pub fn heal_all(&self) {
        self.with(|s| s.links.clear());
    }

    /// The daemon of `node` (this incarnation) answers calls.
    pub fn attach(&self, node: NodeId, incarnation: u64, handlers: ClusterHandlers) {
        self.with(|s| {
            s.dark.remove(&node);
            s.endpoints.insert(
                node,
                Endpoint {
                    incarnation,
                    handlers,
                    running: Vec::new(),
                },
            );
        });
    }

    /// The daemon of `node` died: calls in flight to it break, new ones are
    /// refused (or time out when `dark`: the machine has no power).
    pub fn detach(&self, node: NodeId, dark: bool) {
        let running = self.with(|s| {
            if dark {
                s.dark.insert(node);
            }
            s.endpoints
                .remove(&node)
                .map(|e| e.running)
                .unwrap_or_default()
        });
        for task in running {
            task.abort();
        }
    }

    fn alive(&self, node: NodeId, incarnation: u64) -> bool {
        self.with(|s| {
            s.endpoints
                .get(&node)
                .is_some_and(|e| e.incarnation == incarnation)
        })
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        self.with(|s| {
            let link = s.links.get(&(from, to)).copied().unwrap_or_default();
            if link.cut {
                return Fate::Cut;
            }
            if link.loss > 0.0 && s.rng.random_bool(link.loss.min(1.0)) {
                return Fate::Lost;
            }
            let (lo, hi) = link.delay_ms;
            let ms = if hi > lo {
                s.rng.random_range(lo..=hi)
            } else {
                lo
            };
            Fate::After(Duration::from_millis(ms))
        })
    }

    /// Sends one call from `from` (incarnation `incarnation`) to `to` and
    /// brings back its reply through the network.
    async fn call<T, F, Fut>(
        &self,
        from: NodeId,
        incarnation: u64,
        to: NodeId,
        handle: F,
    ) -> Result<T, TransportError>
    where
        T: Send + 'static,
        F: FnOnce(ClusterHandlers) -> Fut,
        Fut: std::future::Future<Output = Result<T, TransportError>> + Send + 'static,
    {
        if !self.alive(from, incarnation) {
            return Err(TransportError::Unreachable(
                "the sender is not running".into(),
            ));
        }
        match self.fate(from, to) {
            Fate::Cut => {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(TransportError::Unreachable(
                    "connect timed out (partition)".into(),
                ));
            }
            Fate::Lost => {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(TransportError::Failed("timed out (request lost)".into()));
            }
            Fate::After(delay) => tokio::time::sleep(delay).await,
        }
        let handlers = self.with(|s| {
            if s.dark.contains(&to) {
                return Err(true);
            }
            s.endpoints
                .get(&to)
                .map(|e| e.handlers.clone())
                .ok_or(false)
        });
        let handlers = match handlers {
            Ok(h) => h,
            Err(true) => {
                tokio::time::sleep(LOST_AFTER).await;
                return Err(TransportError::Unreachable(
                    "connect timed out (no power)".into(),
                ));
            }
            Err(false) => return Err(TransportError::Unreachable("connection refused".into())),
        };
        // The handler runs as the server's task: a caller that gives up does
        // not cancel it, a crash of the server does.
        let task = tokio::spawn(handle(handlers));
        self.with(|s| {
            if let Some(e) = s.endpoints.get_mut(&to) {
                e.running.retain(|t| !t.is_finished());
                e.running.push(task.abort_handle());
            }
        });
        let reply = match task.await {
            Ok(reply) => reply,
            Err(_) => return Err(TransportError::Failed("connection reset".into())),
        };
        match self.fate(to, from) {
            Fate::Cut | Fate::Lost => {
                tokio::time::sleep(LOST_AFTER).await;
                Err(TransportError::Failed("timed out (reply lost)".into()))
            }
            Fate::After(delay) => {
                tokio::time::sleep(delay).await;
                if !self.alive(from, incarnation) {
                    return Err(TransportError::Unreachable(
                        "the sender is not running".into(),
                    ));
                }
                reply
            }
        }
    }
}

/// One daemon's client side of the network. The simulation hands it to
/// the daemon of `node`; that identity is what its heartbeats are
/// authenticated as (`Caller::in_process`), as a TLS certificate would be.
pub struct SimTransport {
    pub net: Net,
    pub node: NodeId,
    pub incarnation: u64,
}

/// Addresses are `sim://gw<N>`; the membership knows them.
pub fn node_of(addr: &str) -> Option<NodeId> {
    addr.strip_prefix("sim://gw")?.parse().ok()
}

pub fn addr_of(node: NodeId) -> String {
    format!("sim://gw{node}")
}

fn status(e: tonic::Status) -> TransportError {
    TransportError::Failed(e.message().to_string())
}

#[async_trait]
impl Transport for SimTransport {
    async fn raft(
        &self,
        target: NodeId,
        _addr: &str,
        rpc: RaftRpc,
        message: RaftMessage,
    ) -> Result<RaftMessage, TransportError> {
        self.net
            .call(self.node, self.incarnation, target, move |h| async move {
                let reply = match rpc {
                    RaftRpc::Vote => h.vote(&message).await,
                    RaftRpc::Append => h.append_entries(&message).await,
                    RaftRpc::Snapshot => h.install_snapshot(&message).await,
                    RaftRpc::Forward => h.forward(&message).await,
                };
                reply.map_err(status)
            })
            .await
    }

    async fn heartbeat(
        &self,
        target: NodeId,
        _addr: &str,
        request: HeartbeatRequest,
    ) -> Result<HeartbeatReply, TransportError> {
        let caller = Caller::in_process(self.node);
        self.net
            .call(self.node, self.incarnation, target, move |h| async move {
                h.heartbeat(caller, request).map_err(status)
            })
            .await
    }
}
