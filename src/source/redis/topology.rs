//! Which node a subscriber session talks to (SPEC §15).
//!
//! The subscriber always connects to one named node, resolved here before
//! each session, so the relay knows where its subscription lives:
//!
//! - `redis://` / `rediss://`: the URL's server.
//! - `redis-sentinel://`: the master the Sentinels name now. Each liveness
//!   probe asks them again (and `ROLE` asks the node), so a subscriber left
//!   on a demoted master fails its probe instead of passing it with a
//!   canary published to the same stale node. While the master is
//!   unreachable the retry delay stays short: the next answer may name a
//!   new one.
//! - `redis-cluster://`: any reachable node, since `PUBLISH` is broadcast
//!   to the whole cluster. Nodes are learned from `CLUSTER NODES`; when the
//!   one in use is lost, the next is tried at once, without waiting for the
//!   cluster to promote a replica.
//!
//! fred's own Sentinel and Cluster clients are not used for the
//! subscription: they stay on a stale node after a graceful failover, or
//! wait for the cluster's failover before re-subscribing.

use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::{Config as FredConfig, Server, ServerConfig};
use fred::types::{Builder, ConnectHandle, CustomCommand, Message, Value};
use tokio::sync::broadcast;

use crate::config::RedisConfig;

/// While a Sentinel-managed master cannot be reached, retry at least this
/// often: a failover is decided in seconds, and every try asks again.
const SENTINEL_RETRY_MAX: Duration = Duration::from_millis(500);
/// Broadcast capacity of Sentinel clients: a few announcements at most.
const SENTINEL_CAPACITY: usize = 16;

/// How the configured URL reaches Redis.
#[derive(Debug)]
pub enum Topology {
    /// One server, as the URL says.
    Single,
    /// Ask these Sentinels for the master of `service`.
    Sentinel {
        /// Known Sentinels; the one that answered last is tried first.
        sentinels: Vec<Server>,
        /// The monitored master's name (`sentinelServiceName`).
        service: String,
        /// Credentials for the Sentinels (`sentinelUsername` /
        /// `sentinelPassword`, else the data nodes').
        auth: (Option<String>, Option<String>),
    },
    /// Any node of a cluster.
    Cluster {
        /// Seeds from the URL, then every node `CLUSTER NODES` lists.
        nodes: Vec<Server>,
        /// The node the next session uses.
        next: usize,
        /// Nodes tried since one last worked.
        failed_in_a_row: usize,
    },
}

/// Where one session connects, and how its probe checks that it still
/// should.
pub struct Target {
    /// A single-node config for the chosen node (the URL's own for
    /// [`Topology::Single`]).
    pub config: FredConfig,
    /// The chosen node, for logs.
    pub node: String,
    /// With Sentinel: a connection to a Sentinel, kept for the probes.
    pub check: Option<Check>,
}

impl Topology {
    /// The topology of a parsed URL.
    pub fn of(config: &FredConfig) -> Self {
        match &config.server {
            ServerConfig::Sentinel {
                hosts,
                service_name,
                username,
                password,
            } => Topology::Sentinel {
                sentinels: hosts.clone(),
                service: service_name.clone(),
                auth: (
                    username.clone().or_else(|| config.username.clone()),
                    password.clone().or_else(|| config.password.clone()),
                ),
            },
            ServerConfig::Clustered { hosts, .. } => Topology::Cluster {
                nodes: hosts.clone(),
                next: 0,
                failed_in_a_row: 0,
            },
            _ => Topology::Single,
        }
    }

    /// Picks the node for the next session.
    pub async fn target(
        &mut self,
        base: &FredConfig,
        redis: &RedisConfig,
        timeout: Duration,
    ) -> Result<Target, String> {
        match self {
            Topology::Single => Ok(Target {
                config: base.clone(),
                node: describe_config(base),
                check: None,
            }),
            Topology::Sentinel {
                sentinels,
                service,
                auth,
            } => {
                let mut last = String::from("no sentinel configured");
                for i in 0..sentinels.len() {
                    let sentinel = sentinels[i].clone();
                    match ask_sentinel(base, redis, &sentinel, auth, service, timeout).await {
                        Ok((conn, master)) => {
                            // The one that answered goes first next time.
                            sentinels.swap(0, i);
                            let node = describe(&master);
                            let watch = watch_switches(base, redis, &sentinel, auth, timeout).await;
                            return Ok(Target {
                                config: single_node(base, master.clone()),
                                node,
                                check: Some(Check {
                                    sentinel: conn,
                                    watch,
                                    service: service.clone(),
                                    master,
                                }),
                            });
                        }
                        Err(e) => last = format!("sentinel {}: {e}", describe(&sentinel)),
                    }
                }
                Err(last)
            }
            Topology::Cluster { nodes, next, .. } => {
                let Some(node) = nodes.get(*next % nodes.len().max(1)).cloned() else {
                    return Err("no cluster node configured".into());
                };
                Ok(Target {
                    config: single_node(&cluster_base(base), node.clone()),
                    node: describe(&node),
                    check: None,
                })
            }
        }
    }

    /// A session on the chosen node confirmed its subscription; `listed`
    /// is what that node's `CLUSTER NODES` said (cluster only).
    pub fn worked(&mut self, listed: Option<&str>) {
        if let Topology::Cluster {
            nodes,
            failed_in_a_row,
            ..
        } = self
        {
            *failed_in_a_row = 0;
            for found in listed.map(parse_cluster_nodes).unwrap_or_default() {
                if !nodes.iter().any(|n| same(n, &found)) {
                    nodes.push(found);
                }
            }
        }
    }

    /// The session ended: how long to wait before the next, given the
    /// backoff's proposal.
    pub fn after_loss(&mut self, was_up: bool, backoff: Duration) -> Duration {
        match self {
            Topology::Single => backoff,
            Topology::Sentinel { .. } => backoff.min(SENTINEL_RETRY_MAX),
            Topology::Cluster {
                nodes,
                next,
                failed_in_a_row,
            } => {
                // Move on: the node that failed is the least likely to work.
                *next = (*next + 1) % nodes.len().max(1);
                if was_up {
                    *failed_in_a_row = 0;
                }
                *failed_in_a_row += 1;
                if *failed_in_a_row < nodes.len() {
                    Duration::ZERO
                } else {
                    // Every node failed once: the cluster is down; back off.
                    *failed_in_a_row = 0;
                    backoff
                }
            }
        }
    }

    /// True for a cluster (the session then learns its nodes).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Topology::Cluster { .. })
    }
}

/// A Sentinel connection a session keeps to check, at each probe, that its
/// node is still the master.
pub struct Check {
    sentinel: Conn,
    /// Subscribed to the Sentinel's `+switch-master`, when that worked.
    watch: Option<Watch>,
    service: String,
    master: Server,
}

/// A subscriber connection to a Sentinel.
struct Watch {
    client: SubscriberClient,
    task: ConnectHandle,
}

impl Check {
    /// Err when the Sentinels now name another master, or the node says it
    /// is a replica. A Sentinel that does not answer decides nothing (the
    /// node's `ROLE` still does): Sentinels can be down while Redis is fine.
    pub async fn verify(&self, node: &Client) -> Result<(), String> {
        if let Ok(now) = master_addr(&self.sentinel.client, &self.service).await {
            if !same(&now, &self.master) {
                return Err(format!(
                    "sentinel names {} as master of {} now; {} is stale",
                    describe(&now),
                    self.service,
                    describe(&self.master)
                ));
            }
        }
        let role: Value = node
            .custom(
                CustomCommand::new_static("ROLE", None, false),
                Vec::<Value>::new(),
            )
            .await
            .map_err(|e| format!("ROLE: {}", e.details()))?;
        match role_name(&role).as_deref() {
            Some("master") => Ok(()),
            Some(other) => Err(format!("{} is a {other} now", describe(&self.master))),
            None => Err("ROLE: unexpected reply".into()),
        }
    }

    /// The Sentinel's `+switch-master` announcements, if subscribed.
    pub fn switches(&self) -> Option<broadcast::Receiver<Message>> {
        self.watch.as_ref().map(|w| w.client.message_rx())
    }

    /// Why an announcement means this session is on the wrong node now,
    /// if it does: `<name> <old-ip> <old-port> <new-ip> <new-port>`.
    pub fn moved(&self, msg: &Message) -> Option<String> {
        switch_moves(&msg.value.as_string()?, &self.service, &self.master)
    }

    /// Closes the Sentinel connections (probes may still hold the check).
    pub async fn close(&self) {
        self.sentinel.close().await;
        if let Some(w) = &self.watch {
            let _ = tokio::time::timeout(Duration::from_millis(200), w.client.quit()).await;
            w.task.abort();
        }
    }
}

/// `<name> <old-ip> <old-port> <new-ip> <new-port>` moves `master` of
/// `service` away: why, if so.
fn switch_moves(text: &str, service: &str, master: &Server) -> Option<String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [name, _, _, host, port] = parts[..] else {
        return None;
    };
    let new = Server::new(host, port.parse().ok()?);
    (name == service && !same(&new, master)).then(|| {
        format!(
            "sentinel: +switch-master {service} to {}; {} is stale",
            describe(&new),
            describe(master)
        )
    })
}

/// A client with its connection task, closed together.
struct Conn {
    client: Client,
    task: ConnectHandle,
}

impl Conn {
    async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.client.quit()).await;
        self.task.abort();
    }
}

/// A subscription to `+switch-master` on `sentinel`, so a failover moves the
/// session at once rather than at the next probe. Best effort: without it
/// the probes still catch the switch.
async fn watch_switches(
    base: &FredConfig,
    redis: &RedisConfig,
    sentinel: &Server,
    auth: &(Option<String>, Option<String>),
    timeout: Duration,
) -> Option<Watch> {
    let client = sentinel_builder(base, redis, sentinel, auth, timeout)
        .ok()?
        .build_subscriber_client()
        .ok()?;
    let task = tokio::time::timeout(timeout, client.init())
        .await
        .ok()?
        .ok()?;
    let watch = Watch { client, task };
    match tokio::time::timeout(timeout, watch.client.subscribe("+switch-master")).await {
        Ok(Ok(())) => Some(watch),
        _ => {
            watch.task.abort();
            None
        }
    }
}

/// A client for a Sentinel: the relay's own TLS settings and timeouts
/// ([`super::builder_from`]), no database, the Sentinels' credentials.
fn sentinel_builder(
    base: &FredConfig,
    redis: &RedisConfig,
    sentinel: &Server,
    auth: &(Option<String>, Option<String>),
    timeout: Duration,
) -> Result<Builder, fred::error::Error> {
    let mut config = single_node(base, sentinel.clone());
    config.database = None;
    config.username = auth.0.clone();
    config.password = auth.1.clone();
    super::builder_from(config, redis, timeout, SENTINEL_CAPACITY)
}

async fn ask_sentinel(
    base: &FredConfig,
    redis: &RedisConfig,
    sentinel: &Server,
    auth: &(Option<String>, Option<String>),
    service: &str,
    timeout: Duration,
) -> Result<(Conn, Server), String> {
    let client = sentinel_builder(base, redis, sentinel, auth, timeout)
        .and_then(|b| b.build())
        .map_err(|e| e.details().to_owned())?;
    let task = tokio::time::timeout(timeout, client.init())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.details().to_owned())?;
    let conn = Conn { client, task };
    match master_addr(&conn.client, service).await {
        Ok(master) => Ok((conn, master)),
        Err(e) => {
            conn.close().await;
            Err(e)
        }
    }
}

async fn master_addr(sentinel: &Client, service: &str) -> Result<Server, String> {
    let reply: Value = sentinel
        .custom(
            CustomCommand::new_static("SENTINEL", None, false),
            vec!["get-master-addr-by-name", service],
        )
        .await
        .map_err(|e| e.details().to_owned())?;
    parse_master_addr(&reply).ok_or_else(|| format!("no master named {service:?}"))
}

/// `[host, port]`, as `SENTINEL get-master-addr-by-name` answers.
fn parse_master_addr(reply: &Value) -> Option<Server> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let host = parts.first()?.as_string()?;
    let port = parts.get(1)?.as_string()?.parse().ok()?;
    Some(Server::new(host, port))
}

/// The first element of a `ROLE` reply: `master`, `slave` or `sentinel`.
fn role_name(reply: &Value) -> Option<String> {
    match reply {
        Value::Array(parts) => parts.first().and_then(Value::as_string),
        _ => None,
    }
}

/// `host:port@cport[,hostname]` of each usable line of `CLUSTER NODES`.
fn parse_cluster_nodes(text: &str) -> Vec<Server> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let addr = fields.nth(1)?;
            let flags = fields.next()?;
            if flags.contains("noaddr") || flags.contains("handshake") {
                return None;
            }
            let hostport = addr.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port: u16 = port.parse().ok()?;
            (!host.is_empty() && port != 0).then(|| Server::new(host, port))
        })
        .collect()
}

/// `base` pointed at one node.
fn single_node(base: &FredConfig, node: Server) -> FredConfig {
    let mut config = base.clone();
    config.server = ServerConfig::Centralized { server: node };
    config
}

/// Cluster nodes have only database 0, which needs no `SELECT`.
fn cluster_base(base: &FredConfig) -> FredConfig {
    let mut config = base.clone();
    config.database = None;
    config
}

fn same(a: &Server, b: &Server) -> bool {
    a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

fn describe(s: &Server) -> String {
    if s.host.contains(':') {
        format!("[{}]:{}", s.host, s.port)
    } else {
        format!("{}:{}", s.host, s.port)
    }
}

fn describe_config(c: &FredConfig) -> String {
    match &c.server {
        ServerConfig::Centralized { server } => describe(server),
        _ => "redis".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(host: &str, port: u16) -> Server {
        Server::new(host, port)
    }

    #[test]
    fn urls_pick_their_topology() {
        let c = FredConfig::from_url(
            "redis-sentinel://:pw@127.0.0.1:26379/0?sentinelServiceName=mymaster&node=127.0.0.1:26380",
        )
        .unwrap();
        let Topology::Sentinel {
            sentinels,
            service,
            auth,
        } = Topology::of(&c)
        else {
            panic!("sentinel")
        };
        assert_eq!(service, "mymaster");
        assert_eq!(sentinels.len(), 2);
        assert_eq!(
            auth.1.as_deref(),
            Some("pw"),
            "the data nodes' password by default"
        );
        let c = FredConfig::from_url(
            "redis-sentinel://:pw@h:26379?sentinelServiceName=m&sentinelPassword=spw",
        )
        .unwrap();
        let Topology::Sentinel { auth, .. } = Topology::of(&c) else {
            panic!("sentinel")
        };
        assert_eq!(auth.1.as_deref(), Some("spw"));
        let c = FredConfig::from_url("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001").unwrap();
        assert!(Topology::of(&c).is_cluster());
        let c = FredConfig::from_url("redis://127.0.0.1:6379").unwrap();
        assert!(matches!(Topology::of(&c), Topology::Single));
    }

    #[test]
    fn cluster_nodes_are_parsed_and_learned_once() {
        let text = "\
07c3 127.0.0.1:30004@31004,host4 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f :0@0 master,noaddr - 0 0 0 disconnected
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
aaaa [::1]:30005@31005 master,fail - 0 0 1 disconnected
garbage line
";
        let found = parse_cluster_nodes(text);
        let got: Vec<String> = found.iter().map(describe).collect();
        assert_eq!(
            got,
            [
                "127.0.0.1:30004",
                "127.0.0.1:30002",
                "127.0.0.1:30001",
                "[::1]:30005"
            ]
        );
        let mut t = Topology::Cluster {
            nodes: vec![server("127.0.0.1", 30001)],
            next: 0,
            failed_in_a_row: 0,
        };
        t.worked(Some(text));
        t.worked(Some(text));
        let Topology::Cluster { nodes, .. } = &t else {
            panic!()
        };
        assert_eq!(nodes.len(), 4);
    }

    #[test]
    fn a_lost_cluster_node_is_followed_by_the_next_at_once_until_all_failed() {
        let mut t = Topology::Cluster {
            nodes: vec![server("a", 1), server("b", 2), server("c", 3)],
            next: 0,
            failed_in_a_row: 0,
        };
        let b = Duration::from_secs(1);
        assert_eq!(t.after_loss(true, b), Duration::ZERO);
        assert_eq!(t.after_loss(false, b), Duration::ZERO);
        assert_eq!(t.after_loss(false, b), b, "all three failed: back off");
        assert_eq!(t.after_loss(false, b), Duration::ZERO, "a new round");
        let mut s = Topology::Sentinel {
            sentinels: vec![],
            service: "m".into(),
            auth: (None, None),
        };
        assert_eq!(
            s.after_loss(false, Duration::from_secs(30)),
            SENTINEL_RETRY_MAX
        );
        assert_eq!(
            Topology::Single.after_loss(false, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn switch_announcements() {
        let m = server("127.0.0.1", 6379);
        let why = switch_moves("mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster", &m);
        assert!(why.is_some_and(|w| w.contains("127.0.0.1:6380")));
        assert_eq!(
            switch_moves("other 127.0.0.1 6379 127.0.0.1 6380", "mymaster", &m),
            None
        );
        assert_eq!(
            switch_moves("mymaster 127.0.0.1 6380 127.0.0.1 6379", "mymaster", &m),
            None,
            "to us"
        );
        assert_eq!(switch_moves("mymaster 1 2", "mymaster", &m), None);
        assert_eq!(
            switch_moves("mymaster a b c notaport", "mymaster", &m),
            None
        );
    }

    #[test]
    fn sentinel_and_role_replies() {
        let v = Value::Array(vec!["10.0.0.5".into(), "6380".into()]);
        let s = parse_master_addr(&v).unwrap();
        assert_eq!(describe(&s), "10.0.0.5:6380");
        assert!(parse_master_addr(&Value::Null).is_none());
        assert!(parse_master_addr(&Value::Array(vec!["h".into(), "x".into()])).is_none());
        let role = Value::Array(vec!["slave".into(), "127.0.0.1".into(), 6379.into()]);
        assert_eq!(role_name(&role).as_deref(), Some("slave"));
        assert_eq!(role_name(&Value::Null), None);
    }
}
