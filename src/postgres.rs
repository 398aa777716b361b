//! The PostgreSQL server the tests use: its URL (`CIRCUITPY_POSTGRES_URL`, by default the
//! local server), a probe that [skips](crate::services::skip) when it is unreachable, and a
//! table of its own for each test, dropped when the test ends.

use circuitpy::{PostgresOptions, PostgresStorage};

use crate::services;

/// The variable that names the server.
pub const URL_VAR: &str = "CIRCUITPY_POSTGRES_URL";

/// The server when [`URL_VAR`] is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The variable that tells a child process its parent's table.
pub const TABLE_VAR: &str = "CIRCUITPY_TEST_POSTGRES_TABLE";

/// The server's URL, reachable or not.
pub fn url() -> String {
    std::env::var(URL_VAR).unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// The server's URL, or `None` (after [`services::skip`]) when it is unreachable.
pub fn server() -> Option<String> {
    let url = url();
    match PostgresStorage::connect_with(&url, PostgresOptions::default().table("circuitpy_probe")) {
        Ok(_) => Some(url),
        Err(error) => services::skip(format!(
            "PostgreSQL at {url} is unreachable ({error}; {URL_VAR} names another server)"
        )),
    }
}

/// A table name of its own for one test: `cb_{name}_{pid}_{nanos}`.
pub fn fresh_table(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cb_{name}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// Storage options on `table`.
pub fn options(table: &str) -> PostgresOptions {
    PostgresOptions::default().table(table)
}

/// Drops a test's table, counts table and function when the test ends, pass or fail.
pub struct Cleanup {
    url: String,
    table: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let table = &self.table;
        let sql = format!(
            "DROP FUNCTION IF EXISTS {table}_op; DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_counts;"
        );
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&sql).await;
                }
            });
        }
    }
}

/// A [`Cleanup`] of `table` on the server at `url`; keep it alive for the whole test.
pub fn cleanup(url: &str, table: &str) -> Cleanup {
    Cleanup {
        url: url.to_owned(),
        table: table.to_owned(),
    }
}

/// A plain client, for looking at and planting rows and for killing connections; its
/// connection runs on the current tokio runtime.
pub async fn raw_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[cfg(feature = "postgres-tls")]
pub use tls::{TestCa, TlsServer};

/// A throwaway PostgreSQL server that accepts TLS connections only, with certificates made
/// in the test (feature `postgres-tls`).
#[cfg(feature = "postgres-tls")]
mod tls {
    use std::net::TcpListener;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };

    use crate::services;

    /// The variable that names the directory of `initdb`, `pg_ctl` and `postgres`.
    pub const BIN_VAR: &str = "CIRCUITPY_POSTGRES_BIN";

    /// A certificate authority of the test's own.
    pub struct TestCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
    }

    impl TestCa {
        /// A new CA (an ECDSA P-256 key), named `name`.
        pub fn new(name: &str) -> TestCa {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            TestCa { issuer }
        }

        /// The CA's certificate, PEM.
        pub fn pem(&self) -> String {
            self.issuer.pem()
        }

        /// A server certificate for `names` (host names or IP addresses) signed by this
        /// CA: (certificate PEM, private key PEM).
        pub fn server_certificate(&self, names: &[&str]) -> (String, String) {
            let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, "circuitpy test server");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().unwrap();
            let certificate = params.signed_by(&key, &self.issuer).unwrap();
            (certificate.pem(), key.serialize_pem())
        }
    }

    /// The directory of the server binaries: [`BIN_VAR`], else the newest
    /// `/usr/lib/postgresql/*/bin` (Debian's), else PATH.
    fn binaries() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(BIN_VAR) {
            return Some(PathBuf::from(dir));
        }
        let newest = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("initdb").is_file())
            .max();
        if let Some((_, bin)) = newest {
            return Some(bin);
        }
        let on_path = Command::new("initdb")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        on_path.then(PathBuf::new)
    }

    /// The uid and gid of the OS user `postgres` (the server refuses to run as root).
    fn postgres_user() -> Option<(u32, u32)> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
    }

    fn running_as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
    }

    /// A server on a free loopback port whose `pg_hba.conf` admits TLS connections only
    /// (`hostssl`, trust), stopped and removed on drop.
    pub struct TlsServer {
        dir: PathBuf,
        bin: PathBuf,
        user: Option<(u32, u32)>,
        port: u16,
        child: Option<std::process::Child>,
    }

    impl TlsServer {
        /// Starts a server whose certificate `ca` signed for `127.0.0.1` and `localhost`;
        /// `None` (after [`services::skip`]) when the server binaries are missing.
        pub fn start(ca: &TestCa) -> Option<TlsServer> {
            let Some(bin) = binaries() else {
                return services::skip(format!(
                    "initdb is not installed (looked in {BIN_VAR}, /usr/lib/postgresql/*/bin and PATH)"
                ));
            };
            let user = if running_as_root() {
                match postgres_user() {
                    Some(user) => Some(user),
                    None => {
                        return services::skip(
                            "running as root without an OS user `postgres` to run the server as",
                        );
                    }
                }
            } else {
                None
            };
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            let dir =
                std::env::temp_dir().join(format!("circuitpy-pg-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let server = TlsServer {
                dir,
                bin,
                user,
                port,
                child: None,
            };
            server.own(&server.dir);
            let data = server.data();
            server.run(
                "initdb",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-U".as_ref(),
                    "postgres".as_ref(),
                    "-A".as_ref(),
                    "trust".as_ref(),
                    "--no-sync".as_ref(),
                    "-E".as_ref(),
                    "UTF8".as_ref(),
                ],
            );
            let (certificate, key) = ca.server_certificate(&["127.0.0.1", "localhost"]);
            for (name, content) in [("server.crt", &certificate), ("server.key", &key)] {
                let path = data.join(name);
                std::fs::write(&path, content).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
                server.own(&path);
            }
            std::fs::write(server.ca_file(), ca.pem()).unwrap();
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.0/8 trust\nhostssl all all ::1/128 trust\n",
            )
            .unwrap();
            let settings = format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1,127.0.0.2'\nunix_socket_directories = '{}'\n\
                 ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
                 shared_buffers = 16MB\nmax_connections = 40\n",
                server.dir.display()
            );
            let conf = data.join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(&settings);
            std::fs::write(&conf, text).unwrap();
            // The postmaster is this process's child (not daemonised by `pg_ctl start`), so
            // that it is reaped when it stops, whatever runs as PID 1.
            let log = std::fs::File::create(server.dir.join("server.log")).unwrap();
            let child = server
                .command("postgres")
                .arg("-D")
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("postgres starts");
            let mut server = server;
            server.child = Some(child);
            server.wait_ready();
            Some(server)
        }

        /// Waits until the server accepts connections (`pg_isready` on its socket).
        fn wait_ready(&mut self) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let ready = self
                    .command("pg_isready")
                    .arg("-q")
                    .arg("-h")
                    .arg(&self.dir)
                    .arg("-p")
                    .arg(self.port.to_string())
                    .status()
                    .is_ok_and(|status| status.success());
                if ready {
                    return;
                }
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if exited.is_some() || std::time::Instant::now() > deadline {
                    let log =
                        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    panic!("the TLS test server did not start ({exited:?}):\n{log}");
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }

        fn data(&self) -> PathBuf {
            self.dir.join("data")
        }

        /// The CA certificate (PEM) that signed the server's.
        pub fn ca_file(&self) -> PathBuf {
            self.dir.join("ca.pem")
        }

        /// The server's port on 127.0.0.1.
        pub fn port(&self) -> u16 {
            self.port
        }

        /// The URL of database `postgres` as user `postgres`, with `params` (e.g.
        /// `sslmode=require`) as its query.
        pub fn url(&self, params: &str) -> String {
            let query = if params.is_empty() {
                String::new()
            } else {
                format!("?{params}")
            };
            format!(
                "postgres://postgres@127.0.0.1:{}/postgres{query}",
                self.port
            )
        }

        fn own(&self, path: &Path) {
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
            }
        }

        fn command(&self, program: &str) -> Command {
            let mut command = Command::new(self.bin.join(program));
            if let Some((uid, gid)) = self.user {
                command.uid(uid).gid(gid);
            }
            command.current_dir(&self.dir);
            command
        }

        /// Runs a server binary to completion; its output becomes the panic message if it
        /// fails.
        fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
            let output = self
                .command(program)
                .args(args)
                .output()
                .unwrap_or_else(|error| panic!("{program} did not start: {error}"));
            if !output.status.success() {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                panic!(
                    "{program} failed ({}):\n{}\n{}\n{log}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }

    impl Drop for TlsServer {
        fn drop(&mut self) {
            let data = self.data();
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if let Some(mut child) = self.child.take() {
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = child.kill();
                }
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
