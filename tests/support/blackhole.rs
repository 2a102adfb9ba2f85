//! A TCP proxy on loopback that can make a path go silent the way a carrier
//! NAT does when it forgets a mapping: bytes stop flowing, nothing is
//! reset, both ends keep their sockets open and hear nothing. Threads and
//! blocking sockets, so it runs beside any runtime the test uses.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    /// New connections are swallowed too (the whole path is down).
    blackhole: AtomicBool,
    /// One flag per connection ever accepted: set, it forwards nothing.
    frozen: Mutex<Vec<Arc<AtomicBool>>>,
    accepted: AtomicUsize,
    stop: AtomicBool,
}

pub struct BlackholeProxy {
    pub addr: String,
    shared: Arc<Shared>,
}

impl BlackholeProxy {
    /// Listens on a free loopback port and forwards each connection to `target`.
    pub fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared::default());
        let target = target.to_string();
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                accepting.accepted.fetch_add(1, Ordering::SeqCst);
                let frozen = Arc::new(AtomicBool::new(accepting.blackhole.load(Ordering::SeqCst)));
                accepting.frozen.lock().unwrap().push(frozen.clone());
                let shared = accepting.clone();
                let target = target.clone();
                std::thread::spawn(move || connect(client, &target, frozen, shared));
            }
        });
        Self { addr, shared }
    }

    /// The connections open now go silent for good; new ones pass (a NAT
    /// that forgot its mappings).
    pub fn forget_existing(&self) {
        for flag in self.shared.frozen.lock().unwrap().iter() {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// Everything goes silent, new connections included, until `restore`.
    pub fn blackhole(&self) {
        self.shared.blackhole.store(true, Ordering::SeqCst);
        self.forget_existing();
    }

    /// New connections pass again; the ones that went silent stay silent.
    pub fn restore(&self) {
        self.shared.blackhole.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn connect(client: TcpStream, target: &str, frozen: Arc<AtomicBool>, shared: Arc<Shared>) {
    // A connection swallowed at birth: held open, never forwarded, even
    // after the path returns (the client's handshake hangs, as behind a
    // dead path, until it gives up).
    if frozen.load(Ordering::SeqCst) {
        while !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        drop(client);
        return;
    }
    let Ok(server) = TcpStream::connect(target) else {
        return;
    };
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let (up_frozen, up_shared) = (frozen.clone(), shared.clone());
    std::thread::spawn(move || pump(client, server, up_frozen, up_shared));
    pump(server2, client2, frozen, shared);
}

/// Copies `from` to `to` until either end closes; while `frozen`, reads
/// nothing at all, so the sender's bytes pile up unacknowledged by anyone
/// who could answer.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>, shared: Arc<Shared>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                // Frozen while this read was in flight: these bytes are lost.
                if frozen.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
