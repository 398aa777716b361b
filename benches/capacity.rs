//! How many breaker operations one Redis core sustains, against `GET` in the same run: many
//! concurrent async callers on one hot breaker key, each case for a few seconds, with the
//! server's own accounting (`INFO commandstats`, `INFO cpu`) read before and after.
//!
//! `cargo bench --features redis --bench capacity` (starts its own `redis-server`).
//!
//! Cases: a raw `GET`; a closed success in strict mode (one `HMGET`, the peek that settles a
//! success that changes nothing); a failure (one `EVALSHA`, never tripping); a rejection of
//! an open breaker (decided by each process's view: no command until the view's deadline);
//! a closed success in local mode (`SYNC_INTERVAL` 100 ms: one command per interval per
//! process and breaker).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use circuitpy::{Breaker, CircuitBreaker};
use circuitpy_tests::handlers::Error as CallError;
use circuitpy_tests::redis::RedisServer;
use redis::aio::MultiplexedConnection;

static CONNECTION: OnceLock<MultiplexedConnection> = OnceLock::new();

const CALLERS: usize = 64;
const RUN: Duration = Duration::from_secs(3);

macro_rules! handler {
    ($name:ident, $key:literal, $threshold:expr, $interval:expr) => {
        struct $name;
        impl CircuitBreaker for $name {
            const FAILURE_THRESHOLD: u32 = $threshold;
            const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);
            const FAILURE_KEY: &'static str = $key;
            const SYNC_INTERVAL: Option<Duration> = $interval;
            const STORAGE_TIMEOUT: Duration = Duration::from_secs(2);
            type Storage = MultiplexedConnection;
            fn storage(&self) -> &MultiplexedConnection {
                CONNECTION.get().expect("connected")
            }
        }
    };
}

handler!(Strict, "capacity_strict", 1_000_000, None);
handler!(Failing, "capacity_failing", 1_000_000, None);
handler!(Open, "capacity_open", 1, None);
handler!(
    Local,
    "capacity_local",
    1_000_000,
    Some(Duration::from_millis(100))
);

/// The server's counters: commands by name (calls, µs), and its CPU seconds.
struct Stats {
    commands: Vec<(String, u64, u64)>,
    cpu: f64,
}

async fn stats(connection: &mut MultiplexedConnection) -> Stats {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    let commands = info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                rest.split(',')
                    .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|value| value.parse::<u64>().ok())
            };
            Some((name.to_owned(), field("calls")?, field("usec")?))
        })
        .collect();
    let cpu: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(connection)
        .await
        .unwrap();
    let seconds = |key: &str| {
        cpu.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Stats {
        commands,
        cpu: seconds("used_cpu_sys") + seconds("used_cpu_user"),
    }
}

/// Runs `call` from `CALLERS` tasks for `RUN`; calls made, and the server's work meanwhile.
async fn measure<F, Fut>(name: &str, call: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut admin = CONNECTION.get().unwrap().clone();
    let before = stats(&mut admin).await;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let call = Arc::new(call);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (stop, calls, call) = (stop.clone(), calls.clone(), call.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call().await;
                    calls.fetch_add(1, Ordering::Relaxed);
                    // A call decided in this process is ready at once: let the timer run.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = stats(&mut admin).await;
    let calls = calls.load(Ordering::Relaxed) as f64;
    let server_cpu = (after.cpu - before.cpu) / elapsed;
    // Commands the clients sent: commands a script runs are counted too, under their own
    // names, and their time is inside the script's. (The script runs `HMGET` only for a
    // reset, which no case sends; a client's is the peek at a success.)
    let (mut commands, mut usec) = (0u64, 0u64);
    for (command, count, micros) in &after.commands {
        if !matches!(
            command.as_str(),
            "get" | "hmget" | "evalsha" | "eval" | "script|load"
        ) {
            continue;
        }
        let (old_count, old_micros) = before
            .commands
            .iter()
            .find(|(name, ..)| name == command)
            .map_or((0, 0), |(_, count, micros)| (*count, *micros));
        commands += count - old_count;
        usec += micros - old_micros;
    }
    let per_command = if commands > 0 {
        usec as f64 / commands as f64
    } else {
        0.0
    };
    let per_core = if per_command > 0.0 {
        format!("{:.0}", 1e6 / per_command)
    } else {
        "unbounded".to_owned()
    };
    println!(
        "| {name} | {:.0} | {:.4} | {per_command:.2} | {per_core} | {:.0}% |",
        calls / elapsed,
        commands as f64 / calls,
        server_cpu * 100.0
    );
}

fn main() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connection = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        CONNECTION.set(connection).unwrap();
        let _: () = redis::cmd("SET")
            .arg("capacity_get")
            .arg("1")
            .query_async(&mut CONNECTION.get().unwrap().clone())
            .await
            .unwrap();
        let _ = Breaker::new(Open).call_async(async { Err::<(), _>(CallError::Down) }).await;
        println!(
            "{CALLERS} concurrent callers on one multiplexed connection, {} s per case, one hot key",
            RUN.as_secs()
        );
        println!(
            "| case | calls/s (this client) | commands per call | server µs per command | commands/s one core sustains | server CPU |"
        );
        println!("|---|---:|---:|---:|---:|---:|");
        measure("raw `GET`", || async {
            let mut connection = CONNECTION.get().unwrap().clone();
            let _: Option<String> = redis::cmd("GET")
                .arg("capacity_get")
                .query_async(&mut connection)
                .await
                .unwrap();
        })
        .await;
        measure("closed success, strict", || async {
            let _ = Breaker::new(Strict).call_async(async { Ok::<(), CallError>(()) }).await;
        })
        .await;
        measure("failure (not tripping)", || async {
            let _ = Breaker::new(Failing)
                .call_async(async { Err::<(), _>(CallError::Down) })
                .await;
        })
        .await;
        measure("rejection, open", || async {
            let _ = Breaker::new(Open).call_async(async { Ok::<(), CallError>(()) }).await;
        })
        .await;
        measure("closed success, local mode (100 ms)", || async {
            let _ = Breaker::new(Local).call_async(async { Ok::<(), CallError>(()) }).await;
        })
        .await;
    });
}
