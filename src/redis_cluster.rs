//! A throwaway Redis Cluster for the cluster tests: six `redis-server --cluster-enabled yes`
//! nodes on free loopback ports (three primaries, one replica each, joined by
//! `redis-cli --cluster create`), their `nodes.conf` in a temporary directory, all killed
//! on drop. Without `redis-server` or `redis-cli` it [skips](crate::services::skip).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::services;

/// How long a node may be unreachable before the others mark it failed and its replica takes
/// over: the failover window the tests measure grows with it.
pub const NODE_TIMEOUT_MS: u64 = 2000;

const NODES: usize = 6;

/// Whether `tool --version` runs.
fn runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// A node of the cluster as `CLUSTER NODES` lists it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    /// The primary it replicates, for a replica.
    pub primary_id: Option<String>,
    /// The slot ranges it serves, for a primary (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl NodeInfo {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(first, last)| (first..=last).contains(&slot))
    }
}

/// Six nodes on ports of their own (each with its bus port, +10000, free as well).
pub struct RedisCluster {
    nodes: Mutex<Vec<(u16, Option<Child>)>>,
    dir: PathBuf,
}

/// Every data and bus port this process handed to a node: two clusters starting at once
/// must not pick each other's (a port is only checked free until its node binds it).
static RESERVED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A port `p` with `p` and `p + 10000` free, reserved for this process.
fn free_port_pair() -> u16 {
    let mut reserved = RESERVED.lock().unwrap_or_else(PoisonError::into_inner);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ (u64::from(std::process::id()) << 16);
    let mut state = seed | 1;
    loop {
        // xorshift: spread over 20000..50000, whose bus ports stay below 60000.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let port = 20000 + (state % 30000) as u16;
        if reserved.contains(&port) || reserved.contains(&(port + 10000)) {
            continue;
        }
        let data = TcpListener::bind(("127.0.0.1", port));
        let bus = TcpListener::bind(("127.0.0.1", port + 10000));
        if data.is_ok() && bus.is_ok() {
            reserved.extend([port, port + 10000]);
            return port;
        }
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buffer = [0u8; 64];
    stream.write_all(b"PING\r\n").is_ok() && stream.read(&mut buffer).is_ok_and(|read| read > 0)
}

impl RedisCluster {
    /// A cluster of its own, ready (`cluster_state:ok` on every node), or `None` after a
    /// loud notice when `redis-server` or `redis-cli` is missing.
    pub fn start() -> Option<RedisCluster> {
        if !runs("redis-server") {
            return services::skip("redis-server is not on PATH");
        }
        if !runs("redis-cli") {
            return services::skip("redis-cli is not on PATH");
        }
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "circuitpy-cluster-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let cluster = RedisCluster {
            nodes: Mutex::new(Vec::new()),
            dir,
        };
        let mut ports = Vec::new();
        while ports.len() < NODES {
            // A port another program took since it was checked: the node exits, and another
            // port is tried.
            let port = free_port_pair();
            let mut child = cluster.spawn(port);
            let deadline = Instant::now() + Duration::from_secs(10);
            let up = loop {
                if ping(port) {
                    break true;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break false;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("node {port} did not answer PING");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if up {
                cluster.lock().push((port, Some(child)));
                ports.push(port);
            } else {
                let _ = child.wait();
            }
        }
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(ports.iter().map(|port| format!("127.0.0.1:{port}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster.wait_ok(Duration::from_secs(20));
        cluster.wait_replicas_synced(Duration::from_secs(20));
        Some(cluster)
    }

    fn spawn(&self, port: u16) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts")
    }

    /// A cluster shared by the tests running at the same time (each using keys of its own);
    /// it is killed when the last of them drops it, so no node outlives the test binary.
    pub fn shared() -> Option<Arc<RedisCluster>> {
        static SHARED: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cluster) = shared.upgrade() {
            return Some(cluster);
        }
        let cluster = Arc::new(RedisCluster::start()?);
        *shared = Arc::downgrade(&cluster);
        Some(cluster)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u16, Option<Child>)>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.lock()
            .iter()
            .filter(|(_, child)| child.is_some())
            .map(|&(port, _)| port)
            .collect()
    }

    /// Every node's URL, for a `ClusterClient`'s initial nodes.
    pub fn urls(&self) -> Vec<String> {
        self.lock()
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    /// A client knowing every node, with redis-rs's defaults.
    pub fn client(&self) -> ::redis::cluster::ClusterClient {
        ::redis::cluster::ClusterClient::new(self.urls()).expect("valid URLs")
    }

    /// A plain connection to one node, for looking at it.
    pub fn node(&self, port: u16) -> ::redis::Connection {
        ::redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("the node answers")
    }

    /// `CLUSTER NODES` as a live node sees it.
    pub fn topology(&self) -> Vec<NodeInfo> {
        let port = self.live_ports()[0];
        let text: String = ::redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.node(port))
            .expect("CLUSTER NODES");
        text.lines().filter_map(parse_node).collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        ::redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.node(port))
            .expect("CLUSTER KEYSLOT")
    }

    /// The primary serving `slot`, as a live node sees it.
    pub fn owner(&self, slot: u16) -> NodeInfo {
        self.topology()
            .into_iter()
            .find(|node| node.primary && !node.failed && node.serves(slot))
            .expect("a primary serves every slot")
    }

    /// Kills one node (SIGKILL); its data is gone.
    pub fn kill(&self, port: u16) {
        let mut nodes = self.lock();
        let child = nodes
            .iter_mut()
            .find(|(node, _)| *node == port)
            .and_then(|(_, child)| child.take());
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every live node reports `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for port in self.live_ports() {
            loop {
                let info: Option<String> = ::redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut self.node(port))
                    .ok();
                if info.is_some_and(|info| info.contains("cluster_state:ok")) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {port} never reported cluster_state:ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl RedisCluster {
    /// Waits until every replica has finished its first sync with its primary, so that a
    /// write can reach it (and `WAIT` be answered).
    fn wait_replicas_synced(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let replicas: Vec<u16> = self
                .topology()
                .into_iter()
                .filter(|node| node.primary_id.is_some())
                .map(|node| node.port)
                .collect();
            let synced = replicas.len() == NODES / 2
                && replicas.iter().all(|&port| {
                    ::redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut self.node(port))
                        .is_ok_and(|info| info.contains("master_link_status:up"))
                });
            if synced {
                return;
            }
            assert!(Instant::now() < deadline, "the replicas never synced");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One line of `CLUSTER NODES`: `id ip:port@bus flags primary ping pong epoch link slots...`.
fn parse_node(line: &str) -> Option<NodeInfo> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let port = fields[1]
        .split('@')
        .next()?
        .rsplit(':')
        .next()?
        .parse()
        .ok()?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let slots = fields[8..]
        .iter()
        .filter(|range| !range.starts_with('['))
        .filter_map(|range| match range.split_once('-') {
            Some((first, last)) => Some((first.parse().ok()?, last.parse().ok()?)),
            None => {
                let slot = range.parse().ok()?;
                Some((slot, slot))
            }
        })
        .collect();
    Some(NodeInfo {
        id: fields[0].to_owned(),
        port,
        primary: flags.contains(&"master"),
        failed: flags.contains(&"fail") || flags.contains(&"fail?"),
        primary_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in self.lock().iter_mut() {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
