//! What an operator uses around the core: the enforcement window, the metrics
//! textfile, shell completions and the man page.

#[macro_use]
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
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let stop = Arc::new(AtomicBool::new(false));
        let lives = Arc::new(Mutex::new(Vec::new()));
        let client = {
            let (stop, lives) = (stop.clone(), lives.clone());
            std::thread::spawn(move || reconnecting_client(up.addr, stop, lives))
        };
        wait_until(Duration::from_secs(5), "the client's first connection", || !lives.lock().unwrap().is_empty());
        let out = sockkill_in_netns(&["kill", "--json", "--dst", "127.0.0.2", "--for", "2s", "--interval", "100ms"]);
        let exited = Instant::now();
        let doc = json(&out);
        assert!(matches!(code(&out), 0 | 1), "{}", stderr(&out));
        assert_eq!(code(&out), if doc["summary"]["remaining"] == 0 { 0 } else { 1 });
        // A connection made after the window stays up (for a second, well past the interval).
        wait_until(Duration::from_secs(10), "a connection after the window, alive for a second", || {
            lives.lock().unwrap().iter().any(|l| {
                l.opened > exited + Duration::from_millis(100)
                    && l.ended.is_none()
                    && l.opened.elapsed() > Duration::from_secs(1)
            })
        });
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
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conns: Vec<Conn> = (0..3).map(|_| Conn::open(up.addr)).collect();
        let dir = std::env::temp_dir().join(format!("sockkill-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sockkill.prom");
        std::fs::write(&path, "old contents\n").unwrap();
        let out = sockkill_in_netns(&["kill", "--dst", "127.0.0.2", "--metrics-file", path.to_str().unwrap()]);
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

/// Each subcommand's completions offer that subcommand's own flags.
#[test]
fn completions_offer_each_subcommands_own_flags() {
    let own: [(&str, &[&str]); 6] = [
        (
            "list",
            &[
                "--dst",
                "--dport",
                "--src",
                "--sport",
                "--state",
                "--pid",
                "--cgroup",
                "--dev",
                "--mark",
                "--netns",
                "--processes",
            ],
        ),
        (
            "kill",
            &[
                "--dst",
                "--cgroup",
                "--dev",
                "--mark",
                "--dry-run",
                "--no-verify",
                "--allow-catch-all",
                "--max",
                "--audit-log",
                "--for",
                "--interval",
                "--metrics-file",
            ],
        ),
        (
            "haproxy",
            &[
                "--socket",
                "--server",
                "--addr",
                "--master-socket",
                "--grace",
                "--settle",
                "--deadline",
                "--api-timeout",
                "--no-shutdown",
                "--for",
                "--max",
            ],
        ),
        ("check", &["--netns"]),
        ("completions", &[]),
        ("man", &["--out"]),
    ];
    let bash = String::from_utf8(sockkill(&["completions", "bash"]).stdout).unwrap();
    let fish = String::from_utf8(sockkill(&["completions", "fish"]).stdout).unwrap();
    let zsh = String::from_utf8(sockkill(&["completions", "zsh"]).stdout).unwrap();
    for (sub, flags) in own {
        // bash: the subcommand's `opts="..."` line.
        let block =
            bash.split(&format!("sockkill__subcmd__{sub})")).nth(1).unwrap_or_else(|| panic!("bash: no {sub} block"));
        let opts = block.lines().find(|l| l.trim_start().starts_with("opts=")).unwrap();
        // zsh: the subcommand's `(sub)` block, up to the next one.
        let zblock: String = zsh
            .lines()
            .skip_while(|l| l.trim() != format!("({sub})"))
            .take_while(|l| l.trim() != ";;")
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!zblock.is_empty(), "zsh: no {sub} block");
        for flag in flags {
            assert!(opts.split_whitespace().any(|o| o == *flag), "bash {sub}: no {flag} in {opts}");
            let name = flag.trim_start_matches("--");
            assert!(
                fish.lines().any(|l| l.contains(&format!("__fish_sockkill_using_subcommand {sub}\""))
                    && l.contains(&format!(" -l {name} "))),
                "fish {sub}: no {flag}"
            );
            assert!(
                zblock.lines().any(
                    |l| l.starts_with('\'') && (l.contains(&format!("{flag}=")) || l.contains(&format!("{flag}[")))
                ),
                "zsh {sub}: no {flag}"
            );
        }
    }
    // Flags of one subcommand are not offered for another.
    let check = bash.split("sockkill__subcmd__check)").nth(1).unwrap();
    let opts = check.lines().find(|l| l.trim_start().starts_with("opts=")).unwrap();
    assert!(!opts.contains("--dry-run") && !opts.contains("--socket"), "{opts}");
    let out = sockkill(&["completions", "tcsh"]);
    assert_eq!(code(&out), 2);
}

/// Every man page a page refers to is written, each with EXIT STATUS and EXAMPLES.
#[test]
fn man_pages_exist_for_every_reference() {
    let dir = std::env::temp_dir().join(format!("sockkill-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = sockkill(&["man", "--out", dir.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let pages: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    for sub in ["", "-list", "-kill", "-haproxy", "-check", "-completions", "-man"] {
        assert!(pages.contains(&format!("sockkill{sub}.1")), "sockkill{sub}.1 missing: {pages:?}");
    }
    for page in &pages {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(text.contains(".SH \"EXIT STATUS\"") && text.contains(".SH EXAMPLES"), "{page}");
        // Every sockkill-NAME(1) it mentions exists.
        for piece in text.split("sockkill\\-").skip(1) {
            let name: String = piece.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
            let rest = &piece[name.len()..];
            if rest.starts_with("(1)") || rest.starts_with("\\fR(1)") {
                assert!(
                    pages.contains(&format!("sockkill-{name}.1")),
                    "{page} refers to sockkill-{name}(1), which is missing"
                );
            }
        }
    }
    // The page on stdout renders (man -l - reads it).
    let out = sockkill(&["man"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH sockkill"));
    let _ = std::fs::remove_dir_all(&dir);
}
