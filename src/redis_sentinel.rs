//! A throwaway Sentinel setup for the Sentinel tests: a primary and its replica
//! ([`RedisServer`]s) watched by three sentinels as `mymaster`, each sentinel
//! `redis-sentinel` (or `redis-server --sentinel`, the same program) on a free port with its
//! config file in a temporary directory, all killed on drop. Without `redis-server` it
//! [skips](crate::services::skip).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis::RedisServer;
use crate::services;

/// The name the sentinels watch the primary under.
pub const SERVICE: &str = "mymaster";

/// How long the primary may be unreachable before a sentinel thinks it down.
pub const DOWN_AFTER_MS: u64 = 1000;

pub struct SentinelSetup {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(u16, Child)>,
    dir: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `redis-sentinel`, or `redis-server --sentinel` where only the server is installed.
fn sentinel_command(config: &std::path::Path) -> Command {
    let separate = Command::new("redis-sentinel")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if separate {
        let mut command = Command::new("redis-sentinel");
        command.arg(config);
        command
    } else {
        let mut command = Command::new("redis-server");
        command.arg(config).arg("--sentinel");
        command
    }
}

impl SentinelSetup {
    /// A primary, its replica (in sync) and three sentinels that know both, or `None` after a
    /// loud notice when `redis-server` is missing.
    pub fn start() -> Option<SentinelSetup> {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "circuitpy-sentinel-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        // The replica's first sync writes an RDB file into its directory: not the caller's.
        let in_dir = |name: &str| {
            let dir = dir.join(name);
            std::fs::create_dir_all(&dir).expect("a temporary directory");
            dir.to_string_lossy().into_owned()
        };
        let Some(primary) = RedisServer::start_with(&["--dir", &in_dir("primary")]) else {
            let _ = std::fs::remove_dir_all(&dir);
            return None;
        };
        let replica = RedisServer::start_with(&[
            "--dir",
            &in_dir("replica"),
            "--replicaof",
            "127.0.0.1",
            &primary.port().to_string(),
        ])
        .expect("redis-server ran for the primary");
        let mut setup = SentinelSetup {
            primary,
            replica,
            sentinels: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            let port = free_port();
            let config = setup.dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n\
                     sentinel failover-timeout {SERVICE} 10000\n\
                     sentinel parallel-syncs {SERVICE} 1\n",
                    dir = setup.dir.display(),
                    primary = setup.primary.port(),
                ),
            )
            .expect("a sentinel config");
            let child = match sentinel_command(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(child) => child,
                Err(error) => return services::skip(format!("no sentinel could start: {error}")),
            };
            setup.sentinels.push((port, child));
        }
        setup.wait_ready(Duration::from_secs(20));
        Some(setup)
    }

    /// Until the replica is in sync and every sentinel names the primary and knows the
    /// replica (a failover needs one).
    fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let ready = || {
            let synced = ::redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut self.replica.connection())
                .is_ok_and(|info| info.contains("master_link_status:up"));
            synced
                && (0..self.sentinels.len()).all(|index| {
                    let Ok(mut sentinel) = self.try_sentinel(index) else {
                        return false;
                    };
                    let named = ::redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(SERVICE)
                        .query::<(String, u16)>(&mut sentinel)
                        .is_ok_and(|(_, port)| port == self.primary.port());
                    let replicas = ::redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg(SERVICE)
                        .query::<Vec<::redis::Value>>(&mut sentinel)
                        .map_or(0, |replicas| replicas.len());
                    named && replicas == 1
                })
        };
        while !ready() {
            assert!(Instant::now() < deadline, "the sentinels never got ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every sentinel's URL, for a `SentinelClient`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(port, _)| format!("redis://127.0.0.1:{port}/"))
            .collect()
    }

    fn try_sentinel(&self, index: usize) -> ::redis::RedisResult<::redis::Connection> {
        ::redis::Client::open(format!("redis://127.0.0.1:{}/", self.sentinels[index].0))?
            .get_connection_with_timeout(Duration::from_secs(2))
    }

    /// A connection to the first sentinel.
    pub fn sentinel(&self) -> ::redis::Connection {
        self.try_sentinel(0).expect("the sentinel answers")
    }

    /// The port of the server the first sentinel names primary.
    pub fn named_primary(&self) -> u16 {
        let (_, port): (String, u16) = ::redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SERVICE)
            .query(&mut self.sentinel())
            .expect("the sentinel names a primary");
        port
    }

    /// `SENTINEL FAILOVER`: the replica is promoted without asking the other sentinels.
    pub fn failover(&self) {
        let _: () = ::redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SERVICE)
            .query(&mut self.sentinel())
            .expect("the sentinel starts a failover");
    }
}

impl Drop for SentinelSetup {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
