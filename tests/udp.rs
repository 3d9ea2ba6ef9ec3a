//! UDP (`-u`, `-A udp`) on real sockets in private namespaces: listing
//! agrees with ss, and a kill does what the kernel's `udp_abort` does — a
//! connected socket is disconnected (its owner's next send fails with
//! EDESTADDRREQ, its pending error is ECONNABORTED), a socket bound to its
//! port stays where it is, and the verification counts what still matches.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::process::Command;

use common::*;

/// Inodes of the UDP sockets ss lists for `filter` (all states).
fn ss_udp_inodes(filter: &[&str]) -> BTreeSet<u64> {
    let out = Command::new("ss").args(["-Huane"]).args(filter).output().expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("ino:"))
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn inodes(doc: &serde_json::Value, key: &str) -> BTreeSet<u64> {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
        .iter()
        .map(|s| s["inode"].as_u64().unwrap())
        .collect()
}

fn connected(local: &str, to: &str) -> UdpSocket {
    let s = UdpSocket::bind(local).unwrap();
    s.connect(to).unwrap();
    s
}

/// `list -u` returns what `ss -ua` returns: connected and unconnected, IPv4
/// and IPv6, with a filter and without; `-A tcp,udp` both tables.
#[test]
fn udp_listing_agrees_with_ss() {
    require!(Netns);
    in_private_netns(|| {
        let _server = UdpSocket::bind("127.0.0.2:5353").unwrap();
        let _server6 = UdpSocket::bind("[::1]:5353").unwrap();
        let _a = connected("127.0.0.1:0", "127.0.0.2:5353");
        let _b = connected("127.0.0.1:4000", "127.0.0.2:5353");
        let _c = connected("[::1]:0", "[::1]:5353");
        let _d = connected("127.0.0.1:0", "127.0.0.3:53");
        let echo = Echo::start("127.0.0.2:0");
        let _tcp = Conn::open(echo.addr);

        for words in [vec![], vec!["dst", "127.0.0.2"], vec!["not", "dst", "127.0.0.2"], vec!["sport", "=", ":5353"]] {
            let mut args = vec!["list", "--json", "-u", "--state", "all"];
            args.extend(&words);
            let out = sockkill(&args);
            assert_eq!(code(&out), 0, "{words:?}: {}", stderr(&out));
            let doc = json(&out);
            assert!(doc["sockets"].as_array().unwrap().iter().all(|s| s["protocol"] == "udp"), "{doc}");
            assert_eq!(inodes(&doc, "sockets"), ss_udp_inodes(&words), "{words:?}: {doc}");
        }
        // Both tables: the TCP pair and listener join the six UDP sockets.
        let out = sockkill(&["list", "--json", "-A", "tcp,udp", "--state", "all"]);
        let doc = json(&out);
        let protocols: Vec<&str> =
            doc["sockets"].as_array().unwrap().iter().map(|s| s["protocol"].as_str().unwrap()).collect();
        assert_eq!(protocols.iter().filter(|p| **p == "udp").count(), 6, "{doc}");
        assert_eq!(protocols.iter().filter(|p| **p == "tcp").count(), 3, "{doc}");
        assert_eq!(doc["filter"]["protocols"], serde_json::json!(["tcp", "udp"]), "{doc}");
        // Without -u, TCP only, as before.
        let out = sockkill(&["list", "--json", "--state", "all"]);
        assert!(json(&out)["sockets"].as_array().unwrap().iter().all(|s| s["protocol"] == "tcp"));
    });
}

/// `kill -u dst X`: the sockets connected to X are disconnected (their next
/// send fails, EDESTADDRREQ), one bound to its port stays there unconnected,
/// and the run is clean because nothing connected to X remains — as ss sees
/// it too. Sockets connected elsewhere keep sending.
#[test]
fn a_udp_kill_disconnects_connected_sockets() {
    require!(Netns);
    in_private_netns(|| {
        let server = UdpSocket::bind("127.0.0.2:5353").unwrap();
        let auto = connected("127.0.0.1:0", "127.0.0.2:5353");
        let bound = connected("127.0.0.1:4000", "127.0.0.2:5353");
        let v6 = connected("[::ffff:127.0.0.1]:0", "[::ffff:127.0.0.2]:5353");
        let _other_server = UdpSocket::bind("127.0.0.3:53").unwrap();
        let other = connected("127.0.0.1:0", "127.0.0.3:53");
        for s in [&auto, &bound, &v6, &other] {
            s.send(b"before").unwrap();
        }

        let out = sockkill_in_netns(&["kill", "--json", "-u", "dst", "127.0.0.2"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["destroyed"], 3, "the two IPv4 clients and the IPv4-mapped one: {doc}");
        assert_eq!(doc["summary"]["clean"], true, "{doc}");
        for s in [&auto, &bound, &v6] {
            let e = s.send(b"after").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EDESTADDRREQ), "{e}");
            assert_eq!(s.take_error().unwrap().and_then(|e| e.raw_os_error()), Some(libc::ECONNABORTED));
        }
        other.send(b"after").expect("a socket connected elsewhere still sends");
        // No socket is connected to 127.0.0.2 any more (ss without -a: connected
        // ones, the default for UDP here too). An IPv6 socket keeps the peer's
        // address after the disconnect, and its owner's send rebinds it: UNCONN.
        let connected_to = Command::new("ss").args(["-Hune", "dst", "127.0.0.2"]).output().unwrap();
        assert!(connected_to.stdout.is_empty(), "{}", String::from_utf8_lossy(&connected_to.stdout));
        let out = sockkill(&["list", "--json", "-u", "dst", "127.0.0.2"]);
        assert!(json(&out)["sockets"].as_array().unwrap().is_empty(), "{}", json(&out));
        // The explicitly bound one stays on its port, unconnected; the server is untouched.
        let left = ss_udp_inodes(&["sport", "=", ":4000"]);
        assert_eq!(left.len(), 1, "{left:?}");
        server.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        assert!(server.recv_from(&mut buf).is_ok(), "the server received the datagrams sent before");
    });
}

/// `kill -u` aimed at a bound, unconnected socket: one destroy (its owner
/// sees ECONNABORTED once and keeps receiving), never a second, and the run
/// says the socket remains: exit 1, with the reason.
#[test]
fn a_bound_udp_socket_stays_and_the_run_says_so() {
    require!(Netns);
    in_private_netns(|| {
        let server = UdpSocket::bind("127.0.0.2:5353").unwrap();
        server.set_nonblocking(true).unwrap();
        // By default a UDP kill takes connected sockets only: the server is not one.
        let out = sockkill_in_netns(&["kill", "--json", "-u", "sport", "=", ":5353"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(json(&out)["summary"]["matched"], 0);
        let mut buf = [0u8; 16];
        assert_eq!(server.recv_from(&mut buf).unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "untouched");
        // Named by its state, it is destroyed once, and stays.
        let out = sockkill_in_netns(&["kill", "--json", "-u", "state", "unconn", "sport", "=", ":5353"]);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["destroyed"], 1, "{doc}");
        assert_eq!(doc["summary"]["passes"], 1, "a destroy that cannot end it is not repeated: {doc}");
        assert_eq!(doc["summary"]["remaining"], 1, "{doc}");
        assert!(doc["verdict_reason"].as_str().unwrap().contains("stay bound"), "{doc}");
        let e = server.recv_from(&mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"still here", "127.0.0.2:5353").unwrap();
        wait_until(std::time::Duration::from_secs(2), "the server to receive again", || {
            server.recv_from(&mut buf).is_ok()
        });
        assert_eq!(ss_udp_inodes(&["sport", "=", ":5353"]).len(), 1);
    });
}

/// Inodes of the UDP sockets connected to 127.0.0.2, as ss sees them.
fn connected_to_target() -> BTreeSet<u64> {
    ss_udp_inodes(&["state", "established", "dst", "127.0.0.2"])
}

/// The inodes a JSON report lists as destroyed.
fn destroyed_inodes(doc: &serde_json::Value) -> BTreeSet<u64> {
    destroyed_field(doc, "sockets", "inode")
}

/// The failure paths through `-u` and an expression tell the same story as
/// for TCP: an audit log that fills up after the first destroys (exit 1, the
/// report names exactly the sockets the kernel disconnected); stdout on
/// /dev/full after the destroys (exit 1, `failed` in the metrics and the
/// audit `end`); SIGTERM in a `--for` window (exit 1, interrupted).
#[test]
fn udp_failures_tell_one_story() {
    require!(Root);
    in_private_netns(|| {
        let _server = UdpSocket::bind("127.0.0.2:5353").unwrap();
        let dir = std::env::temp_dir().join(format!("sockkill-udp-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        assert_not_root_netns();

        // A 16 KiB audit log: the start event fits, a batch of destroyed lines does not.
        let clients: Vec<UdpSocket> = (0..1200).map(|_| connected("127.0.0.1:0", "127.0.0.2:5353")).collect();
        let before = connected_to_target();
        assert_eq!(before.len(), 1200);
        let prom = dir.join("full.prom");
        let script = format!(
            "mount -t tmpfs -o size=16k sockkill-test {mnt} && exec \"$0\" kill --json -u --max 0 dst 127.0.0.2 \
             --audit-log {mnt}/audit.log --metrics-file {prom}",
            mnt = dir.join("mnt").display(),
            prom = prom.display()
        );
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", &script, BIN])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert!(doc["error"].as_str().is_some_and(|e| e.contains("audit log")), "{doc}");
        let destroyed = destroyed_inodes(&doc);
        assert!(!destroyed.is_empty() && destroyed.len() < 1200, "stopped part-way: {}", destroyed.len());
        let gone: BTreeSet<u64> = before.difference(&connected_to_target()).copied().collect();
        assert_eq!(gone, destroyed, "the kernel disconnected exactly the reported sockets");
        let metrics = std::fs::read_to_string(&prom).unwrap();
        assert!(metrics.contains("sockkill_exit_code{command=\"kill\",verdict=\"failed\"} 1"), "{metrics}");
        assert!(metrics.contains(&format!("sockkill_sockets_destroyed{{command=\"kill\"}} {}", destroyed.len())));
        drop(clients);

        // Stdout on /dev/full, after the destroys.
        let clients: Vec<UdpSocket> = (0..10).map(|_| connected("127.0.0.1:0", "127.0.0.2:5353")).collect();
        let (audit, prom) = (dir.join("a.log"), dir.join("m.prom"));
        let (a, p) = (audit.to_string_lossy().into_owned(), prom.to_string_lossy().into_owned());
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let out = Command::new(BIN)
            .args(["kill", "-u", "dst", "127.0.0.2", "--audit-log", &a, "--metrics-file", &p])
            .stdin(std::process::Stdio::null())
            .stdout(full)
            .output()
            .unwrap();
        assert_eq!(code(&out), 1, "destroyed, then the report failed: {}", stderr(&out));
        assert!(connected_to_target().is_empty(), "the kernel: every client was disconnected");
        let metrics = std::fs::read_to_string(&prom).unwrap();
        assert!(metrics.contains("sockkill_exit_code{command=\"kill\",verdict=\"failed\"} 1"), "{metrics}");
        let log = std::fs::read_to_string(&audit).unwrap();
        let end: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!((end["event"].as_str(), end["exit_code"].as_i64()), (Some("end"), Some(1)), "{log}");
        assert!(end["error"].as_str().is_some_and(|e| e.contains("writing output")), "{end}");
        drop(clients);

        // SIGTERM in a --for window, after the first pass disconnected everything.
        let clients: Vec<UdpSocket> = (0..5).map(|_| connected("127.0.0.1:0", "127.0.0.2:5353")).collect();
        let child = Command::new(BIN)
            .args(["kill", "--json", "-u", "dst", "127.0.0.2", "--for", "5s"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(std::time::Duration::from_secs(5), "the first pass", || connected_to_target().is_empty());
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["interrupted"], true, "{doc}");
        assert_eq!(doc["summary"]["destroyed"], 5, "{doc}");
        assert_eq!(doc["exit_code"], 1, "{doc}");
        for c in &clients {
            assert_eq!(c.send(b"x").unwrap_err().raw_os_error(), Some(libc::EDESTADDRREQ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
