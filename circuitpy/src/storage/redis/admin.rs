//! [`Admin`] for `redis::Client`: the breakers under a prefix are found with `SCAN ... MATCH
//! {prefix}:{*}:state` (never `KEYS`, which blocks the server), then each is read by
//! `inspect.lua` — its fields, its expiry and the server's clock in one step — pipelined a
//! batch at a time. Forcing and resetting are the breaker's own script.

use std::sync::LazyLock;

use redis::{Connection, RedisResult, Script};

use super::blocking::{own_pool, run};
use crate::admin::{
    ADMIN_TIMEOUT, Action, Admin, Audit, BreakerInfo, Listing, breaker_key, check_key, describe,
    row_of_hash,
};
use crate::error::StorageError;

static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("inspect.lua")));

/// Keys read per pipelined batch.
const BATCH: usize = 1_000;

/// `text` with the glob characters of `SCAN ... MATCH` escaped.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The breaker in the reply of `inspect.lua` for `stored`, whose breaker key is `key`;
/// `None` when the key does not exist.
fn decode(stored: &str, key: &str, reply: &[Vec<u8>]) -> Result<Option<BreakerInfo>, StorageError> {
    let number = |bytes: Option<&Vec<u8>>| {
        bytes
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| StorageError::invalid_data(stored, "unexpected reply to the read"))
    };
    let now = number(reply.first())?;
    let ttl = number(reply.get(1))?;
    let kind = reply
        .get(2)
        .map(|kind| String::from_utf8_lossy(kind))
        .unwrap_or_default();
    match &*kind {
        "none" => return Ok(None),
        "hash" => {}
        other => {
            return Err(StorageError::invalid_data(
                stored,
                format!("the key holds a {other}, not a breaker's hash"),
            ));
        }
    }
    let fields: Vec<(Vec<u8>, Vec<u8>)> = reply[3..]
        .chunks_exact(2)
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect();
    let row = row_of_hash(stored, &fields, now, ttl)?;
    let expires_at = (ttl > 0).then(|| (now + ttl).saturating_mul(1000));
    Ok(Some(describe(
        key,
        &row,
        now.saturating_mul(1000),
        expires_at,
    )))
}

fn read_batch(connection: &mut Connection, stored: &[String]) -> RedisResult<Vec<Vec<Vec<u8>>>> {
    // Loading is idempotent and makes every EVALSHA of the pipeline find the script.
    let hash: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(include_str!("inspect.lua"))
        .query(connection)?;
    let mut pipe = redis::pipe();
    for key in stored {
        pipe.cmd("EVALSHA").arg(&hash).arg(1).arg(key);
    }
    pipe.query(connection)
}

impl Admin for redis::Client {
    fn list(&self, prefix: &str) -> Result<Listing, StorageError> {
        let pattern = format!("{}:{{*}}:state", escape_glob(prefix));
        let pool = own_pool(self);
        let mut stored: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) =
                run(&pool, &pattern, ADMIN_TIMEOUT, true, |connection| {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query(connection)
                })?;
            stored.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // SCAN may return a key more than once.
        stored.sort();
        stored.dedup();
        let mut listing = Listing::default();
        for batch in stored.chunks(BATCH) {
            let replies = run(&pool, &pattern, ADMIN_TIMEOUT, true, |connection| {
                read_batch(connection, batch)
            })?;
            for (stored, reply) in batch.iter().zip(replies) {
                let Some(key) = breaker_key(prefix, stored, ":state") else {
                    listing.invalid.push(StorageError::invalid_data(
                        stored.as_str(),
                        "not a breaker key (`{prefix}:{key}:state`)",
                    ));
                    continue;
                };
                match decode(stored, key, &reply) {
                    Ok(Some(info)) => listing.breakers.push(info),
                    // Expired between the scan and the read.
                    Ok(None) => {}
                    Err(error) => listing.invalid.push(error),
                }
            }
        }
        // By breaker key: storage keys sort `a:{x:y}` before `a:{x}`.
        listing.breakers.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listing)
    }

    fn inspect(&self, prefix: &str, key: &str) -> Result<Option<BreakerInfo>, StorageError> {
        check_key(prefix, key)?;
        let stored = format!("{prefix}:{{{key}}}:state");
        let reply: Vec<Vec<u8>> = run(
            &own_pool(self),
            &stored,
            ADMIN_TIMEOUT,
            true,
            |connection| INSPECT.key(&stored).invoke(connection),
        )?;
        decode(&stored, key, &reply)
    }

    fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> Result<Option<BreakerInfo>, StorageError> {
        crate::admin::act_by_executing(self, prefix, key, action, audit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_a_prefix_are_matched_literally() {
        assert_eq!(escape_glob("app*[1]?"), "app\\*\\[1\\]\\?");
    }

    #[test]
    fn a_missing_key_is_none_and_another_type_is_invalid_data() {
        let reply = |kind: &str| vec![b"1000".to_vec(), b"-2".to_vec(), kind.as_bytes().to_vec()];
        assert!(
            decode("p:{k}:state", "k", &reply("none"))
                .unwrap()
                .is_none()
        );
        let error = decode("p:{k}:state", "k", &reply("string")).unwrap_err();
        assert!(error.to_string().contains("holds a string"), "{error}");
    }
}
