//! Redis as a breaker's storage (feature `redis`): many processes on many hosts share one
//! breaker.
//!
//! Implemented for the `redis` crate's own types, so a handler needs no adapter:
//! - [`Storage`](crate::Storage) for `redis::Client` (blocking; connections are pooled per
//!   server, at most [`POOL_SIZE`] of them, so a call never opens a connection of its own);
//! - [`AsyncStorage`](crate::AsyncStorage) for `redis::Client` (one multiplexed connection
//!   per server, created on first use), `redis::aio::MultiplexedConnection` and
//!   `redis::aio::ConnectionManager`;
//! - with feature `redis-cluster`, [`Storage`](crate::Storage) for
//!   `redis::cluster::ClusterClient` and [`AsyncStorage`](crate::AsyncStorage) for
//!   `redis::cluster_async::ClusterConnection`: the same script on the same one key per
//!   breaker, which is in one slot (its name is hash-tagged), so a cluster runs it on the
//!   primary owning that slot;
//! - with feature `redis-sentinel`, [`Storage`](crate::Storage) for [`SentinelStorage`]: the
//!   `redis::Client` storage on the primary Redis Sentinel names, asked again after a failure.
//!
//! Every breaker operation is one `EVALSHA` of `script.lua`: the read, the decision and the
//! writes happen atomically on the server, by the server's clock. The exception is the
//! common call: a success outside the rate policy is first one `HMGET` of the breaker's
//! state and failure count, which settles it when it changes nothing (a healthy breaker:
//! no hash, or nothing counted), at the cost of a `GET` on the server; only a success that
//! has a count to reset, or that finds the breaker open, runs the script after it. One
//! breaker is one hash, `{prefix}:{key}:state`, always written with an expiry, so a crash or
//! an eviction leaves at worst a closed breaker. Every command is bounded by the handler's storage timeout.
//!
//! A command that fails because its connection broke is sent again on a fresh connection,
//! within the same timeout, only when running it twice cannot count anything twice: reads,
//! forcing, resets and a success under the consecutive or count-in-window policy. Any other
//! operation fails and goes through the handler's storage-failure policy, since the server
//! may have run it before the connection broke.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{Cmd, RedisError, Script, ScriptInvocation};

use crate::error::StorageError;
use crate::handler::State;
use crate::policy::FailurePolicy;
use crate::rules::{FORCED_TTL, bucket_width, retention};
use crate::storage::{Op, Request, Snapshot, settled_success};

mod admin;
mod asynchronous;
mod blocking;
#[cfg(feature = "redis-cluster")]
mod cluster;
#[cfg(feature = "redis-sentinel")]
mod sentinel;

pub use blocking::POOL_SIZE;
#[cfg(feature = "redis-sentinel")]
pub use sentinel::{RECHECK, SentinelStorage};

/// The breaker operation, one round trip.
static EXECUTE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("script.lua")));

/// `increment_by`: the count and its expiry are set in one atomic step.
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local n = redis.call('INCRBY', KEYS[1], ARGV[2]) \
         if n == tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
         return n",
    )
});

/// Whole milliseconds, rounded up, at least one (Redis rejects a zero expiry).
fn millis(duration: Duration) -> u64 {
    duration
        .as_nanos()
        .div_ceil(1_000_000)
        .clamp(1, u128::from(u64::MAX)) as u64
}

/// The hash holding one breaker.
fn state_key(request: &Request<'_>) -> String {
    format!("{}:state", request.namespaced_key())
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Read => "read",
        Op::Success => "success",
        Op::Failure => "failure",
        Op::AcquireTrial => "acquire",
        Op::TrialSuccess => "trial_success",
        Op::TrialFailure => "trial_failure",
        Op::ReleaseTrial => "release",
        Op::ForceOpen => "force_open",
        Op::ForceClosed => "force_closed",
        Op::Reset => "reset",
        Op::Override => "override",
    }
}

/// The script call for `request` on its breaker's hash, `key`.
fn execute_invocation(request: &Request<'_>, key: &str) -> ScriptInvocation<'static> {
    let config = request.config;
    let (policy, window, rate, minimum_calls) = config.policy.flatten();
    let bucket_ms = (bucket_width(window) / 1_000_000).max(1);
    let mut invocation = EXECUTE.prepare_invoke();
    invocation
        .key(key)
        .arg(op_name(request.op))
        .arg(config.failure_threshold)
        .arg(millis(config.recovery_timeout))
        .arg(config.half_open_trials)
        .arg(policy)
        .arg(millis(window))
        .arg(rate)
        .arg(minimum_calls)
        .arg(bucket_ms)
        .arg(millis(retention(config)))
        .arg(millis(FORCED_TTL))
        .arg(request.count);
    // A success (the common call) needs nothing past its count unless a test gives the time:
    // fewer arguments for the server to make into Lua strings. The script reads the missing
    // ones as empty.
    if request.op == Op::Success && request.at.is_none() {
        return invocation;
    }
    invocation
        .arg(
            request
                .round
                .map_or(String::new(), |round| round.to_string()),
        )
        .arg(
            request
                .at
                .map_or(String::new(), |at| at.as_millis().to_string()),
        )
        .arg(request.audit.actor.unwrap_or_default())
        .arg(request.audit.reason.unwrap_or_default())
        .arg(config.backoff.factor)
        .arg(config.backoff.max.as_millis() as u64)
        .arg(config.recovery_jitter)
        .arg(if config.recovery_jitter > 0.0 {
            crate::rules::jitter_seed(request.key)
        } else {
            0
        })
        .arg(request.overrides.failure_threshold.unwrap_or(0))
        .arg(
            request
                .overrides
                .recovery_timeout
                .map_or(0, |timeout| timeout.as_millis() as u64),
        )
        .arg(request.overrides.half_open_trials.unwrap_or(0))
        .arg(
            request
                .overrides
                .backoff
                .map_or(0.0, |backoff| backoff.factor),
        )
        .arg(
            request
                .overrides
                .backoff
                .map_or(0, |backoff| backoff.max.as_millis() as u64),
        );
    if config.quorum > 1 {
        invocation.arg(config.quorum).arg(request.reporter_id());
    }
    invocation
}

/// The one command that settles a success that changes nothing, as on a healthy breaker
/// ([`Request::success_may_change_nothing`]): `HMGET` of the state and the failure count
/// (see [`settled_by_peek`]). `None` for every other request, which runs the script.
fn peek_command(request: &Request<'_>, key: &str) -> Option<Cmd> {
    if !request.success_may_change_nothing() {
        return None;
    }
    let mut cmd = redis::cmd("HMGET");
    cmd.arg(key).arg("s").arg("f");
    Some(cmd)
}

/// The script's reply to a success, from the state and failure count a peek read, when the
/// script would change nothing ([`settled_success`]; no hash is a closed breaker with
/// nothing counted). Read atomically by one command, that is an answer as exact as the
/// script's (which reports a count-in-window count as stored). `None` when the success may
/// change something, when the reply needs the server's clock, and for anything that is not
/// exactly what the script writes: the script runs, and decides or reports it.
fn settled_by_peek(request: &Request<'_>, fields: &[Option<Vec<u8>>]) -> Option<[i64; 6]> {
    /// A number as the script writes it: digits only, at most 15.
    fn number(value: &[u8]) -> Option<u64> {
        if value.is_empty() || value.len() > 15 || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(value).ok()?.parse().ok()
    }
    let [state, failures] = fields else {
        return None;
    };
    let state = match state.as_deref() {
        None if failures.is_none() => State::Closed,
        Some(b"0") => State::Closed,
        Some(b"4") => State::ForcedClosed,
        _ => return None,
    };
    let failures = match failures {
        None => 0,
        Some(value) => number(value)?,
    };
    let snapshot = settled_success(request.config, state, failures)?;
    let state = snapshot.state.code() as i64;
    Some([state, 1, -1, -1, snapshot.failures as i64, 0])
}

/// Whether running `request` twice leaves the breaker as running it once does, so that a
/// command whose connection broke may be sent again.
fn repeatable(request: &Request<'_>) -> bool {
    match request.op {
        Op::Read | Op::ForceOpen | Op::ForceClosed | Op::Reset => true,
        Op::Success => !matches!(request.config.policy, FailurePolicy::Rate { .. }),
        _ => false,
    }
}

/// Whether a command failed because its connection broke (and not because it timed out or
/// the server refused it), so that a repeatable one may be sent again on another.
fn connection_broke(error: &RedisError) -> bool {
    !error.is_timeout() && (error.is_connection_dropped() || error.is_io_error())
}

fn increment_invocation(key: &str, count: u64, ttl: Duration) -> ScriptInvocation<'static> {
    let mut invocation = INCREMENT.prepare_invoke();
    invocation.key(key).arg(millis(ttl)).arg(count.max(1));
    invocation
}

fn get_command(key: &str) -> Cmd {
    let mut cmd = redis::cmd("GET");
    cmd.arg(key);
    cmd
}

fn expire_command(key: &str, ttl: Duration) -> Cmd {
    if ttl.is_zero() {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(key);
        cmd
    } else {
        let mut cmd = redis::cmd("PEXPIRE");
        cmd.arg(key).arg(millis(ttl));
        cmd
    }
}

/// A `GET` reply as a count.
fn parse_count(key: &str, value: Option<Vec<u8>>) -> Result<u64, StorageError> {
    let Some(bytes) = value else { return Ok(0) };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.parse::<u64>().ok())
        .ok_or_else(|| {
            let shown: String = String::from_utf8_lossy(&bytes).chars().take(40).collect();
            StorageError::invalid_data(key, format!("expected a count, found {shown:?}"))
        })
}

/// The script's reply as a snapshot.
fn parse_snapshot(key: &str, reply: &[i64]) -> Result<Snapshot, StorageError> {
    let &[state, permit, retry_in, open_since, failures, round] = reply else {
        return Err(StorageError::invalid_data(
            key,
            format!("unexpected script reply {reply:?}"),
        ));
    };
    let state = u64::try_from(state)
        .ok()
        .and_then(State::from_code)
        .ok_or_else(|| StorageError::invalid_data(key, format!("unknown state {state}")))?;
    let duration = |ms: i64| u64::try_from(ms).ok().map(Duration::from_millis);
    Ok(match state {
        State::Closed => Snapshot::closed(u64::try_from(failures).unwrap_or(0)),
        State::Open => Snapshot::open(
            duration(retry_in).unwrap_or(Duration::ZERO),
            duration(open_since),
        ),
        State::HalfOpen if permit == 1 => Snapshot::trial(u64::try_from(round).unwrap_or(0)),
        State::HalfOpen => Snapshot::half_open(false),
        forced => Snapshot::forced(forced),
    })
}

/// Maps a client error to a storage error. `secret` is the password the client was given,
/// if known; it never reaches the error's text.
fn storage_error(
    key: &str,
    error: RedisError,
    secret: Option<&str>,
    timeout: Duration,
) -> StorageError {
    let code = error.code().unwrap_or_default();
    let detail = error.detail().unwrap_or_default();
    if code == "CIRCUITPY" {
        let detail = detail.split_once(": ").map_or(detail, |(_, rest)| rest);
        return StorageError::invalid_data(key, crate::admin::redact(detail, secret));
    }
    if code == "WRONGTYPE" || detail.contains("WRONGTYPE") {
        return StorageError::invalid_data(key, "the key holds a value of another type");
    }
    if detail.contains("not an integer") {
        return StorageError::invalid_data(key, "expected a count");
    }
    if error.is_timeout() {
        return StorageError::timeout(key, timeout);
    }
    StorageError::backend(key, RedisFailure::new(&error, secret))
}

/// A Redis client error with any credentials removed from its text.
#[derive(Clone)]
pub(crate) struct RedisFailure {
    text: String,
}

impl RedisFailure {
    fn new(error: &RedisError, secret: Option<&str>) -> Self {
        Self::from_text(&error.to_string(), secret)
    }

    fn from_text(text: &str, secret: Option<&str>) -> Self {
        RedisFailure {
            text: crate::admin::redact(text, secret),
        }
    }
}

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RedisFailure").field(&self.text).finish()
    }
}

impl std::error::Error for RedisFailure {}

/// The identity of a server and login, for sharing connections between equal clients.
///
/// A TLS client's trust settings cannot be compared, so its connections are shared only
/// with itself: `client` is then its address in memory (zero for plain connections).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Endpoint {
    addr: String,
    client: usize,
    db: i64,
    username: Option<String>,
    password: Option<String>,
}

/// Makes sure TLS connections have a crypto provider: rustls panics when none was chosen.
/// The process's own choice, if it made one, stands.
fn tls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}

impl Endpoint {
    fn of(client: &redis::Client) -> Self {
        let info = client.get_connection_info();
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if tls {
            tls_provider();
        }
        let settings = info.redis_settings();
        Endpoint {
            addr: info.addr().to_string(),
            client: if tls {
                client as *const redis::Client as usize
            } else {
                0
            },
            db: settings.db(),
            username: settings.username().map(str::to_owned),
            password: settings.password().map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::redact;

    #[test]
    fn redact_removes_the_password_and_url_credentials() {
        assert_eq!(
            redact("failed for redis://user:hunter2@host:6379/0", None),
            "failed for redis://***@host:6379/0"
        );
        assert_eq!(
            redact("WRONGPASS hunter2", Some("hunter2")),
            "WRONGPASS ***"
        );
        assert_eq!(redact("no url here", Some("")), "no url here");
        assert_eq!(
            redact("a rediss://h:1 and redis://:pw@h", None),
            "a rediss://h:1 and redis://***@h"
        );
    }

    #[test]
    fn millis_round_up_and_never_zero() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn counts_parse_or_name_the_key() {
        assert_eq!(parse_count("k", None).unwrap(), 0);
        assert_eq!(parse_count("k", Some(b"12".to_vec())).unwrap(), 12);
        let error = parse_count("app:{k}:failures", Some(b"abc".to_vec())).unwrap_err();
        assert!(error.to_string().contains("app:{k}:failures"), "{error}");
    }

    #[test]
    fn replies_become_snapshots() {
        assert_eq!(
            parse_snapshot("k", &[0, 1, -1, -1, 2, 0]).unwrap(),
            Snapshot::closed(2)
        );
        assert_eq!(
            parse_snapshot("k", &[1, 0, 250, 50, 0, 0]).unwrap(),
            Snapshot::open(Duration::from_millis(250), Some(Duration::from_millis(50)))
        );
        assert_eq!(
            parse_snapshot("k", &[2, 1, -1, -1, 0, 17]).unwrap(),
            Snapshot::trial(17)
        );
        assert!(parse_snapshot("k", &[9, 0, -1, -1, 0, 0]).is_err());
        assert!(parse_snapshot("k", &[0]).is_err());
    }

    #[test]
    fn a_peek_settles_only_a_success_that_changes_nothing() {
        struct Handler;
        impl crate::CircuitBreaker for Handler {
            const FAILURE_THRESHOLD: u32 = 3;
            const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1);
            const FAILURE_KEY: &'static str = "k";
            type Storage = crate::MemoryStorage;
            fn storage(&self) -> &crate::MemoryStorage {
                unreachable!("not asked")
            }
        }
        let consecutive = crate::Config::of::<Handler>();
        let windowed = crate::Config {
            policy: FailurePolicy::CountInWindow {
                window: Duration::from_secs(60),
            },
            ..consecutive
        };
        let rate = crate::Config {
            policy: FailurePolicy::Rate {
                rate: 0.5,
                window: Duration::from_secs(60),
                minimum_calls: 10,
            },
            ..consecutive
        };
        let field = |value: &str| Some(value.as_bytes().to_vec());
        let peek = |config: &crate::Config, state: Option<Vec<u8>>, failures: Option<Vec<u8>>| {
            let request = Request::new("k", Op::Success, config);
            settled_by_peek(&request, &[state, failures])
        };
        let closed = |failures| Some([0, 1, -1, -1, failures, 0]);

        // No hash: a closed breaker with nothing counted.
        assert_eq!(peek(&consecutive, None, None), closed(0));
        assert_eq!(peek(&windowed, None, None), closed(0));
        // Consecutive: settled only with nothing to reset.
        assert_eq!(peek(&consecutive, field("0"), None), closed(0));
        assert_eq!(peek(&consecutive, field("0"), field("0")), closed(0));
        assert_eq!(peek(&consecutive, field("0"), field("2")), None);
        // Count in window: a success keeps the count, which the script replies with.
        assert_eq!(peek(&windowed, field("0"), field("2")), closed(2));
        // Forced closed records nothing.
        assert_eq!(
            peek(&consecutive, field("4"), field("1")),
            Some([4, 1, -1, -1, 0, 0])
        );
        // Open, half-open, forced open: the reply needs the server's clock or a round.
        for state in ["1", "2", "3"] {
            assert_eq!(peek(&consecutive, field(state), None), None, "{state}");
            assert_eq!(peek(&windowed, field(state), None), None, "{state}");
        }
        // What the script would not have written goes to the script, which reports it.
        for (state, failures) in [
            (field("0"), field("0x1")),
            (field("0"), field("")),
            (field("0"), field("1234567890123456")),
            (field("00"), None),
            (field("9"), None),
            (None, field("1")),
        ] {
            assert_eq!(peek(&windowed, state.clone(), failures.clone()), None);
        }
        assert_eq!(
            settled_by_peek(&Request::new("k", Op::Success, &consecutive), &[]),
            None
        );
        // Only a success outside the rate policy is peeked at.
        assert!(peek_command(&Request::new("k", Op::Success, &consecutive), "h").is_some());
        assert!(peek_command(&Request::new("k", Op::Success, &windowed), "h").is_some());
        assert!(peek_command(&Request::new("k", Op::Success, &rate), "h").is_none());
        // A consecutive count this process saw: the script at once; a window's count: peeked.
        let seen = |config| Request::new("k", Op::Success, config).having_seen(1);
        assert!(peek_command(&seen(&consecutive), "h").is_none());
        assert!(peek_command(&seen(&windowed), "h").is_some());
        assert!(peek_command(&Request::new("k", Op::Failure, &consecutive), "h").is_none());
        assert!(peek_command(&Request::new("k", Op::Read, &consecutive), "h").is_none());
    }
}
