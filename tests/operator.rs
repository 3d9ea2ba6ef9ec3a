//! What an operator uses around the core: the enforcement window, the metrics
//! textfile, shell completions and the man page.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One connection of the reconnecting client: when it was opened and how it ended.
#[derive(Debug, Clone)]
struct Life {
    opened: Instant,
    ended: Option<(Instant, i32)>,
}

/// A client that keeps a connection open, talking every 50 ms, and reconnects
/// 300 ms after it breaks (longer than the tool's interval).
fn reconnecting_client(to: std::net::SocketAddr, stop: Arc<AtomicBool>, lives: Arc<Mutex<Vec<Life>>>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(to) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let idx = {
            let mut l = lives.lock().unwrap();
            l.push(Life { opened: Instant::now(), ended: None });
            l.len() - 1
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let mut b = [0u8; 1];
            let r = s.write_all(b"x").and_then(|_| s.read_exact(&mut b));
            if let Err(e) = r {
                lives.lock().unwrap()[idx].ended = Some((Instant::now(), e.raw_os_error().unwrap_or(-1)));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn enforcement_window_ends_every_connection_made_during_it() {
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let stop = Arc::new(AtomicBool::new(false));
        let lives = Arc::new(Mutex::new(Vec::new()));
        let client = {
            let (stop, lives) = (stop.clone(), lives.clone());
            std::thread::spawn(move || reconnecting_client(up.addr, stop, lives))
        };
        std::thread::sleep(Duration::from_millis(200));
        let out = sockkill_kill(&["kill", "--json", "--dst", "127.0.0.2", "--for", "2s", "--interval", "100ms"]);
        let exited = Instant::now();
        let doc = json(&out);
        assert!(matches!(code(&out), 0 | 1), "{}", stderr(&out));
        assert_eq!(code(&out), if doc["summary"]["remaining"] == 0 { 0 } else { 1 });
        // A connection made after the window stays up.
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap();
        let lives = lives.lock().unwrap().clone();
        let during: Vec<&Life> = lives.iter().filter(|l| l.opened < exited - Duration::from_millis(250)).collect();
        assert!(during.len() >= 3, "the client should have reconnected during the window: {lives:?}");
        for l in &during {
            let (_, errno) =
                l.ended.unwrap_or_else(|| panic!("a connection made during the window survived: {lives:?}"));
            assert!(errno == libc::ECONNABORTED || errno == libc::ECONNRESET, "{lives:?}");
        }
        let after: Vec<&Life> = lives.iter().filter(|l| l.opened > exited + Duration::from_millis(100)).collect();
        assert!(!after.is_empty(), "no connection after the window: {lives:?}");
        assert!(after.iter().all(|l| l.ended.is_none()), "a connection after the window was ended: {lives:?}");
        assert!(doc["summary"]["destroyed"].as_u64().unwrap() as usize >= during.len());
    });
}

#[test]
fn metrics_file_is_written_atomically() {
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conns: Vec<Conn> = (0..3).map(|_| Conn::open(up.addr)).collect();
        let dir = std::env::temp_dir().join(format!("sockkill-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sockkill.prom");
        std::fs::write(&path, "old contents\n").unwrap();
        let out = sockkill_kill(&["kill", "--dst", "127.0.0.2", "--metrics-file", path.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("sockkill_sockets_destroyed{command=\"kill\"} 3\n"), "{text}");
        assert!(text.contains("sockkill_sockets_remaining{command=\"kill\"} 0\n"), "{text}");
        assert!(text.contains("# TYPE sockkill_duration_seconds gauge"), "{text}");
        assert!(!text.contains("old contents"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "temporary file left behind");
        for c in &mut conns {
            c.assert_killed();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    });
}

#[test]
fn completions_and_man_page_cover_every_subcommand() {
    let subcommands = ["list", "kill", "haproxy", "check", "completions", "man"];
    for shell in ["bash", "zsh", "fish"] {
        let out = sockkill(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in subcommands {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
        assert!(
            text.contains("dst") && text.contains("server") && text.contains("netns"),
            "{shell} completion lacks flags"
        );
    }
    let out = sockkill(&["man"]);
    assert_eq!(code(&out), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(".ie") || text.contains(".TH"), "not roff");
    for sub in subcommands {
        assert!(text.contains(sub), "man page lacks {sub}");
    }
    let out = sockkill(&["completions", "tcsh"]);
    assert_eq!(code(&out), 2);
}
