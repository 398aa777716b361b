//! A throwaway `redis-server` for the Redis tests and benchmarks: started from PATH on a
//! free loopback port, killed on drop, and killed when the test process ends even if it is
//! never dropped (a `static`) or the process dies. Without `redis-server` it
//! [skips](crate::services::skip).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services;

/// Whether `redis-server` is on PATH; [`services::skip`] when it is not.
fn installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    found || services::skip::<()>("redis-server is not on PATH").is_some()
}

/// A `redis-server` child process on a port of its own.
pub struct RedisServer {
    child: Option<Child>,
    /// A shell reading this process's pipe, which kills the server when the pipe closes:
    /// when this process exits, however it exits.
    watchdog: Option<Child>,
    port: u16,
    args: Vec<String>,
    /// The port speaks TLS only: readiness is a TCP connect, not a PING.
    tls: bool,
}

impl RedisServer {
    /// A server on a free port, or `None` (after a loud notice) when `redis-server` is not
    /// installed.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// A server started with extra arguments (e.g. `["--requirepass", "pw"]`).
    pub fn start_with(args: &[&str]) -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            child: None,
            watchdog: None,
            port,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            tls: false,
        };
        server.spawn();
        Some(server)
    }

    /// A server that speaks only TLS, with a certificate for 127.0.0.1 signed by a CA made
    /// with `openssl` in `dir`; returns the server and the CA certificate (PEM). `None`
    /// when `redis-server` or `openssl` is missing.
    pub fn start_tls(dir: &std::path::Path) -> Option<(RedisServer, Vec<u8>)> {
        if !installed() {
            return None;
        }
        let openssl = |args: &[&str]| {
            Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        let made = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=circuitpy test CA",
        ]) && openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]) && openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]);
        if !made {
            return services::skip("openssl could not make test certificates");
        }
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut server = RedisServer {
            child: None,
            watchdog: None,
            port,
            args: vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                path("server.crt"),
                "--tls-key-file".into(),
                path("server.key"),
                "--tls-ca-cert-file".into(),
                path("ca.crt"),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            tls: true,
        };
        server.spawn();
        Some((server, std::fs::read(dir.join("ca.crt")).unwrap()))
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.watchdog = Command::new("sh")
            .args([
                "-c",
                "read _; kill -CONT \"$0\" 2>/dev/null; kill -9 \"$0\" 2>/dev/null",
                &child.id().to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.tls {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                assert!(Instant::now() < deadline, "redis-server did not listen");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // A PING answered (even by "NOAUTH" on a server with a password) means it is up.
            let answered = std::net::TcpStream::connect(("127.0.0.1", self.port))
                .ok()
                .and_then(|mut stream| {
                    use std::io::{Read, Write};
                    stream
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .ok()?;
                    stream.write_all(b"PING\r\n").ok()?;
                    let mut buffer = [0u8; 64];
                    let read = stream.read(&mut buffer).ok()?;
                    (read > 0).then_some(())
                })
                .is_some();
            if answered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> ::redis::Client {
        ::redis::Client::open(self.url()).expect("a valid URL")
    }

    /// A plain connection, for looking at and planting keys.
    pub fn connection(&self) -> ::redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connects")
    }

    fn pid(&self) -> String {
        self.child.as_ref().expect("running").id().to_string()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Freezes the server: connections stay open and nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server; its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
