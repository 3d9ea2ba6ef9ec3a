//! Edges a root tool must not get wrong: closed pipes on every output path,
//! an unwritable stderr, signals ending every wait at once, the family rule
//! for listeners on IPv4-mapped addresses, link-local addresses.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::farm::{Farm, Group};
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Runs sockkill with stdout into a pipe whose reader takes one line and
/// closes it (`| head -1`); returns the exit status and stderr.
fn into_head_1(args: &[&str]) -> (i32, String, String) {
    assert_not_root_netns();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    // The reader is gone now (dropped with the BufReader).
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    (status.code().unwrap_or(-1), first, err)
}

/// A reader that goes away early is a normal end on every output path: list
/// and kill, text and JSON, and the kill's destroys are done.
#[test]
fn a_closed_stdout_is_a_normal_end() {
    require!(Root);
    in_private_netns(|| {
        let farm = Farm::build(&[Group::new("127.0.3.1", 1000), Group::new("127.0.4.1", 8000)]).unwrap();
        for args in [
            vec!["list", "--state", "all"],
            vec!["list", "--state", "all", "--json"],
            vec!["list", "--state", "all", "-p"],
        ] {
            let (code, first, err) = into_head_1(&args);
            assert_eq!(code, 0, "{args:?}: {err}");
            assert!(!first.is_empty(), "{args:?}");
            assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{args:?}: {err}");
        }
        let (code, first, err) = into_head_1(&["kill", "--json", "-q", "--dst", "127.0.3.1"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(first.trim(), "{");
        assert!(!err.contains("Broken pipe"), "{err}");
        // The destroys were done all the same.
        assert!(dump_dst("127.0.3.1").is_empty());
        let alive = farm.verify(&[true, true]);
        assert_eq!(alive[0].1, 0, "targets left alive");
        assert_eq!(alive[1], (8000, 8000), "background touched");
    });
}

/// Logging and the error line never panic on an unwritable stderr.
#[test]
fn an_unwritable_stderr_is_not_a_panic() {
    for stderr in ["full", "closed"] {
        let mut cmd = Command::new("sh");
        let redirect = if stderr == "full" { "2>/dev/full" } else { "2>&-" };
        cmd.args(["-c", &format!("exec \"$0\" list --netns sockkill-no-such-ns -v {redirect}"), BIN]);
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert_eq!(code(&out), 2, "stderr {stderr}: {out:?}");
        // Logging at info level on a full stderr too.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("exec \"$0\" list --dst 127.0.0.1 -vv {redirect}"), BIN]);
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        assert_eq!(code(&out), 0, "stderr {stderr}: {out:?}");
    }
}

/// A signal ends every wait at once: SIGINT in the middle of a 20 s interval
/// of a 60 s window ends the run within a second, reported interrupted.
#[test]
fn a_signal_ends_an_interval_at_once() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conn = Conn::open(up.addr);
        assert_not_root_netns();
        let child = Command::new(BIN)
            .args(["kill", "--json", "--dst", "127.0.0.2", "--for", "60s", "--interval", "20s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The first pass destroys our connection; then the window waits.
        wait_until(Duration::from_secs(5), "the first pass", || conn.ended().is_some());
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(2), "took {:?} after SIGINT", sent.elapsed());
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["interrupted"], true, "{doc}");
        assert_eq!(doc["summary"]["destroyed"], 1, "{doc}");
        drop(up);
    });
}

/// -4/-6 decide by the local address for every socket: a listener bound to
/// an IPv4-mapped address is IPv4 (its peer is unspecified).
#[test]
fn a_listener_on_a_mapped_address_is_ipv4() {
    require!(Netns);
    in_private_netns(|| {
        let l = TcpListener::bind("[::ffff:127.0.0.3]:0").unwrap();
        let port = l.local_addr().unwrap().port().to_string();
        let count = |family: &str| {
            let out = sockkill(&["list", "--json", family, "--state", "listening", "--sport", &port]);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            json(&out)["sockets"].as_array().unwrap().len()
        };
        assert_eq!(count("-4"), 1);
        assert_eq!(count("-6"), 0);
        drop(l);
    });
}

/// Link-local addresses carry their interface in tables and JSON.
#[test]
fn link_local_sockets_show_their_interface() {
    require!(Netns);
    in_private_netns(|| {
        let ip = |args: &str| {
            let st = Command::new("ip").args(args.split_whitespace()).status().unwrap();
            assert!(st.success(), "ip {args}");
        };
        ip("link add sk0 type veth peer name sk1");
        ip("link set sk0 up");
        ip("link set sk1 up");
        ip("-6 addr add fe80::5/64 dev sk0 nodad");
        let ifindex = nix::net::if_::if_nametoindex("sk0").unwrap();
        common::wait_local_address("fe80::5".parse().unwrap(), ifindex);
        let l = std::net::TcpListener::bind(format!("[fe80::5%{ifindex}]:0")).unwrap();
        let to: SocketAddr = l.local_addr().unwrap();
        let _c = TcpStream::connect(to).unwrap();
        let out = sockkill(&["list", "--json", "--dst", "fe80::5", "--dport", &to.port().to_string()]);
        let doc = json(&out);
        let peer = doc["sockets"][0]["peer"].as_str().unwrap().to_string();
        assert_eq!(peer, format!("[fe80::5%{ifindex}]:{}", to.port()), "{doc}");
        let out = sockkill(&["list", "--dst", "fe80::5"]);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("%{ifindex}]")), "{out:?}");
        drop(l);
    });
}
