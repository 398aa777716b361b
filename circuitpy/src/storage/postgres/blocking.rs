//! The blocking PostgreSQL storage: the pool runs on a private tokio runtime, and each call
//! waits for its operation on the calling thread.

use std::time::Duration;

use super::{Db, Done, PostgresOptions, Work};
use crate::admin::{ADMIN_TIMEOUT, Action, Admin, Audit, BreakerInfo, Listing};
use crate::error::StorageError;
use crate::storage::{Request, Snapshot, Storage};

/// A blocking PostgreSQL storage: a pool of connections shared by the process's threads.
///
/// ```no_run
/// use std::sync::LazyLock;
/// use circuitpy::PostgresStorage;
///
/// static STORAGE: LazyLock<PostgresStorage> = LazyLock::new(|| {
///     PostgresStorage::connect("postgres://app@db.internal/app").expect("breaker storage")
/// });
/// ```
///
/// Each breaker operation is one statement, one round trip: about 150 µs for a read and
/// 190 µs for a write against a server on the same host. It may be used from inside an
/// async runtime too (it then blocks that thread for the operation, as any blocking call
/// does); [`AsyncPostgresStorage`](crate::AsyncPostgresStorage) does not block.
pub struct PostgresStorage {
    db: Db,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("table", &self.db.sql.table)
            .finish_non_exhaustive()
    }
}

fn runtime(table: &str) -> Result<tokio::runtime::Runtime, StorageError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("circuitpy-postgres")
        .enable_all()
        .build()
        .map_err(|error| StorageError::backend(table, error))
}

impl PostgresStorage {
    /// Connects to `url` (`postgres://user@host:port/database`) with the default options,
    /// creating the table and function if missing.
    pub fn connect(url: &str) -> Result<Self, StorageError> {
        Self::connect_with(url, PostgresOptions::default())
    }

    /// Connects with `options`. The first connection is opened now, so that a wrong URL
    /// fails here rather than on the first call.
    pub fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StorageError> {
        let runtime = runtime(&options.table)?;
        let migrate = options.migrate;
        let storage = PostgresStorage {
            db: Db::own(url, options)?,
            runtime,
        };
        if migrate {
            storage.migrate()?;
        } else {
            storage.get_count("circuitpy:probe")?;
        }
        Ok(storage)
    }

    /// A storage over the application's own pool (`deadpool-postgres`): the pool's size
    /// and connection settings are the application's; waiting for one of its connections
    /// counts against the handler's storage timeout. Runs the migration unless `options`
    /// say otherwise. The pool's connections use the application's TLS connector; the
    /// options' TLS settings (feature `postgres-tls`) serve only to cancel a statement that
    /// ran out of time.
    ///
    /// ```no_run
    /// let mut config = deadpool_postgres::Config::new();
    /// config.url = Some("postgres://app@db.internal/app".into());
    /// let pool = config
    ///     .create_pool(Some(deadpool_postgres::Runtime::Tokio1), tokio_postgres::NoTls)
    ///     .unwrap();
    /// let storage = circuitpy::PostgresStorage::from_pool(pool, Default::default()).unwrap();
    /// # let _ = storage;
    /// ```
    pub fn from_pool(
        pool: deadpool_postgres::Pool,
        options: PostgresOptions,
    ) -> Result<Self, StorageError> {
        let runtime = runtime(&options.table)?;
        let migrate = options.migrate;
        let storage = PostgresStorage {
            db: Db::users(pool, options)?,
            runtime,
        };
        if migrate {
            storage.migrate()?;
        }
        Ok(storage)
    }

    /// Creates the tables and installs the function (idempotent; safe to run from many
    /// processes at once), waiting at most the options' timeout for another migration. A
    /// table this version migrated already is left alone, without a lock on it.
    pub fn migrate(&self) -> Result<(), StorageError> {
        let db = self.db.clone();
        let timeout = self.db.options.timeout;
        self.wait(&self.db.sql.table, timeout * 2, async move {
            db.migrate().await.map(|()| Done::Nothing)
        })
        .map(drop)
    }

    /// Runs `work` on the pool's runtime and waits for it, at most `timeout` (plus the
    /// time the runtime takes to hand the result over).
    fn perform(&self, work: Work, timeout: Duration) -> Result<Done, StorageError> {
        let db = self.db.clone();
        let key = work.key().to_owned();
        self.wait(
            &key,
            timeout,
            async move { db.perform(work, timeout).await },
        )
    }

    fn wait<T: Send + 'static>(
        &self,
        key: &str,
        timeout: Duration,
        work: impl Future<Output = Result<T, StorageError>> + Send + 'static,
    ) -> Result<T, StorageError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(work);
        }
        // Inside another runtime, where blocking on ours would panic: hand the work over
        // and wait for its result on this thread.
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = done.send(work.await);
        });
        result
            .recv_timeout(timeout + Duration::from_millis(50))
            .unwrap_or_else(|_| Err(StorageError::timeout(key, timeout)))
    }
}

/// The timeout of the primitives, which carry no handler configuration.
fn primitive_timeout(storage: &PostgresStorage) -> Duration {
    storage.db.options.timeout
}

impl Storage for PostgresStorage {
    fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        self.increment_by(key, 1, ttl)
    }

    fn increment_by(&self, key: &str, count: u64, ttl: Duration) -> Result<u64, StorageError> {
        let work = Work::Increment {
            key: key.to_owned(),
            count,
            ttl,
        };
        self.perform(work, primitive_timeout(self))?.count(key)
    }

    fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        let work = Work::Get {
            key: key.to_owned(),
        };
        self.perform(work, primitive_timeout(self))?.count(key)
    }

    fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        let work = Work::Expire {
            key: key.to_owned(),
            ttl,
        };
        self.perform(work, primitive_timeout(self)).map(drop)
    }

    fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        let work = Work::execute(request);
        let key = work.key().to_owned();
        self.perform(work, request.config.storage_timeout)?
            .snapshot(&key)
    }
}

/// The breakers under a prefix, as operators see them: one query over the table.
impl Admin for PostgresStorage {
    fn list(&self, prefix: &str) -> Result<Listing, StorageError> {
        let (db, prefix) = (self.db.clone(), prefix.to_owned());
        self.wait("list", ADMIN_TIMEOUT, async move { db.list(&prefix).await })
    }

    fn inspect(&self, prefix: &str, key: &str) -> Result<Option<BreakerInfo>, StorageError> {
        let (db, prefix, owned) = (self.db.clone(), prefix.to_owned(), key.to_owned());
        self.wait(key, ADMIN_TIMEOUT, async move {
            db.inspect(&prefix, &owned).await
        })
    }

    fn act(
        &self,
        prefix: &str,
        key: &str,
        action: Action,
        audit: Audit<'_>,
    ) -> Result<Option<BreakerInfo>, StorageError> {
        audit.check()?;
        let (db, prefix, owned) = (self.db.clone(), prefix.to_owned(), key.to_owned());
        let (actor, reason) = (
            audit.actor.map(str::to_owned),
            audit.reason.map(str::to_owned),
        );
        self.wait(key, ADMIN_TIMEOUT * 2, async move {
            let mut audit = Audit::NONE;
            if let Some(actor) = actor.as_deref() {
                audit = Audit::by(actor);
            }
            if let Some(reason) = reason.as_deref() {
                audit = audit.because(reason);
            }
            db.act(&prefix, &owned, action, audit).await
        })
    }
}
