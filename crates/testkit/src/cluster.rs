//! A three-master Redis Cluster made of throwaway servers.

use std::time::{Duration, Instant};

use crate::{RESTRICTED_PASSWORD, RESTRICTED_RULES, RESTRICTED_USER, RedisServer};

/// How long the nodes get to agree on `cluster_state:ok`.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);

/// The slot ranges of the three masters.
const SLOT_RANGES: [(u16, u16); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// A Redis Cluster of three masters and no replicas on free loopback ports.
///
/// Each node is a [`RedisServer`] started with `--cluster-enabled yes --cluster-config-file
/// nodes.conf --cluster-node-timeout 2000` (and its cluster bus on a second free port). The
/// masters own slots 0-5460, 5461-10922 and 10923-16383 (`CLUSTER ADDSLOTSRANGE`) and are
/// joined with `CLUSTER MEET`. [`start`](Self::start) returns once every node reports
/// `cluster_state:ok`, knows all three nodes and sees all 16384 slots assigned.
///
/// Dropping the cluster kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the three nodes, assigns the slots, joins them and waits (at most 20 s) until
    /// the cluster is ready on every node.
    ///
    /// # Panics
    ///
    /// If a node does not start (see [`RedisServer::start`]), a cluster command fails, or
    /// the cluster is not ready within 20 s; the message includes each node's
    /// `CLUSTER INFO` and `CLUSTER NODES`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = SLOT_RANGES
            .iter()
            .map(|_| {
                RedisServer::builder()
                    .cluster_enabled(true)
                    .acl_user(RESTRICTED_USER, RESTRICTED_PASSWORD, RESTRICTED_RULES)
                    .start()
            })
            .collect();

        for (node, (first, last)) in nodes.iter().zip(SLOT_RANGES) {
            let reply = node.cli(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]);
            assert_eq!(
                reply.trim(),
                "OK",
                "CLUSTER ADDSLOTSRANGE {first} {last} on port {}",
                node.port()
            );
        }

        let bus_ports: Vec<u16> = nodes
            .iter()
            .map(|node| node.cluster_bus_port().expect("cluster-enabled node"))
            .collect();
        for (node, bus_port) in nodes.iter().zip(&bus_ports).skip(1) {
            let reply = nodes[0].cli(&[
                "CLUSTER",
                "MEET",
                "127.0.0.1",
                &node.port().to_string(),
                &bus_port.to_string(),
            ]);
            assert_eq!(
                reply.trim(),
                "OK",
                "CLUSTER MEET 127.0.0.1 {} {bus_port}",
                node.port()
            );
        }

        let cluster = RedisCluster { nodes };
        cluster.wait_ready(CLUSTER_TIMEOUT);
        cluster
    }

    /// The three nodes, in slot order (the first owns slots 0-5460).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The three nodes, mutably, to [`stop`](RedisServer::stop) or
    /// [`restart`](RedisServer::restart) one of them.
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Each node's URL (`redis://127.0.0.1:PORT/`), in slot order: the seed list for a
    /// cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Each node's URL as the restricted user ([`RESTRICTED_USER`], who may run everything
    /// but `@dangerous` commands, as on [`RedisServer::restricted`]), in slot order.
    pub fn restricted_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.url_for(RESTRICTED_USER, RESTRICTED_PASSWORD))
            .collect()
    }

    /// Waits until every running node reports `cluster_state:ok`, three known nodes and
    /// 16384 assigned slots, e.g. after [`restart`](RedisServer::restart)ing a node.
    ///
    /// # Panics
    ///
    /// If that does not happen within `timeout`.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let infos: Vec<String> = self
                .nodes
                .iter()
                .map(|node| node.cli(&["CLUSTER", "INFO"]))
                .collect();
            if infos.iter().all(|info| is_ready(info)) {
                return;
            }
            if Instant::now() >= deadline {
                let mut report = String::new();
                for (node, info) in self.nodes.iter().zip(&infos) {
                    report.push_str(&format!(
                        "--- node 127.0.0.1:{} ---\n{info}\n{}\n",
                        node.port(),
                        node.cli(&["CLUSTER", "NODES"])
                    ));
                }
                panic!("Redis Cluster was not ready within {timeout:?}\n{report}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether a `CLUSTER INFO` reply shows a complete, healthy three-node cluster.
fn is_ready(info: &str) -> bool {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("cluster_state") == Some("ok")
        && field("cluster_known_nodes") == Some("3")
        && field("cluster_slots_ok") == Some("16384")
}
