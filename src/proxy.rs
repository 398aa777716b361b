//! A TCP proxy in front of a server, for faults a real server does not make on demand: it
//! can lose the next reply (read the server's answer, drop it and close both sides, as a
//! connection that died after the server ran the command would), or go silent (accept
//! connections and read requests, but never answer).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Faults {
    drop_reply: AtomicBool,
    silent: AtomicBool,
    /// Connections accepted while silent, kept open and unanswered.
    held: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    port: u16,
    faults: Arc<Faults>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                if shared.silent.load(Ordering::SeqCst) {
                    shared.held.lock().unwrap().push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_in, server_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let upstream = shared.clone();
                std::thread::spawn(move || pump(client_in, server_out, &upstream, false));
                let downstream = shared.clone();
                std::thread::spawn(move || pump(server, client, &downstream, true));
            }
        });
        Proxy { port, faults }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The next bytes the server sends are dropped and that connection closed.
    pub fn drop_next_reply(&self) {
        self.faults.drop_reply.store(true, Ordering::SeqCst);
    }

    /// From now on nothing is forwarded either way, and new connections are accepted and
    /// left unanswered.
    pub fn go_silent(&self) {
        self.faults.silent.store(true, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, faults: &Faults, replies: bool) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if faults.silent.load(Ordering::SeqCst) {
            continue;
        }
        if replies && faults.drop_reply.swap(false, Ordering::SeqCst) {
            break;
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    if faults.silent.load(Ordering::SeqCst) {
        // Keep the other side open and unanswered.
        faults.held.lock().unwrap().push(to);
        return;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
