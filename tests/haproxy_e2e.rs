//! `sockkill haproxy` against a real HAProxy, in private network namespaces.
//!
//! The HAProxy binary is `$SOCKKILL_HAPROXY` (default `haproxy`, Debian's
//! 2.6 installed by scripts/install-deps.sh); scripts/haproxy-matrix.sh runs
//! this suite against upstream 2.4, 2.8, 3.0, 3.1 and 3.2 too, and each
//! scenario appends what happened to `$SOCKKILL_MATRIX_LOG` when set.
//!
//! Lab: clients -> HAProxy frontends on 127.0.0.10 -> backends whose servers
//! answer every line with their name (so each client knows where it landed),
//! TCP mode, long timeouts. Each test says whether it gives `--master-socket`.
//! Tests run one at a time (a shared lock): HAProxy's timing is what they
//! observe, and two cores are not many.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::haproxy::*;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sockkill::haproxy::parse;

#[test]
fn plain_server_removal() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        assert_eq!(haproxy_sockets_to(S1, &h.pids()).len(), s1.len());

        let (rc, doc, err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        record("plain removal", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["clean"], true);
        assert_eq!(doc["server_addr"], S1);
        assert_eq!(doc["answering_pid"], h.child.id());
        assert!(doc["master_pid"].is_null(), "a single HAProxy process has no master: {doc}");
        assert_eq!(doc["server_left_in_maintenance"], true);
        let sent = doc["commands_sent"].as_array().unwrap();
        // HAProxy >= 3.0 gets `wait ... srv-removable` too, and its answer is reported.
        let waits = if version() >= (3, 0) { 1 } else { 0 };
        assert_eq!(sent.len(), 2 + waits, "{doc}");
        assert_eq!(doc["wait_answer"].is_null(), waits == 0, "{doc}");
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

#[test]
fn no_shutdown_means_sockkill_destroys_every_s1_socket() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        let before: std::collections::BTreeSet<u64> =
            haproxy_sockets_to(S1, &h.pids()).iter().map(|s| s.cookie()).collect();
        assert_eq!(before.len(), s1.len());

        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "300ms",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        record("--no-shutdown", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert!(doc["commands_sent"].as_array().unwrap().is_empty());
        assert_eq!(doc["closed_by_haproxy"].as_array().unwrap().len(), 0);
        assert_eq!(destroyed_cookies(&doc, "destroyed"), before, "sockkill itself destroyed exactly the s1 sockets");
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

/// A reload drops s1; the old worker keeps its s1 and s2 sessions (so it stays).
fn reload_old_worker_keeps_s2_too(master_socket: bool) {
    in_private_netns(move || {
        let (_s1, _s2, h) = lab(true);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        let (old, _new) = h.reload(&[be("be", 8000, &[("s2", S2)])]);
        let old_pid = h.host_pid(old);
        // The lingering problem itself: the old worker still holds s1's connections.
        wait_until(Duration::from_secs(5), "the old worker's s1 sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == s1.len()
        });
        assert!(s1.iter_mut().all(|c| c.ask().is_ok_and(|t| t == "s1")));

        let (rc, doc, err) = run_addr_s1(&h, master_socket, &["--dry-run"]);
        assert_eq!(rc, 1, "dry run: {err}\n{doc}");
        assert!(doc["pids"].as_array().unwrap().iter().any(|p| *p == old_pid), "{doc}");
        assert_eq!(doc["remaining"].as_array().unwrap().len(), s1.len(), "{doc}");

        let (rc, doc, err) = run_addr_s1(&h, master_socket, &[]);
        record("reload, old worker keeps s2 too", master_socket, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["master_pid"], h.master_pid());
        assert!(!doc["master_cli"].is_null(), "the master CLI is found by itself: {doc}");
        assert!(doc["destroyed"].as_array().unwrap().iter().all(|a| a["owners"][0]["pid"] == old_pid), "{doc}");
        assert_eq!(doc["summary"]["destroyed"], s1.len(), "{doc}");
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
        // The new worker is unaffected: new clients go to s2.
        for _ in 0..2 {
            assert_eq!(Client::connect("127.0.0.10:8000").server, "s2");
        }
    });
}

#[test]
fn reload_old_worker_keeps_s2_too_with_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_keeps_s2_too(true);
}

#[test]
fn reload_old_worker_keeps_s2_too_without_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_keeps_s2_too(false);
}

/// The main scenario: a reload drops s1 and the old worker holds only s1's
/// sessions. Once sockkill destroys them the old worker finishes its
/// soft-stop and exits: the best outcome, clean, exit 0, and the report says so.
fn reload_old_worker_holds_only_s1(master_socket: bool) {
    in_private_netns(move || {
        let _s1 = tag_server(S1, "s1");
        let _s2 = tag_server(S2, "s2");
        let h = Haproxy::start(true, &[be("be", 8000, &[("s1", S1)])]);
        let mut s1: Vec<Client> = (0..4).map(|_| Client::connect("127.0.0.10:8000")).collect();
        assert!(s1.iter().all(|c| c.server == "s1"));
        let (old, _new) = h.reload(&[be("be", 8000, &[("s2", S2)])]);
        let old_pid = h.host_pid(old);
        wait_until(Duration::from_secs(5), "the old worker's s1 sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == 4
        });
        let before: std::collections::BTreeSet<u64> =
            haproxy_sockets_to(S1, &[old_pid]).iter().map(|s| s.cookie()).collect();
        let (rc, doc, err) = run_addr_s1(&h, master_socket, &[]);
        record("reload, old worker holds only s1", master_socket, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["clean"], true, "{doc}");
        assert_eq!(destroyed_cookies(&doc, "destroyed"), before, "{doc}");
        // The old worker is gone, and the report says it went away.
        wait_until(Duration::from_secs(10), "the old worker to exit", || {
            !sockkill::procfs::Process::open(old_pid).is_ok_and(|p| p.alive())
        });
        assert!(doc["workers_exited"].as_array().unwrap().iter().any(|p| *p == old_pid), "{doc}");
        assert!(haproxy_sockets_to(S1, &h.pids()).is_empty());
        for c in &mut s1 {
            wait_until(Duration::from_secs(10), "an s1 client to see its connection end", || c.ended());
        }
        assert_eq!(Client::connect("127.0.0.10:8000").server, "s2");
    });
}

#[test]
fn reload_old_worker_holds_only_s1_with_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_holds_only_s1(true);
}

#[test]
fn reload_old_worker_holds_only_s1_without_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_old_worker_holds_only_s1(false);
}

/// Two backends whose servers share one address: `--server be_a/a1` ends
/// be_a's sessions only; be_b's are HAProxy's other server's, left alone.
#[test]
fn servers_sharing_an_address_are_told_apart() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _a = tag_server(S1, "s1");
        let h = Haproxy::start(false, &[be("be_a", 8001, &[("a1", S1)]), be("be_b", 8002, &[("b1", S1)])]);
        let mut a: Vec<Client> = (0..4).map(|_| Client::connect("127.0.0.10:8001")).collect();
        let mut b: Vec<Client> = (0..6).map(|_| Client::connect("127.0.0.10:8002")).collect();
        assert_eq!(haproxy_sockets_to(S1, &h.pids()).len(), 10);
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "200ms",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be_a/a1",
        ]);
        record("servers sharing an address (--server be_a/a1)", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert_eq!(doc["summary"]["destroyed"], 4, "{doc}");
        assert_eq!(doc["summary"]["other_server"], 6, "{doc}");
        assert!(doc["other_server"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["reason"].as_str().unwrap().contains("be_b/b1")));
        for c in &mut a {
            wait_until(Duration::from_secs(10), "a be_a client to see its connection end", || c.ended());
        }
        for c in &mut b {
            assert_eq!(c.ask().expect("be_b's sessions keep answering"), "s1");
        }
        assert_eq!(haproxy_sockets_to(S1, &h.pids()).len(), 6);
    });
}

/// A reload that keeps s1's address under another server name: `--addr`
/// ends the old worker's sessions (its server is gone from the
/// configuration) and leaves the new worker's sessions to the renamed one.
fn reload_renames_the_server(master_socket: bool) {
    in_private_netns(move || {
        let _s1 = tag_server(S1, "s1");
        let h = Haproxy::start(true, &[be("be", 8000, &[("s1", S1)])]);
        let mut old_clients: Vec<Client> = (0..3).map(|_| Client::connect("127.0.0.10:8000")).collect();
        let (old, new) = h.reload(&[be("be", 8000, &[("s1b", S1)])]);
        let (old_pid, new_pid) = (h.host_pid(old), h.host_pid(new));
        let mut new_clients: Vec<Client> = (0..2).map(|_| Client::connect("127.0.0.10:8000")).collect();
        wait_until(Duration::from_secs(5), "both workers' sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == 3 && haproxy_sockets_to(S1, &[new_pid]).len() == 2
        });
        let (rc, doc, err) = run_addr_s1(&h, master_socket, &[]);
        record("reload renames the server (--addr)", master_socket, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["summary"]["destroyed"], 3, "{doc}");
        assert_eq!(doc["summary"]["other_server"], 2, "{doc}");
        assert!(doc["destroyed"].as_array().unwrap().iter().all(|a| a["owners"][0]["pid"] == old_pid), "{doc}");
        for c in &mut old_clients {
            wait_until(Duration::from_secs(10), "an old worker's client to see its connection end", || c.ended());
        }
        for c in &mut new_clients {
            assert_eq!(c.ask().expect("the new worker's sessions keep answering"), "s1");
        }
    });
}

#[test]
fn reload_renames_the_server_with_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_renames_the_server(true);
}

#[test]
fn reload_renames_the_server_without_master_socket() {
    require!(Netns);
    let _g = serial();
    reload_renames_the_server(false);
}

/// When sockkill cannot tell, it leaves the socket alone and says so: an old
/// worker that cannot be asked (master-worker without a master CLI) holds
/// sessions at an address a server of the current configuration shares. Its
/// sockets are reported ambiguous, none is destroyed, and the run exits 1.
#[test]
fn an_old_worker_that_cannot_be_asked_at_a_shared_address_is_ambiguous() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _s1 = tag_server(S1, "s1");
        let h =
            Haproxy::start_with(true, false, &[be("be_a", 8001, &[("a1", S1)]), be("be_b", 8002, &[("b1", S1)])], &[]);
        let mut a: Vec<Client> = (0..3).map(|_| Client::connect("127.0.0.10:8001")).collect();
        let (old, _new) = h.reload(&[be("be_b", 8002, &[("b1", S1)])]);
        let old_pid = h.host_pid(old);
        wait_until(Duration::from_secs(5), "the old worker's sockets", || {
            haproxy_sockets_to(S1, &[old_pid]).len() == 3
        });
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--grace",
            "200ms",
            "--settle",
            "300ms",
            "--socket",
            &h.sock("admin.sock"),
            "--addr",
            S1,
        ]);
        record("old worker without master CLI, shared address (--addr)", false, &doc, rc);
        assert_eq!(rc, 1, "{err}\n{doc}");
        assert!(doc["master_cli"].is_null(), "{doc}");
        assert_eq!(doc["summary"]["destroyed"], 0, "{doc}");
        assert_eq!(doc["summary"]["ambiguous"], 3, "{doc}");
        for s in doc["ambiguous"].as_array().unwrap() {
            let why = s["reason"].as_str().unwrap();
            assert!(why.contains("cannot be asked") && why.contains("be_b/b1"), "{why}");
        }
        // Left alone indeed: the sessions still answer.
        for c in &mut a {
            assert_eq!(c.ask().expect("an ambiguous session is left alone"), "s1");
        }
        assert_eq!(haproxy_sockets_to(S1, &[old_pid]).len(), 3);
    });
}

/// s1 is a listener that never accepts (backlog 0, queue filled): HAProxy's
/// streams to it sit in SYN-SENT and retry.
#[test]
fn connect_retry_syn_sent_sockets_end() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _s2 = tag_server(S2, "s2");
        let _s1 = never_accepting(S1);
        let h = Haproxy::start(false, &std_backends());

        // Clients whose streams go to s1 never get an answer: connect without asking.
        let streams: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect("127.0.0.10:8000").unwrap()).collect();
        let pids = h.pids();
        wait_until(Duration::from_secs(5), "SYN-SENT sockets to s1", || {
            haproxy_sockets_to(S1, &pids).iter().any(|s| s.state_name() == "SYN-SENT")
        });

        let (rc, doc, _err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        record("connect-retry, with shutdown", false, &doc, rc);
        assert_gone_and_truthful(&h, rc, &doc, "s1", S1);

        // Without the shutdown HAProxy keeps retrying: every destroyed SYN-SENT
        // socket is replaced about a second later, until `retries` runs out. Only
        // passes plus the settle period get them all.
        let ready = h.api().command("set server be/s1 state ready").unwrap();
        parse::expect_empty("set server", &ready).unwrap();
        let streams2: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect("127.0.0.10:8000").unwrap()).collect();
        wait_until(Duration::from_secs(5), "SYN-SENT sockets to s1 again", || {
            haproxy_sockets_to(S1, &pids).iter().any(|s| s.state_name() == "SYN-SENT")
        });
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "200ms",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        record("connect-retry, --no-shutdown", false, &doc, rc);
        assert!(rc == 0 || rc == 1, "{err}\n{doc}\n{}", h.log());
        assert_gone_and_truthful(&h, rc, &doc, "s1", S1);
        let destroyed: Vec<&Value> =
            doc["destroyed"].as_array().unwrap().iter().filter(|a| a["outcome"] == "destroyed").collect();
        assert!(destroyed.iter().all(|a| a["state"] == "SYN-SENT"), "{doc}");
        let passes = destroyed.iter().map(|a| a["pass"].as_u64().unwrap()).max().unwrap_or(0);
        assert!(passes >= 2, "HAProxy's retries should need several passes: {doc}");
        // HAProxy gave up on the streams to s1: their clients are closed; the
        // ones that went to s2 are served.
        let mut ended = 0;
        for mut s in streams2 {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(b"who\n");
            let mut line = String::new();
            match BufReader::new(&mut s).read_line(&mut line) {
                Ok(0) => ended += 1,
                Ok(_) => assert_eq!(line, "s2\n"),
                Err(e) if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    ended += 1
                }
                Err(e) => panic!("client of a given-up stream not ended: {e}"),
            }
        }
        assert!(ended >= 1, "no stream to s1 was ended");
        drop(streams);
    });
}

/// The seed's own shape, where HAProxy fails to close: 24 streams stuck
/// connecting to a server that never accepts, `timeout connect` (30 s) far
/// longer than the run, `retries 3`. On 3.0/3.1 `wait` answers `Wait delay
/// expired.` and HAProxy opens new SYN-SENT sockets about a second after each
/// destroy until its retries run out; 2.x and 3.2+ close the streams
/// themselves. Either way: exit 0 only once the retries stopped and a settle
/// period of empty looks followed the last destroy, and no socket to s1
/// comes back after the run. With a deadline shorter than the retries: exit
/// 1, saying what kept appearing.
#[test]
fn connect_retry_where_haproxy_fails_to_close() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _s1 = never_accepting(S1);
        let h = Haproxy::start(false, &[be("be", 8000, &[("s1", S1)])]);
        let streams = stuck_streams(&h, "127.0.0.10:8000", S1, 24);
        let (rc, doc, _err) = run_json(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        record("connect-retry, HAProxy fails to close (24 SYN-SENT streams)", false, &doc, rc);
        // Nothing comes back after the run, and it ended a settle period after its last destroy.
        let last_destroy = doc["destroyed"].as_array().unwrap().iter().filter_map(|d| d["at_ms"].as_u64()).max();
        if let Some(t) = last_destroy {
            assert!(doc["duration_ms"].as_u64().unwrap() >= t + 1500, "{doc}");
        }
        assert_gone_and_truthful(&h, rc, &doc, "s1", S1);
        drop(streams);

        // Where HAProxy retried, a deadline shorter than its retries ends the run unclean.
        if doc["summary"]["appeared_after_first_destroy"].as_u64().unwrap_or(0) > 0 {
            let ready = h.api().command("set server be/s1 state ready").unwrap();
            parse::expect_empty("set server", &ready).unwrap();
            let streams = stuck_streams(&h, "127.0.0.10:8000", S1, 24);
            let (rc, doc, err) = run_json(&[
                "haproxy",
                "--json",
                "--deadline",
                "3.5s",
                "--socket",
                &h.sock("admin.sock"),
                "--server",
                "be/s1",
            ]);
            record("connect-retry, HAProxy fails to close, --deadline 3.5s", false, &doc, rc);
            assert_eq!(rc, 1, "{err}\n{doc}");
            assert_eq!(doc["clean"], false, "{doc}");
            assert!(doc["verdict_reason"].as_str().unwrap().contains("deadline"), "{doc}");
            drop(streams);
        }
    });
}

/// Three reloads in a row, each new worker taking new sessions to s1 and s2;
/// the third removes s1. Three old workers hold s1's sessions: `--addr`
/// ends all of them, in every old worker, and none of s2's.
#[test]
fn three_reloads_three_old_workers() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(true);
        let mut s1_clients = Vec::new();
        let mut s2_clients = Vec::new();
        let mut olds = Vec::new();
        for round in 0..3 {
            let (s1, s2) = clients("127.0.0.10:8000", 4);
            s1_clients.extend(s1);
            s2_clients.extend(s2);
            let layout = if round < 2 { std_backends() } else { vec![be("be", 8000, &[("s2", S2)])] };
            let (old, _new) = h.reload(&layout);
            olds.push(h.host_pid(old));
        }
        wait_until(Duration::from_secs(5), "every old worker's s1 sessions", || {
            haproxy_sockets_to(S1, &olds).len() == s1_clients.len()
        });
        let before: std::collections::BTreeSet<u64> =
            haproxy_sockets_to(S1, &olds).iter().map(|s| s.cookie()).collect();
        let (rc, doc, err) = run_addr_s1(&h, false, &[]);
        record("three reloads, three old workers (--addr)", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(destroyed_cookies(&doc, "destroyed"), before, "{doc}");
        let owners: std::collections::BTreeSet<u64> =
            doc["destroyed"].as_array().unwrap().iter().filter_map(|d| d["owners"][0]["pid"].as_u64()).collect();
        assert_eq!(owners.len(), 3, "sessions of all three old workers: {doc}");
        assert_s1_gone_s2_serving(&h, &mut s1_clients, &mut s2_clients);
    });
}

#[test]
fn errors_are_one_line_exit_2_and_change_nothing() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients("127.0.0.10:8000", 4);
        let pids = h.pids();
        let before = haproxy_sockets_to(S1, &pids).len();

        // A unix socket that accepts and never answers.
        let silent_path = h.dir.join("silent.sock");
        let silent = std::os::unix::net::UnixListener::bind(&silent_path).unwrap();
        let _hold = std::thread::spawn(move || {
            let conns: Vec<_> = silent.incoming().take(2).collect();
            std::thread::sleep(Duration::from_secs(5));
            drop(conns);
        });
        let admin = h.sock("admin.sock");
        let user = h.sock("user.sock");
        let silent_s = silent_path.to_string_lossy().into_owned();
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["--socket", &silent_s, "--api-timeout", "1s", "--server", "be/s1"], "no answer"),
            (vec!["--socket", &admin, "--server", "nob/s1"], "no backend nob"),
            (vec!["--socket", &admin, "--server", "be/zz"], "no server zz"),
            (vec!["--socket", &user, "--server", "be/s1"], "Permission denied"),
            (vec!["--socket", &admin, "--addr", "127.0.0.11"], "no port"),
            // More targets than --max: refused before any command is sent.
            (vec!["--socket", &admin, "--server", "be/s1", "--max", "1"], "more than --max 1"),
        ];
        for (args, expect) in cases {
            let mut full = vec!["haproxy", "--json"];
            full.extend(args);
            let out = sockkill_in_netns(&full);
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{full:?}: {err}");
            let error_lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
            assert_eq!(error_lines.len(), 1, "{full:?}: {err}");
            assert!(err.contains(expect), "{full:?}: expected {expect:?} in {err}");
            assert!(!err.contains("panicked"));
            let doc = json(&out);
            assert_eq!(doc["commands_sent"], serde_json::json!([]), "{doc}");
            assert_eq!(doc["server_left_in_maintenance"], false, "{doc}");
        }
        // Nothing destroyed, s1 not in maintenance: its clients are still served.
        assert_eq!(haproxy_sockets_to(S1, &pids).len(), before);
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }
        assert_eq!(h.server_state("be", "s1").1, 0, "s1's admin state changed");
    });
}

#[test]
fn dry_run_detects_lingering_sockets() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients("127.0.0.10:8000", 4);
        let (rc, doc, err) =
            run_json(&["haproxy", "--json", "--dry-run", "--socket", &h.sock("admin.sock"), "--server", "be/s1"]);
        assert_eq!(rc, 1, "{err}");
        assert_eq!(doc["remaining"].as_array().unwrap().len(), s1.len());
        assert_eq!(doc["scur"], s1.len());
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }
        assert_eq!(h.server_state("be", "s1").1, 0, "a dry run changed s1's state");
        // Nothing to an unused address: clean.
        let (rc, _, err) =
            run_json(&["haproxy", "--dry-run", "--socket", &h.sock("admin.sock"), "--addr", "127.0.0.13:9003"]);
        assert_eq!(rc, 0, "{err}");
    });
}

/// HAProxy >= 3.0 answers `wait <grace> srv-removable` after up to the
/// grace period: a grace longer than --api-timeout works, and the answer is
/// in the report. Before 3.0 no `wait` is sent.
#[test]
fn wait_srv_removable_longer_than_the_api_timeout() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, mut s2) = clients("127.0.0.10:8000", 4);
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--grace",
            "3s",
            "--api-timeout",
            "1s",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        record("grace 3s > api-timeout 1s", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        let sent = doc["commands_sent"].as_array().unwrap();
        if version() >= (3, 0) {
            assert!(sent.iter().any(|c| c.as_str().unwrap().starts_with("wait 3000ms srv-removable be/s1")), "{doc}");
            assert!(["done", "expired", "failed"].contains(&doc["wait_answer"].as_str().unwrap()), "{doc}");
        } else {
            assert!(sent.iter().all(|c| !c.as_str().unwrap().starts_with("wait")), "{doc}");
            assert!(doc["wait_answer"].is_null());
        }
        assert_s1_gone_s2_serving(&h, &mut s1, &mut s2);
    });
}

/// A relay in front of the stats socket that holds back for 3 s HAProxy's
/// answer to commands starting with `slow` (a busy HAProxy): the command
/// itself reaches HAProxy at once. The flag it returns is raised once such a
/// command has arrived.
fn slow_relay(to: String, path: PathBuf, slow: &'static str) -> Arc<AtomicBool> {
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let arrived = Arc::new(AtomicBool::new(false));
    let flag = arrived.clone();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let to = to.clone();
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut cmd = Vec::new();
                let _ = std::io::Read::read_to_end(&mut &c, &mut cmd);
                let Ok(mut up) = std::os::unix::net::UnixStream::connect(&to) else { return };
                let _ = up.write_all(&cmd);
                let _ = up.shutdown(std::net::Shutdown::Write);
                let mut answer = Vec::new();
                let _ = std::io::Read::read_to_end(&mut up, &mut answer);
                if String::from_utf8_lossy(&cmd).starts_with(slow) {
                    flag.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(3));
                }
                let _ = (&c).write_all(&answer);
            });
        }
    });
    arrived
}

/// A state change HAProxy applied but answered after `--api-timeout`: it
/// was sent, so the run reports it sent (and unconfirmed) and exits 1, not
/// 2 — HAProxy's real state says s1 is in maintenance.
#[test]
fn a_state_change_answered_late_is_reported_sent() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let _clients = clients("127.0.0.10:8000", 4);
        let relay = h.dir.join("late.sock");
        slow_relay(h.sock("admin.sock"), relay.clone(), "set server");
        let pid = h.child.id().to_string();
        let (rc, doc, err) = run_json(&[
            "haproxy",
            "--json",
            "--api-timeout",
            "1s",
            "--pid",
            &pid,
            "--socket",
            relay.to_str().unwrap(),
            "--server",
            "be/s1",
        ]);
        record("state change answered after --api-timeout", false, &doc, rc);
        // HAProxy's own state: the command took effect.
        assert_ne!(h.server_state("be", "s1").1, 0, "s1 not in maintenance: {doc}");
        assert_eq!(rc, 1, "sent is done: {err}\n{doc}");
        assert_eq!(doc["commands_sent"], serde_json::json!(["set server be/s1 state maint"]), "{doc}");
        assert_eq!(doc["commands_unconfirmed"], serde_json::json!(["set server be/s1 state maint"]), "{doc}");
        assert_eq!(doc["server_left_in_maintenance"], true, "{doc}");
        assert_eq!(doc["clean"], false, "{doc}");
    });
}

fn spawn_sockkill(args: &[&str]) -> Child {
    assert_not_root_netns();
    Command::new(BIN).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Signals at every point: while the first `show info` is pending (nothing
/// state-changing is sent: s1 stays ready, exit 2), during the grace period
/// (exit 1: HAProxy was changed; never clean), and a second SIGINT during a
/// long settle wait (the run ends at once, report printed).
#[test]
fn signals_at_every_point() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let (_s1, _s2, h) = lab(false);
        let (mut s1, _s2c) = clients("127.0.0.10:8000", 4);
        let relay = h.dir.join("slow.sock");
        let asked = slow_relay(h.sock("admin.sock"), relay.clone(), "show info");

        // 1. SIGINT while `show info` is still being answered.
        let child = spawn_sockkill(&["haproxy", "--json", "--socket", relay.to_str().unwrap(), "--server", "be/s1"]);
        wait_until(Duration::from_secs(10), "sockkill's show info at the relay", || asked.load(Ordering::SeqCst));
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(2), "{:?}", sent.elapsed());
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
        std::thread::sleep(Duration::from_secs(3)); // the relay's held-back answer lands nowhere
        assert_eq!(h.server_state("be", "s1").1, 0, "s1 was put in maintenance after the signal");
        for c in &mut s1 {
            assert_eq!(c.ask().unwrap(), "s1");
        }

        // 2. SIGTERM during the grace period (--no-shutdown is not given: HAProxy was told).
        let child = spawn_sockkill(&[
            "haproxy",
            "--json",
            "--grace",
            "20s",
            "--deadline",
            "60s",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s2",
        ]);
        wait_until(Duration::from_secs(10), "s2 in maintenance", || h.server_state("be", "s2").1 != 0);
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(3), "{:?}", sent.elapsed());
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["interrupted"], true, "{doc}");
        assert_eq!(doc["clean"], false, "{doc}");
        assert_eq!(doc["server_left_in_maintenance"], true, "{doc}");

        // 3. Two SIGINTs during a 20 s settle wait: the run ends within seconds.
        let child = spawn_sockkill(&[
            "haproxy",
            "--json",
            "--no-shutdown",
            "--grace",
            "100ms",
            "--settle",
            "20s",
            "--socket",
            &h.sock("admin.sock"),
            "--server",
            "be/s1",
        ]);
        for c in &mut s1 {
            wait_until(Duration::from_secs(10), "the s1 sessions destroyed", || c.ended());
        }
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(5), "{:?}", sent.elapsed());
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["interrupted"], true, "{doc}");
        assert_eq!(doc["summary"]["destroyed"], 2, "{doc}");
        assert!(doc["duration_ms"].as_u64().unwrap() < 15_000, "{doc}");
    });
}

/// HAProxy as a container runs it: its own pid, mount and network namespaces
/// (the master is pid 1 there). After a reload that drops s1, a dry run from
/// inside (nsenter) sees the old worker's sessions (exit 1), and a run from
/// the host — another pid and network namespace — ends them (exit 0).
#[test]
fn haproxy_in_a_container() {
    require!(Root);
    let _g = serial();
    let ns = NamedNetns::create();
    assert_ns_not_root(ns.path().to_str().unwrap());
    let (h, servers, mut s1) = {
        let netns = ns.name.clone();
        ns.run(move || {
            let servers = (tag_server(S1, "s1"), tag_server(S2, "s2"));
            let h = Haproxy::start_with(
                true,
                true,
                &[be("be", 8000, &[("s1", S1)])],
                &["ip", "netns", "exec", &netns, "unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
            );
            let s1: Vec<Client> = (0..3).map(|_| Client::connect("127.0.0.10:8000")).collect();
            (h, servers, s1)
        })
    };
    let master = h.master_pid();
    assert_eq!(sockkill::procfs::nspid(master).and_then(|v| v.last().copied()), Some(1), "master is pid 1 inside");
    let (old, _new) = h.reload(&[be("be", 8000, &[("s2", S2)])]);
    let old_pid = h.host_pid(old);
    assert_ne!(old, old_pid, "the old worker's pid differs inside and out");

    // From inside: nsenter into its pid, mount and network namespaces.
    let out = Command::new("nsenter")
        .args(["-t", &master.to_string(), "-p", "-m", "-n", BIN, "haproxy", "--json", "--dry-run"])
        .args(["--socket", &h.sock("admin.sock"), "--addr", S1])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let doc = json(&out);
    record("container: dry run from inside", false, &doc, code(&out));
    assert_eq!(code(&out), 1, "{}\n{doc}", stderr(&out));
    assert_eq!(doc["remaining"].as_array().unwrap().len(), 3, "{doc}");

    // From the host (root network namespace, root pid namespace).
    let out = sockkill(&["haproxy", "--json", "--socket", &h.sock("admin.sock"), "--addr", S1]);
    let doc = json(&out);
    record("container: run from the host", false, &doc, code(&out));
    assert_eq!(code(&out), 0, "{}\n{doc}\n{}", stderr(&out), h.log());
    assert_eq!(doc["summary"]["destroyed"], 3, "{doc}");
    assert!(doc["pids"].as_array().unwrap().iter().any(|p| *p == old_pid), "{doc}");
    let mut s1 = std::mem::take(&mut s1);
    ns.run(move || {
        for c in &mut s1 {
            wait_until(Duration::from_secs(10), "an s1 client to see its connection end", || c.ended());
        }
        assert_eq!(Client::connect("127.0.0.10:8000").server, "s2");
    });
    drop(h);
    drop(servers);
}
