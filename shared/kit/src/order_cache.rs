//! The versioned read cache of orders that the ingress reads and the order store invalidates.
//!
//! One Redis hash per payment under `paystream:order:<pay_id>` with fields `v` (the order's
//! `version` in `order_store.orders`), `t` (`1` for a tombstone) and `d` (the cached view, opaque
//! to this module). Both sides go through Lua scripts so that every check-and-write is atomic:
//!
//! - the reader, after a miss, *fills* with the version it read from Postgres. The fill is
//!   refused when the entry already holds a newer version, or a tombstone of the same or a newer
//!   version, so a reader that read the database before an update committed can never put the
//!   old state back after the order store invalidated it;
//! - the order store, after each committed batch, writes *tombstones* carrying the version it
//!   committed (read back from Postgres after the commit) instead of deleting the entry. A
//!   tombstone never replaces an entry of the same or a newer version.
//!
//! A plain `DEL` would leave the race open: reader reads version 1, writer commits version 2 and
//! deletes, reader fills version 1, and every later read sees version 1 until the entry expires.
//!
//! What remains: between the writer's commit and its tombstone, a read may still be served the
//! previous version (the update is not finished yet); tombstones expire after
//! [`DEFAULT_TOMBSTONE_TTL`], which is why a reader gives up filling once its database read is
//! older than [`MAX_FILL_AGE`]; and if the writer cannot reach Redis at all, entries fall back
//! on their own expiry ([`DEFAULT_VALUE_TTL`]).

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Prefix of every entry (shared contract between api-ingress and order-store).
pub const KEY_PREFIX: &str = "paystream:order:";
/// Entries expire on their own as a backstop for an order store that cannot reach Redis.
pub const DEFAULT_VALUE_TTL: Duration = Duration::from_secs(300);
/// Tombstones outlive any fill that could still be racing them (see [`MAX_FILL_AGE`]).
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(120);
/// A reader does not fill with a database read older than this: the tombstone that would refuse
/// it might have expired by then.
pub const MAX_FILL_AGE: Duration = Duration::from_secs(30);
/// Redis is an optimisation of reads; no call may hold up a request or a batch longer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub fn cache_key(payment_id: &impl Display) -> String {
    format!("{KEY_PREFIX}{payment_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum OrderCacheError {
    #[error("order cache unavailable: {0}")]
    Unavailable(String),
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The cached view of this version.
    Hit {
        version: i64,
        payload: String,
    },
    /// The order changed at this version and nobody has filled the entry since.
    Tombstone {
        version: i64,
    },
    Miss,
}

/// What a fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    Stored,
    /// The entry holds a newer version or a tombstone of the same or a newer version.
    Refused,
    /// The entry already holds this version.
    AlreadyCurrent,
}

// KEYS[1] entry; ARGV[1] version; ARGV[2] payload; ARGV[3] ttl (s).
// Returns 1 stored, 0 refused, 2 already current.
const FILL: &str = r#"
local ty = redis.call('TYPE', KEYS[1]).ok
if ty ~= 'none' and ty ~= 'hash' then redis.call('DEL', KEYS[1]) end
local v = tonumber(ARGV[1])
local cur = redis.call('HMGET', KEYS[1], 'v', 't')
local cv = tonumber(cur[1])
if cv then
  if cv > v then return 0 end
  if cv == v then
    if cur[2] == '1' then
      -- a tombstone of this very version: the committed state may now be cached
    else
      return 2
    end
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 't', '0', 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"#;

// KEYS[i] entries; ARGV[1] ttl (s); ARGV[i + 1] the committed version of KEYS[i].
// Returns how many tombstones were written.
const TOMBSTONE: &str = r#"
local ttl = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local v = tonumber(ARGV[i + 1])
  local keep = false
  local ty = redis.call('TYPE', key).ok
  if ty == 'hash' then
    local cv = tonumber(redis.call('HGET', key, 'v'))
    -- an entry of this version is the committed state itself; a newer one is newer still
    if cv and cv >= v then keep = true end
  end
  if not keep then
    redis.call('DEL', key)
    redis.call('HSET', key, 'v', v, 't', '1')
    redis.call('EXPIRE', key, ttl)
    written = written + 1
  end
end
return written
"#;

/// Client of the versioned order cache. Cheap to clone; connects lazily, so a Redis that is
/// down at start does not keep a service from starting (reads fall back on Postgres).
#[derive(Clone)]
pub struct VersionedOrderCache {
    conn: ConnectionManager,
    value_ttl: Duration,
    tombstone_ttl: Duration,
}

impl VersionedOrderCache {
    pub fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("parsing REDIS_URL")?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .context("creating the Redis connection manager")?;
        Ok(Self {
            conn,
            value_ttl: DEFAULT_VALUE_TTL,
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
        })
    }

    pub fn with_ttls(mut self, value_ttl: Duration, tombstone_ttl: Duration) -> Self {
        self.value_ttl = value_ttl.max(Duration::from_secs(1));
        self.tombstone_ttl = tombstone_ttl.max(Duration::from_secs(1));
        self
    }

    pub async fn get(&self, payment_id: &impl Display) -> Result<Lookup, OrderCacheError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(cache_key(payment_id)).arg("v").arg("t").arg("d");
        let (v, t, d): (Option<i64>, Option<String>, Option<String>) =
            timed("HMGET", cmd.query_async(&mut conn)).await?;
        Ok(match (v, t.as_deref(), d) {
            (None, _, _) => Lookup::Miss,
            (Some(version), Some("1"), _) => Lookup::Tombstone { version },
            (Some(version), _, Some(payload)) => Lookup::Hit { version, payload },
            (Some(_), _, None) => Lookup::Miss,
        })
    }

    /// Stores `payload` as the view of `version`, unless the entry knows of a newer state.
    /// `read_started` is when the database read that produced `payload` began: a read older
    /// than [`MAX_FILL_AGE`] is not stored.
    pub async fn fill(
        &self,
        payment_id: &impl Display,
        version: i64,
        payload: &str,
        read_started: Instant,
    ) -> Result<Fill, OrderCacheError> {
        if read_started.elapsed() > MAX_FILL_AGE {
            return Ok(Fill::Refused);
        }
        let mut conn = self.conn.clone();
        let mut eval = script(FILL, 1);
        eval.arg(cache_key(payment_id))
            .arg(version)
            .arg(payload)
            .arg(self.value_ttl.as_secs());
        let stored: i64 = timed("fill", eval.query_async(&mut conn)).await?;
        Ok(match stored {
            1 => Fill::Stored,
            2 => Fill::AlreadyCurrent,
            _ => Fill::Refused,
        })
    }

    /// Marks each payment as changed at its committed version, in one atomic script call.
    /// Returns how many entries became tombstones (the others already held that version or a
    /// newer one).
    pub async fn tombstone<I: Display>(
        &self,
        committed: &[(I, i64)],
    ) -> Result<u64, OrderCacheError> {
        if committed.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn.clone();
        let mut eval = script(TOMBSTONE, committed.len());
        for (id, _) in committed {
            eval.arg(cache_key(id));
        }
        eval.arg(self.tombstone_ttl.as_secs());
        for (_, version) in committed {
            eval.arg(*version);
        }
        let written: u64 = timed("tombstone", eval.query_async(&mut conn)).await?;
        Ok(written)
    }

    /// Removes entries without a version: a plain `DEL`, which leaves the slow-reader race open
    /// (see the module documentation). Only for callers that cannot know the committed versions.
    pub async fn remove<I: Display>(&self, ids: &[I]) -> Result<(), OrderCacheError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut del = redis::cmd("DEL");
        for id in ids {
            del.arg(cache_key(id));
        }
        timed("DEL", del.query_async::<()>(&mut conn)).await
    }
}

/// `EVAL` of one of the scripts above with its keys and arguments still to add. Redis keeps
/// compiled scripts by their hash, so sending the text each time costs only the bytes.
fn script(source: &str, keys: usize) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(source).arg(keys);
    cmd
}

async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, OrderCacheError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OrderCacheError::Unavailable(format!("{what}: {e}"))),
        Err(_) => Err(OrderCacheError::Unavailable(format!(
            "{what} did not answer within {} ms",
            CALL_TIMEOUT.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the real Redis of `REDIS_URL` (the dev default otherwise), on keys of its own.
    fn cache() -> VersionedOrderCache {
        let url = crate::config::env_or("REDIS_URL", crate::config::DEFAULT_REDIS_URL);
        VersionedOrderCache::connect(&url).expect("redis client")
    }

    fn fresh_id() -> String {
        format!("pay_test_{}", rand_suffix())
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_fill_never_goes_back_in_versions() {
        let c = cache();
        let id = fresh_id();
        let now = Instant::now();
        assert_eq!(c.get(&id).await.unwrap(), Lookup::Miss);
        assert_eq!(c.fill(&id, 2, "v2", now).await.unwrap(), Fill::Stored);
        assert_eq!(c.fill(&id, 1, "v1", now).await.unwrap(), Fill::Refused);
        assert_eq!(
            c.fill(&id, 2, "v2", now).await.unwrap(),
            Fill::AlreadyCurrent
        );
        assert_eq!(c.fill(&id, 3, "v3", now).await.unwrap(), Fill::Stored);
        assert_eq!(
            c.get(&id).await.unwrap(),
            Lookup::Hit {
                version: 3,
                payload: "v3".into()
            }
        );
    }

    #[tokio::test]
    async fn the_race_of_a_slow_reader_is_refused() {
        let c = cache();
        let id = fresh_id();
        let read_started = Instant::now();
        // The reader read version 1 from the database; before it fills, the writer commits
        // version 2 and tombstones.
        assert_eq!(c.tombstone(&[(&id, 2)]).await.unwrap(), 1);
        assert_eq!(
            c.fill(&id, 1, "old", read_started).await.unwrap(),
            Fill::Refused
        );
        assert_eq!(c.get(&id).await.unwrap(), Lookup::Tombstone { version: 2 });
        // A reader of version 2 may fill over the tombstone of version 2.
        assert_eq!(
            c.fill(&id, 2, "new", Instant::now()).await.unwrap(),
            Fill::Stored
        );
        // A late tombstone of an older commit does not remove the newer entry.
        assert_eq!(c.tombstone(&[(&id, 1)]).await.unwrap(), 0);
        assert!(matches!(
            c.get(&id).await.unwrap(),
            Lookup::Hit { version: 2, .. }
        ));
        // A tombstone of a newer commit does.
        assert_eq!(c.tombstone(&[(&id, 3)]).await.unwrap(), 1);
        assert_eq!(c.get(&id).await.unwrap(), Lookup::Tombstone { version: 3 });
    }

    #[tokio::test]
    async fn an_old_read_is_not_filled() {
        let c = cache();
        let id = fresh_id();
        let long_ago = Instant::now()
            .checked_sub(MAX_FILL_AGE + Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        let outcome = c.fill(&id, 1, "v1", long_ago).await.unwrap();
        if long_ago.elapsed() > MAX_FILL_AGE {
            assert_eq!(outcome, Fill::Refused);
            assert_eq!(c.get(&id).await.unwrap(), Lookup::Miss);
        }
    }

    #[tokio::test]
    async fn an_entry_of_the_old_plain_format_is_replaced() {
        let c = cache();
        let id = fresh_id();
        let mut conn = c.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(cache_key(&id))
            .arg("{}")
            .arg("EX")
            .arg(60)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            c.fill(&id, 1, "v1", Instant::now()).await.unwrap(),
            Fill::Stored
        );
        let _: () = redis::cmd("SET")
            .arg(cache_key(&id))
            .arg("{}")
            .arg("EX")
            .arg(60)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(c.tombstone(&[(&id, 4)]).await.unwrap(), 1);
        assert_eq!(c.get(&id).await.unwrap(), Lookup::Tombstone { version: 4 });
    }
}
