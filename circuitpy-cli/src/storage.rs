//! The storage a URL names, opened for the admin, and the URL's password kept out of every
//! message.

use std::path::PathBuf;
use std::time::Duration;

use circuitpy::admin::Admin;
use circuitpy::{PostgresOptions, PostgresStorage, SqliteStorage};

use crate::Failure;

/// One storage, behind the admin trait.
pub(crate) enum Connected {
    Redis(redis::Client),
    Postgres(Box<PostgresStorage>),
    Sqlite(SqliteStorage),
}

impl Connected {
    pub(crate) fn open(url: &str, table: Option<&str>) -> Result<Connected, Failure> {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        match scheme {
            "redis" | "rediss" => {
                if table.is_some() {
                    return Err(Failure("--table is for PostgreSQL and SQLite".into()));
                }
                redis::Client::open(url)
                    .map(Connected::Redis)
                    .map_err(|error| Failure(format!("invalid Redis URL: {error}")))
            }
            "postgres" | "postgresql" => {
                let mut options = PostgresOptions::default().timeout(Duration::from_secs(5));
                if let Some(table) = table {
                    options = options.table(table);
                }
                // libpq's variable, for a URL that does not name the CA itself.
                if let Some(path) = std::env::var_os("PGSSLROOTCERT")
                    && !url.contains("sslrootcert=")
                {
                    options = options.ca_file(path);
                }
                let storage = PostgresStorage::connect_with(url, options).map_err(|error| {
                    Failure(format!(
                        "cannot reach PostgreSQL: {}",
                        Failure::from(error).0
                    ))
                })?;
                Ok(Connected::Postgres(Box::new(storage)))
            }
            "sqlite" => {
                let path = PathBuf::from(&url["sqlite://".len()..]);
                if !path.is_file() {
                    return Err(Failure(format!("no SQLite database at {}", path.display())));
                }
                let storage = match table {
                    Some(table) => SqliteStorage::open_with_table(&path, table),
                    None => SqliteStorage::open(&path),
                };
                storage
                    .map(Connected::Sqlite)
                    .map_err(|error| Failure(format!("cannot open the SQLite database: {error}")))
            }
            _ => Err(Failure(
                "--url must start with redis://, rediss://, postgres:// or sqlite://".into(),
            )),
        }
    }

    /// What the dashboard's header calls it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Connected::Redis(_) => "Redis",
            Connected::Postgres(_) => "PostgreSQL",
            Connected::Sqlite(_) => "SQLite",
        }
    }

    pub(crate) fn admin(&self) -> &dyn Admin {
        match self {
            Connected::Redis(client) => client,
            Connected::Postgres(storage) => &**storage,
            Connected::Sqlite(storage) => storage,
        }
    }
}

/// `text` without the password of `url` (`scheme://user:password@host`) and without the
/// credentials of any URL in it.
pub(crate) fn redact(text: &str, url: &str) -> String {
    circuitpy::admin::redact(text, password_of(url))
}

fn password_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_come_out() {
        let url = "redis://ops:s3cret@cache:6379/0";
        assert_eq!(
            redact("WRONGPASS s3cret for redis://ops:s3cret@cache", url),
            "WRONGPASS *** for redis://***@cache"
        );
        assert_eq!(password_of("postgres://app@db/app"), None);
        assert_eq!(password_of("postgres://app:pw@db/app"), Some("pw"));
    }
}
