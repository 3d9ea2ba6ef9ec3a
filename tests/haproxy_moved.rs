//! Issue 22: a server's connections are not always at the `srv_addr:srv_port`
//! that `show servers state` prints, and `sockkill haproxy` must not act (or
//! classifier "clean") as if they were.
//!
//! Where they are elsewhere, against a real HAProxy (`$SOCKKILL_HAPROXY`) and
//! the real kernel, each test in its own private network namespace:
//!
//! - a port-mapped server (`127.0.0.21:+1000`): HAProxy prints port 1000 but
//!   connects to the frontend port + 1000 (frontend 8004 -> 9004);
//! - a port-0 server (`server h1 127.0.0.21`): it connects to the port the
//!   client reached (frontend 9005 -> 9005);
//! - a server moved at runtime (`set server be/h1 addr ...`): its streams and
//!   sessions stay at, and its retries go on to, the old address;
//! - `server-template` slots sharing one address, some of them moved;
//! - the same over IPv6 (`fd77::21`, `fd77::22` added to the namespace's lo);
//! - and the connect-retry shape where `wait srv-removable` and `scur` say a
//!   server is done while `show sess` still lists its streams (3.0.11).
//!
//! The lab is haproxy_e2e.rs's (tests/common/haproxy.rs): clients -> HAProxy
//! frontends on 127.0.0.10 -> servers that answer each line with their tag, or
//! "holes" that never accept (connections sit in SYN-SENT). Ground truth is
//! read independently of sockkill: the kernel's sockets (`haproxy_sockets_to`),
//! HAProxy's own `show sess` (parsed here, not by sockkill's parser), and
//! whether each client still gets answers. The rule checked throughout: a run
//! exits 0 ("clean") only if nothing of the server is left — no socket to
//! the old place for 2 s after exit, no stream in `show sess` — and otherwise
//! exits 1 saying why; it never destroys another server's sessions.
//! Each run is recorded for the version matrix (`record`). The report's new
//! `places` field (where the run looked) is checked in one helper only,
//! [`assert_places_mention`], called last in the tests that use it.

#[macro_use]
mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::connect_from;
use common::haproxy::*;
use common::*;
use serde_json::Value;

/// What one `sockkill haproxy` run gave: exit code, JSON report, stderr.
type RunOut = (i32, Value, String);

/// TCP mode, frontend `fe` on 127.0.0.10 at each of `ports`, backend `be`
/// (roundrobin) with the `servers` lines, `timeout connect` and `retries`.
fn layout(ports: &[u16], connect: &str, retries: u32, servers: &[&str]) -> String {
    let mut cfg = format!(
        "defaults\n    mode tcp\n    timeout connect {connect}\n    timeout client 1h\n    timeout server 1h\n    retries {retries}\n"
    );
    cfg += "frontend fe\n";
    for p in ports {
        cfg += &format!("    bind 127.0.0.10:{p}\n");
    }
    cfg += "    default_backend be\nbackend be\n    balance roundrobin\n";
    for s in servers {
        cfg += &format!("    {s}\n");
    }
    cfg
}

/// A single-process HAProxy with [`layout`].
fn haproxy(ports: &[u16], connect: &str, retries: u32, servers: &[&str]) -> Haproxy {
    Haproxy::start(false, layout(ports, connect, retries, servers).as_str())
}

/// `sockkill haproxy --json --socket <admin> ARGS`, recorded for the matrix as `scenario`.
fn run(h: &Haproxy, scenario: &str, args: &[&str]) -> RunOut {
    let admin = h.sock("admin.sock");
    let mut all = vec!["haproxy", "--json", "--socket", admin.as_str()];
    all.extend_from_slice(args);
    let (rc, doc, err) = run_json(&all);
    record(scenario, false, &doc, rc);
    (rc, doc, err)
}

/// `n` clients of `front`, each having had one answer.
fn connect_n(front: &str, n: usize) -> Vec<Client> {
    (0..n).map(|_| Client::connect(front)).collect()
}

/// The server (`srv=`) of the stream whose client port (`src=IP:PORT`) is `port`.
fn slot_of(h: &Haproxy, port: u16) -> Option<String> {
    let text = h.api().command("show sess").expect("show sess");
    text.lines().filter(|l| l.starts_with("0x")).find_map(|l| {
        let field = |k: &str| l.split_whitespace().find_map(|t| t.strip_prefix(k));
        let src_port = field("src=")?.rsplit(':').next()?.parse::<u16>().ok()?;
        (src_port == port).then(|| field("srv=").unwrap_or("").to_string())
    })
}

/// Adds IPv6 addresses to the (private namespace's) loopback.
fn add_to_lo(addrs: &[&str]) {
    assert_not_root_netns();
    for a in addrs {
        let st = Command::new("ip").args(["-6", "addr", "add", a, "dev", "lo", "nodad"]).status().unwrap();
        assert!(st.success(), "ip -6 addr add {a} dev lo");
        let ip = a.split('/').next().unwrap_or(a);
        common::wait_local_address(ip.parse().expect("an IPv6 address"), 0);
    }
}

/// Every client sees its connection end (EOF or reset) within `limit`.
fn assert_all_end(clients: &mut [Client], limit: Duration, what: &str) {
    for c in clients {
        wait_until(limit, what, || c.ended());
    }
}

/// Every client still gets `tag` back.
fn assert_all_answer(clients: &mut [Client], tag: &str, what: &str) {
    for c in clients {
        assert_eq!(c.ask().unwrap_or_else(|e| panic!("{what}: {e}")), tag, "{what}");
    }
}

/// The rule for a run that may not see everything. Exit 0 ("clean")
/// only if true: at exit `show sess` lists no stream of be/`srv`, and no
/// HAProxy socket to `old` exists for 2 s after. Otherwise exit 1, `clean`
/// false, with a reason. Never 2.
fn assert_clean_only_if_true(h: &Haproxy, (rc, doc, err): &RunOut, old: &str, srv: &str) {
    assert!(*rc == 0 || *rc == 1, "exit {rc} (refused?): {err}\n{doc}");
    if *rc == 0 {
        let left = streams_of(h, srv);
        assert!(
            left.is_empty(),
            "exit 0 (clean) while show sess lists {} be/{srv} streams:\n{}\n{doc}",
            left.len(),
            left.join("\n")
        );
        assert_none_for(Duration::from_secs(2), old, h);
        assert!(streams_of(h, srv).is_empty(), "be/{srv} streams 2 s after a clean exit 0: {doc}");
    } else {
        assert_unclean_with_reason(doc);
    }
}

/// One line through HAProxy: the tag of the server that answered ("" when the connection ended).
fn ask(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = std::io::BufReader::new(c.try_clone().unwrap());
    who(c, &mut reader).unwrap_or_default()
}

/// An exit 1 says so honestly: not clean, and why.
fn assert_unclean_with_reason(doc: &Value) {
    assert_eq!(doc["clean"], false, "{doc}");
    assert!(doc["verdict_reason"].as_str().is_some_and(|r| !r.is_empty()), "exit 1 without a reason: {doc}");
}

/// Something ended the stuck streams: sockkill destroyed a socket, or HAProxy
/// ended every client's connection (within 20 s).
fn assert_destroyed_or_ended(doc: &Value, clients: &[TcpStream]) {
    if doc["summary"]["destroyed"].as_u64().unwrap_or(0) > 0 {
        return;
    }
    for c in clients {
        wait_until(Duration::from_secs(20), "a stuck client to see its stream end (nothing was destroyed)", || {
            peer_ended(c, &mut &*c)
        });
    }
}

/// ===== THE ONE ASSERTION ON THE NEW `places` FIELD (issue 22's fix) =====
/// The report lists where it looked for the server's connections (strings
/// like "127.0.0.21:9004"), and `addr` is one of them. Adjust here if the
/// field ends up named or shaped differently. Called last in each test, so
/// every other assertion is reached first.
fn assert_places_mention(doc: &Value, addr: &str) {
    let places = doc["places"].as_array().unwrap_or_else(|| panic!("no `places` array in the report: {doc}"));
    assert!(places.iter().any(|p| p.as_str().is_some_and(|s| s.contains(addr))), "{addr} not in places {places:?}");
}

/// Case 1: `--addr` on a healthy port-mapped server. `show servers state`
/// prints port 1000, its sessions are at 9004: they are h1's, still
/// configured and up, and must be left alone (today: all 5 destroyed).
#[test]
fn addr_leaves_a_port_mapped_servers_sessions_alone() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const AT: &str = "127.0.0.21:9004";
        let _h1 = tag_server(AT, "h1");
        let h = haproxy(&[8004], "30s", 3, &["server h1 127.0.0.21:+1000"]);
        assert_eq!(h.printed_addr("be", "h1"), "127.0.0.21:1000");
        let mut cs = connect_n("127.0.0.10:8004", 5);
        assert!(cs.iter().all(|c| c.server == "h1"));
        assert_eq!(haproxy_sockets_to(AT, &h.pids()).len(), 5);

        let (dry_rc, dry, dry_err) = run(&h, "port-mapped server, --addr --dry-run", &["--addr", AT, "--dry-run"]);
        let (rc, doc, err) = run(&h, "port-mapped server, --addr", &["--addr", AT]);
        assert_eq!(doc["summary"]["destroyed"], 0, "destroyed sessions of be/h1, configured and up: {doc}");
        assert_all_answer(&mut cs, "h1", "a session of the healthy h1");
        assert_eq!(haproxy_sockets_to(AT, &h.pids()).len(), 5);
        assert_eq!(dry_rc, 0, "dry run: {dry_err}\n{dry}");
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert!(doc["destroyed"].as_array().unwrap().is_empty(), "{doc}");
        assert_eq!(doc["other_server"].as_array().unwrap().len(), 5, "{doc}");
    });
}

/// Case 2: streams retrying a hole at the old address after `set server
/// addr`; `retries 10`, `timeout connect 500ms`: HAProxy retries the stream's
/// own (old) destination. Today: exit 0 "clean" watching the new address.
#[test]
fn moved_server_streams_retrying_the_old_address() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const OLD: &str = "127.0.0.21:9004";
        let _hole = never_accepting(OLD);
        let h = haproxy(&[8004], "500ms", 10, &["server h1 127.0.0.21:9004"]);
        let stuck = stuck_streams(&h, "127.0.0.10:8004", OLD, 20);
        assert!(!streams_of(&h, "h1").is_empty(), "no be/h1 stream in show sess");
        let before: Vec<u64> = haproxy_sockets_to(OLD, &h.pids()).iter().map(|s| s.cookie()).collect();
        h.set_addr("be", "h1", "127.0.0.22", 9004);
        // The premise: after the move HAProxy retries the streams' old destination.
        wait_until(Duration::from_secs(3), "a new retry to the old address after the move", || {
            haproxy_sockets_to(OLD, &h.pids()).iter().any(|s| !before.contains(&s.cookie()))
        });

        let out = run(&h, "moved server, streams retrying the old address", &["--server", "be/h1"]);
        assert_clean_only_if_true(&h, &out, OLD, "h1");
        assert_destroyed_or_ended(&out.1, &stuck);
        assert_places_mention(&out.1, OLD);
    });
}

/// Case 2, established: h1's sessions at the old address end (`--no-shutdown`:
/// sockkill destroys them); be2/b2, another server at h1's new address, keeps its.
#[test]
fn moved_server_established_sessions_at_the_old_address() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const OLD: &str = "127.0.0.21:9004";
        let _old = tag_server(OLD, "old");
        let _new = tag_server("127.0.0.22:9004", "new");
        let b2 = concat!(
            "frontend fe2\n    bind 127.0.0.10:8005\n    default_backend be2\n",
            "backend be2\n    server b2 127.0.0.22:9004\n"
        );
        let h = Haproxy::start(false, (layout(&[8004], "30s", 3, &["server h1 127.0.0.21:9004"]) + b2).as_str());
        let mut olds = connect_n("127.0.0.10:8004", 5);
        assert!(olds.iter().all(|c| c.server == "old"));
        h.set_addr("be", "h1", "127.0.0.22", 9004);
        let mut others = connect_n("127.0.0.10:8005", 3);

        let out = run(&h, "moved server, established sessions, --no-shutdown", &["--server", "be/h1", "--no-shutdown"]);
        assert_all_end(&mut olds, Duration::from_secs(5), "a be/h1 session at the old address to end");
        assert_all_answer(&mut others, "new", "be2/b2 at h1's new address");
        assert_clean_only_if_true(&h, &out, OLD, "h1");
        assert_places_mention(&out.1, OLD);
    });
}

/// Case 3: a port-mapped server (`:+1000`, frontend 8004) whose streams are
/// stuck connecting to 127.0.0.21:9004. Today: it watches :1000 and exits 0.
#[test]
fn port_mapped_server_streams_stuck_connecting() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const AT: &str = "127.0.0.21:9004";
        let _hole = never_accepting(AT);
        let h = haproxy(&[8004], "30s", 3, &["server h1 127.0.0.21:+1000"]);
        let stuck = stuck_streams(&h, "127.0.0.10:8004", AT, 20);
        assert!(!streams_of(&h, "h1").is_empty(), "no be/h1 stream in show sess");

        let out = run(&h, "port-mapped server, streams stuck connecting", &["--server", "be/h1"]);
        assert_clean_only_if_true(&h, &out, AT, "h1");
        assert_destroyed_or_ended(&out.1, &stuck);
        assert_places_mention(&out.1, AT);
    });
}

/// Case 4: a port-0 server (it connects to the port the client reached, 9005)
/// and s2 beside it. Today: refused, "use --addr" (exit 2).
#[test]
fn port_zero_server() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const AT: &str = "127.0.0.21:9005";
        let _h1 = tag_server(AT, "h1");
        let _s2 = tag_server("127.0.0.22:9005", "s2");
        let h = haproxy(&[9005], "30s", 3, &["server h1 127.0.0.21", "server s2 127.0.0.22:9005"]);
        let (mut h1, mut s2): (Vec<Client>, Vec<Client>) =
            connect_n("127.0.0.10:9005", 6).into_iter().partition(|c| c.server == "h1");
        assert_eq!((h1.len(), s2.len()), (3, 3), "roundrobin over h1 and s2");

        // Clients of HAProxy on h1's own host: HAProxy's side of their
        // connections has h1's address as its peer, at a port-0 server's "any
        // port"; those served by s2 are no connection of h1's and must stay.
        let mut from_h1_host: Vec<(TcpStream, String)> = (0..2)
            .map(|_| {
                let mut c = connect_from("127.0.0.21:0".parse().unwrap(), "127.0.0.10:9005".parse().unwrap()).unwrap();
                let tag = ask(&mut c);
                (c, tag)
            })
            .collect();
        assert!(from_h1_host.iter().any(|(_, tag)| tag == "s2"), "roundrobin sends one of them to s2");

        let (rc, doc, err) = run(&h, "port-0 server", &["--server", "be/h1"]);
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert_all_end(&mut h1, Duration::from_secs(10), "an h1 client to see its connection end");
        assert_all_answer(&mut s2, "s2", "an s2 session");
        for (c, _) in from_h1_host.iter_mut().filter(|(_, tag)| tag == "s2") {
            assert_eq!(ask(c), "s2", "a client on h1's host, served by s2, lost its connection: {doc}");
        }
        assert_none_for(Duration::from_secs(2), AT, &h);
    });
}

/// Case 5: `server-template srv 3` at one address; srv1 and srv2 moved. Only
/// the sessions HAProxy's tables give to srv1 end; srv2's and srv3's, at the
/// same old address, keep answering. Who is on which slot: `show sess`'s
/// `srv=` joined by the client's port (`src=`), since all share one tag.
#[test]
fn server_template_slot_moved_at_runtime() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const OLD: &str = "127.0.0.21:9006";
        let _old = tag_server(OLD, "old");
        let _b = tag_server("127.0.0.22:9006", "new");
        let _c = tag_server("127.0.0.23:9006", "new");
        let h = haproxy(&[8006], "30s", 3, &["server-template srv 3 127.0.0.21:9006"]);
        let cs = connect_n("127.0.0.10:8006", 6);
        let slots: Vec<String> =
            cs.iter().map(|c| slot_of(&h, c.stream.local_addr().unwrap().port()).unwrap()).collect();
        for s in ["srv1", "srv2", "srv3"] {
            assert!(slots.iter().any(|x| x == s), "no client on {s}: {slots:?}");
        }
        h.set_addr("be", "srv1", "127.0.0.22", 9006);
        h.set_addr("be", "srv2", "127.0.0.23", 9006);
        let (mut srv1, mut rest): (Vec<Client>, Vec<Client>) = {
            let mut slot = slots.iter();
            cs.into_iter().partition(|_| slot.next().unwrap() == "srv1")
        };

        let (rc, doc, err) =
            run(&h, "server-template slot moved, --no-shutdown", &["--server", "be/srv1", "--no-shutdown"]);
        assert!(rc == 0 || rc == 1, "{err}\n{doc}");
        if rc == 1 {
            assert_unclean_with_reason(&doc); // allowed: HAProxy's tables unavailable
        }
        assert_all_end(&mut srv1, Duration::from_secs(5), "a be/srv1 session to end");
        assert_all_answer(&mut rest, "old", "a be/srv2 or be/srv3 session at the old address");
        wait_until(Duration::from_secs(2), "show sess to list no be/srv1 stream", || streams_of(&h, "srv1").is_empty());
    });
}

/// Case 6: IPv6, h6 moved from [fd77::21]:9007 to [fd77::22]:9007 with its
/// sessions established at the old address (`--no-shutdown`).
#[test]
fn ipv6_server_moved_at_runtime() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const OLD: &str = "[fd77::21]:9007";
        add_to_lo(&["fd77::21/128", "fd77::22/128"]);
        let _old = tag_server(OLD, "old");
        let _new = tag_server("[fd77::22]:9007", "new");
        let h = haproxy(&[8007], "30s", 3, &["server h6 [fd77::21]:9007"]);
        let mut olds = connect_n("127.0.0.10:8007", 4);
        assert!(olds.iter().all(|c| c.server == "old"));
        assert_eq!(haproxy_sockets_to(OLD, &h.pids()).len(), 4);
        h.set_addr("be", "h6", "fd77::22", 9007);

        let out = run(&h, "IPv6 server moved, --no-shutdown", &["--server", "be/h6", "--no-shutdown"]);
        assert_all_end(&mut olds, Duration::from_secs(5), "a be/h6 session at the old address to end");
        assert_clean_only_if_true(&h, &out, OLD, "h6");
    });
}

/// Case 7: the streams/scur cross-check. 40 streams stuck connecting with
/// request data, `retries 10`, `timeout connect 500ms`, with the shutdown. On
/// 3.0.11 `wait srv-removable` answers `Done.` and `scur` is 0 while `show
/// sess` still lists the streams: neither may make the run call it clean.
#[test]
fn streams_outlive_wait_done_and_scur() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        const AT: &str = "127.0.0.21:9008";
        let _hole = never_accepting(AT);
        let h = haproxy(&[8008], "500ms", 10, &["server h1 127.0.0.21:9008"]);
        let stuck = stuck_streams(&h, "127.0.0.10:8008", AT, 40);
        assert!(!streams_of(&h, "h1").is_empty(), "no be/h1 stream in show sess");

        let out = run(&h, "connect-retry, 40 streams, retries 10, 500ms", &["--server", "be/h1"]);
        assert_clean_only_if_true(&h, &out, AT, "h1");
        assert_destroyed_or_ended(&out.1, &stuck);
    });
}
