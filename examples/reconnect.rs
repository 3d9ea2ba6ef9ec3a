//! sockkill as a library in someone else's CI: "cut my service's connections
//! to its database, and check that it reconnects".
//!
//! Everything happens in a private network namespace made for the purpose (as
//! root, or `unshare -Ur cargo run --example reconnect`): a stand-in database
//! (an echo server), a service that keeps a connection to it and reconnects
//! when the connection breaks, and `sockkill::kill` between them.
//!
//!     cargo run --example reconnect

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sockkill::filter::parse_cidr;
use sockkill::{Filter, KillOptions, PortRange};

/// What the service saw: the errors that broke its connections, and how often it connected.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub connects: usize,
    pub errors: Vec<std::io::ErrorKind>,
}

/// A service that keeps one connection to `db`, talking every 20 ms, and
/// reconnects 50 ms after it breaks.
fn service(db: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut conn) = TcpStream::connect(db) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        seen.lock().map(|mut s| s.connects += 1).ok();
        while !stop.load(Ordering::Relaxed) {
            let mut b = [0u8; 1];
            if let Err(e) = conn.write_all(b"q").and_then(|_| conn.read_exact(&mut b)) {
                seen.lock().map(|mut s| s.errors.push(e.kind())).ok();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the scenario in a new namespace; returns what the service saw and
/// the number of sockets sockkill destroyed.
pub fn scenario() -> Result<(Seen, usize), String> {
    sockkill::netns::run_in_new_netns(|| -> Result<(Seen, usize), String> {
        let db = TcpListener::bind("127.0.0.1:5432").map_err(|e| e.to_string())?;
        let addr = db.local_addr().map_err(|e| e.to_string())?;
        std::thread::spawn(move || {
            for mut c in db.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut b = [0u8; 1];
                    while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
                });
            }
        });
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let svc = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || service(addr, stop, seen))
        };
        let wait_for = |what: &str, cond: &dyn Fn(&Seen) -> bool| -> Result<(), String> {
            let end = Instant::now() + Duration::from_secs(10);
            while !seen.lock().map(|s| cond(&s)).unwrap_or(false) {
                if Instant::now() > end {
                    return Err(format!("timed out waiting for {what}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        };
        wait_for("the service to connect", &|s| s.connects == 1)?;

        // The service's connections to the database, and only those: peer 127.0.0.1:5432.
        let filter = Filter {
            dst: vec![parse_cidr("127.0.0.1").map_err(|e| e.to_string())?],
            dport: vec![PortRange::one(addr.port())],
            ..Filter::default()
        };
        let report = sockkill::kill(None, filter, &KillOptions::default()).map_err(|e| e.to_string())?;
        let destroyed = report.summary.destroyed;

        wait_for("the service to reconnect", &|s| s.connects >= 2)?;
        stop.store(true, Ordering::Relaxed);
        let _ = svc.join();
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        Ok((seen, destroyed))
    })
    .map_err(|e| e.to_string())?
}

#[allow(dead_code)] // also compiled into tests/library.rs, which calls scenario() itself
fn main() {
    match scenario() {
        Ok((seen, destroyed)) => {
            println!(
                "sockkill destroyed {destroyed} connection(s); the service saw {:?} and connected {} times",
                seen.errors, seen.connects
            );
        }
        Err(e) => {
            eprintln!("reconnect: {e}");
            std::process::exit(1);
        }
    }
}
