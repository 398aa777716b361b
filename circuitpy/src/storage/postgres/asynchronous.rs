//! The async PostgreSQL storage, on the caller's tokio runtime.

use std::time::Duration;

use super::{Db, Done, PostgresOptions, Work};
use crate::admin::{Action, AsyncAdmin, Audit, BreakerInfo, Listing};
use crate::error::StorageError;
use crate::storage::{AsyncStorage, Request, Snapshot};

/// An async PostgreSQL storage on the caller's tokio runtime: a pool of connections,
/// pipelined between concurrent calls.
///
/// ```no_run
/// # async fn run() -> Result<(), circuitpy::StorageError> {
/// let storage = circuitpy::AsyncPostgresStorage::connect("postgres://app@db.internal/app").await?;
/// # let _ = storage;
/// # Ok(())
/// # }
/// ```
pub struct AsyncPostgresStorage {
    db: Db,
}

impl std::fmt::Debug for AsyncPostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncPostgresStorage")
            .field("table", &self.db.sql.table)
            .finish_non_exhaustive()
    }
}

impl AsyncPostgresStorage {
    /// Connects to `url` with the default options; must run inside a tokio runtime.
    pub async fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with `options`. The first connection is opened now, so that a wrong URL
    /// fails here rather than on the first call.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StorageError> {
        let migrate = options.migrate;
        let storage = AsyncPostgresStorage {
            db: Db::own(url, options)?,
        };
        if migrate {
            storage.migrate().await?;
        } else {
            AsyncStorage::get_count(&storage, "circuitpy:probe").await?;
        }
        Ok(storage)
    }

    /// A storage over the application's own pool (`deadpool-postgres`); see
    /// [`PostgresStorage::from_pool`](crate::PostgresStorage::from_pool).
    pub async fn from_pool(
        pool: deadpool_postgres::Pool,
        options: PostgresOptions,
    ) -> Result<Self, StorageError> {
        let migrate = options.migrate;
        let storage = AsyncPostgresStorage {
            db: Db::users(pool, options)?,
        };
        if migrate {
            storage.migrate().await?;
        }
        Ok(storage)
    }

    /// Creates the tables and installs the function (idempotent), waiting at most the
    /// options' timeout for another migration. A table this version migrated already is
    /// left alone, without a lock on it.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        self.db.migrate().await
    }

    async fn perform(&self, work: Work, timeout: Duration) -> Result<Done, StorageError> {
        self.db.perform(work, timeout).await
    }
}

impl AsyncStorage for AsyncPostgresStorage {
    async fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.increment_by(key, 1, ttl).await
    }

    async fn increment_by(
        &self,
        key: &str,
        count: u64,
        ttl: Duration,
    ) -> Result<u64, StorageError> {
        let work = Work::Increment {
            key: key.to_owned(),
            count,
            ttl,
        };
        self.perform(work, self.db.options.timeout)
            .await?
            .count(key)
    }

    async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let work = Work::Get {
            key: key.to_owned(),
        };
        self.perform(work, self.db.options.timeout)
            .await?
            .count(key)
    }

    async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let work = Work::Expire {
            key: key.to_owned(),
            ttl,
        };
        self.perform(work, self.db.options.timeout).await.map(drop)
    }

    async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let work = Work::execute(request);
        let key = work.key().to_owned();
        self.perform(work, request.config.storage_timeout)
            .await?
            .snapshot(&key)
    }
}

/// The breakers under a prefix, as operators see them, without blocking: the same queries
/// as [`PostgresStorage`](crate::PostgresStorage)'s.
impl AsyncAdmin for AsyncPostgresStorage {
    async fn list(&self, prefix: &str) -> Result<Listing, StorageError> {
        self.db.list(prefix).await
    }

    async fn inspect(&self, prefix: &str, key: &str) -> Result<Option<BreakerInfo>, StorageError> {
        self.db.inspect(prefix, key).await
    }

    async fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> Result<Option<BreakerInfo>, StorageError> {
        self.db.act(prefix, key, action, audit).await
    }
}
