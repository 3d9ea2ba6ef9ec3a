//! `sockkill haproxy` against a real HAProxy in HTTP mode, where backend
//! connections live without a stream: idle pools (`http-reuse`), connections
//! owned by an idle keep-alive client session (`http-reuse never`), an h2
//! backend connection left idle after its streams were killed, WebSocket
//! tunnels in old workers, and servers of two backends at one address.
//!
//! The origin servers say which HAProxy server a request came through (each
//! backend sets `x-srv`), and record HAProxy's side of every connection: the
//! ground truth the kernel's view is checked against, never sockkill's report.
//! The h2 origin is an HAProxy too (Debian's, `bind ... proto h2`, with
//! `wait-for-body` to hold streams open). scripts/haproxy-matrix.sh runs this
//! suite against every branch, like haproxy_e2e.rs.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::haproxy::*;
use common::http::*;
use common::*;

/// Two backends whose servers share the origin's address: a1 (`http-reuse
/// never`: the backend connection stays with the idle keep-alive client
/// session, which 2.4-3.2 do not close when the server goes to maintenance)
/// and b1 (`http-reuse always`: an idle pool, and a slow request in flight).
/// `--server be_a/a1`: every a1 connection ends (HAProxy's `show fd` names
/// the ones without a stream), every b1 connection stays and keeps serving.
#[test]
fn idle_and_session_owned_connections_at_a_shared_address() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let origin = Origin::start(ORIGIN);
        let h = Haproxy::start(
            false,
            http_layout(&[hb("be_a", 8001, "never", &[("a1", ORIGIN)]), hb("be_b", 8002, "always", &[("b1", ORIGIN)])])
                .as_str(),
        );
        let mut a: Vec<Http> = (0..3).map(|_| Http::connect("127.0.0.10:8001")).collect();
        for c in &mut a {
            assert_eq!(c.get("/").unwrap(), "a1");
        }
        let mut b: Vec<Http> = (0..3).map(|_| Http::connect("127.0.0.10:8002")).collect();
        for c in &mut b {
            assert_eq!(c.get("/").unwrap(), "b1");
        }
        let mut slow = Http::connect("127.0.0.10:8002");
        slow.send("/slow");
        wait_until(Duration::from_secs(5), "the origin to see every connection", || {
            let seen = origin.seen();
            let s = by_server(&to_origin(&h), &seen);
            s.get("a1").map_or(0, |p| p.len()) == 3 && s.get("b1").is_some_and(|p| !p.is_empty())
        });
        let before = by_server(&to_origin(&h), &origin.seen());
        let (a1, b1) = (before["a1"].clone(), before["b1"].clone());
        assert!(!before.contains_key("unknown"), "{before:?}");

        let (rc, doc, err) = run(&h, &["--server", "be_a/a1"]);
        record("http: session-owned a1 + idle pool b1 at a shared address (--server)", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["summary"]["ambiguous"], 0, "{doc}");
        assert_eq!(doc["verdict"], "clean", "{doc}");
        // Every a1 connection is gone, whoever closed it; every b1 connection is there.
        assert_gone_for(Duration::from_secs(1), &h, &a1);
        let after = to_origin(&h);
        assert!(b1.iter().all(|p| after.contains_key(p)), "b1's connections were touched: {b1:?} vs {after:?}");
        // What sockkill destroyed was a1's, by the origin's account.
        let seen = origin.seen();
        for d in doc["destroyed"].as_array().unwrap().iter().filter(|d| d["outcome"] == "destroyed") {
            let port = d["local"].as_str().unwrap().rsplit(':').next().unwrap().parse::<u16>().unwrap();
            assert_eq!(seen.get(&port).map(String::as_str), Some("a1"), "{d}");
        }
        for o in doc["other_server"].as_array().unwrap() {
            assert!(o["reason"].as_str().unwrap().contains("be_b/b1"), "{o}");
        }
        // b1 keeps working: its kept-alive clients are answered, the slow one still waits.
        for c in &mut b {
            assert_eq!(c.get("/").expect("a b1 client still served"), "b1");
        }
        assert!(!slow.ended(), "the slow b1 request was cut");
        let tables = doc["tables_read"]["reads"].as_array().unwrap();
        assert!(!tables.is_empty(), "{doc}");
    });
}

/// A healthy load balancer: servers of two backends share an address, their
/// connections pooled or held by idle clients. `--addr A --dry-run` finds
/// nothing lingering (every connection is a configured server's): exit 0,
/// nothing ambiguous — a detector that stays quiet when all is well.
#[test]
fn dry_run_on_a_healthy_load_balancer_is_quiet() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let origin = Origin::start(ORIGIN);
        let h = Haproxy::start(
            true,
            http_layout(&[hb("be_a", 8001, "always", &[("a1", ORIGIN)]), hb("be_b", 8002, "never", &[("b1", ORIGIN)])])
                .as_str(),
        );
        let mut clients: Vec<Http> =
            (0..3).flat_map(|_| [Http::connect("127.0.0.10:8001"), Http::connect("127.0.0.10:8002")]).collect();
        for c in &mut clients {
            c.get("/").unwrap();
        }
        wait_until(Duration::from_secs(5), "pooled and held connections", || to_origin(&h).len() >= 4);
        let before = to_origin(&h);
        let (rc, doc, err) = run(&h, &["--addr", ORIGIN, "--dry-run"]);
        record("http: --addr --dry-run on a healthy load balancer", false, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}");
        assert_eq!(doc["summary"]["ambiguous"], 0, "{doc}");
        assert_eq!(doc["summary"]["remaining"], 0, "{doc}");
        assert_eq!(doc["summary"]["other_server"].as_u64().unwrap() as usize, before.len(), "{doc}");
        assert_eq!(to_origin(&h), before, "a dry run touched something");
        let _ = origin.seen();
    });
}

/// After a reload that removes a1, the old worker stays (a slow b1 request
/// keeps it) with a1's and b1's connections. `--addr A` ends every a1
/// connection of the old worker and none of b1's.
#[test]
fn addr_after_a_reload_in_http_mode() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let origin = Origin::start(ORIGIN);
        let both = [hb("be_a", 8001, "never", &[("a1", ORIGIN)]), hb("be_b", 8002, "always", &[("b1", ORIGIN)])];
        let h = Haproxy::start(true, http_layout(&both).as_str());
        let mut a: Vec<Http> = (0..3).map(|_| Http::connect("127.0.0.10:8001")).collect();
        for c in &mut a {
            assert_eq!(c.get("/").unwrap(), "a1");
        }
        let mut a_slow = Http::connect("127.0.0.10:8001");
        a_slow.send("/slow");
        let mut b_slow = Http::connect("127.0.0.10:8002");
        b_slow.send("/slow");
        wait_until(Duration::from_secs(5), "the slow requests at the origin", || {
            let s = by_server(&to_origin(&h), &origin.seen());
            s.get("a1").map_or(0, |p| p.len()) == 4 && s.get("b1").map_or(0, |p| p.len()) >= 1
        });
        let (old, _new) = h.reload(http_layout(&[both[1].clone_shape()]).as_str());
        let old_pid = h.host_pid(old);
        // Whatever the old worker still holds of a1 lingers: at least the slow request.
        let held = settled(Duration::from_secs(5), "the old worker's connections", || {
            let old_sockets =
                haproxy_sockets_to(ORIGIN, &[old_pid]).iter().map(|s| (s.local().port(), s.cookie())).collect();
            by_server(&old_sockets, &origin.seen())
        });
        assert!(held.get("a1").is_some_and(|p| !p.is_empty()), "nothing of a1 lingers in the old worker: {held:?}");
        let b1_before = held.get("b1").cloned().unwrap_or_default();

        let (rc, doc, err) = run(&h, &["--addr", ORIGIN]);
        record("http: --addr after a reload (old worker kept by a slow request)", true, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["summary"]["ambiguous"], 0, "{doc}");
        let a1_ports: BTreeSet<u16> = origin.seen().into_iter().filter(|(_, s)| s == "a1").map(|(p, _)| p).collect();
        assert_gone_for(Duration::from_secs(1), &h, &a1_ports);
        let now = to_origin(&h);
        assert!(b1_before.iter().all(|p| now.contains_key(p)), "b1's connections were touched");
        assert!(!b_slow.ended(), "the slow b1 request was cut");
        wait_until(Duration::from_secs(5), "the slow a1 client to see its end", || a_slow.ended());
    });
}

impl Http1Backend {
    fn clone_shape(&self) -> Http1Backend {
        Http1Backend { name: self.name, port: self.port, reuse: self.reuse, servers: self.servers.clone() }
    }
}

/// WebSocket-style tunnels stay in the old worker after a reload on every
/// branch; `--addr` ends the removed server's and leaves the other's.
#[test]
fn websocket_tunnels_in_an_old_worker() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _o1 = Origin::start(ORIGIN);
        let _o2 = Origin::start(OTHER);
        let h = Haproxy::start(
            true,
            http_layout(&[hb("ws1", 8001, "safe", &[("s1", ORIGIN)]), hb("ws2", 8002, "safe", &[("s2", OTHER)])])
                .as_str(),
        );
        let mut t1: Vec<Http> = (0..3).map(|_| Http::upgrade("127.0.0.10:8001")).collect();
        let mut t2: Vec<Http> = (0..2).map(|_| Http::upgrade("127.0.0.10:8002")).collect();
        for t in &mut t1 {
            assert_eq!(t.tunnel_ask().unwrap(), "s1");
        }
        let (old, _new) = h.reload(http_layout(&[hb("ws2", 8002, "safe", &[("s2", OTHER)])]).as_str());
        let old_pid = h.host_pid(old);
        wait_until(Duration::from_secs(5), "the old worker's tunnels", || {
            haproxy_sockets_to(ORIGIN, &[old_pid]).len() == 3
        });
        let before: BTreeSet<u64> = haproxy_sockets_to(ORIGIN, &[old_pid]).iter().map(|s| s.cookie()).collect();
        let (rc, doc, err) = run(&h, &["--addr", ORIGIN]);
        record("http: WebSocket tunnels in an old worker (--addr)", true, &doc, rc);
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(destroyed_cookies(&doc, "destroyed"), before, "{doc}");
        assert_none_for(Duration::from_secs(1), ORIGIN, &h);
        for t in &mut t1 {
            wait_until(Duration::from_secs(10), "an s1 tunnel to end", || t.ended());
        }
        for t in &mut t2 {
            assert_eq!(t.tunnel_ask().expect("the s2 tunnels keep working"), "s2");
        }
    });
}

/// The h2 origin: an HAProxy that speaks h2c and holds each request until
/// its body is complete (never, here) for up to 60 s.
struct H2Origin {
    child: Child,
    dir: std::path::PathBuf,
}

impl H2Origin {
    fn start() -> H2Origin {
        let dir = scratch_dir();
        let cfg = format!(
            "global\n    stats socket {d}/origin.sock level admin\ndefaults\n    mode http\n    timeout client 1h\n    \
             timeout http-request 1h\nfrontend origin\n    bind {ORIGIN} proto h2\n    \
             http-request wait-for-body time 60s at-least 1000\n    \
             http-request return status 200 content-type text/plain string h1\n",
            d = dir.display()
        );
        std::fs::write(dir.join("origin.cfg"), cfg).unwrap();
        // Debian's HAProxy, whatever the version under test: the origin is not what is tested.
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(dir.join("origin.cfg"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the h2 origin");
        wait_until(Duration::from_secs(10), "the h2 origin", || TcpStream::connect(ORIGIN).is_ok());
        H2Origin { child, dir }
    }
}

impl Drop for H2Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `be/h1` and `be_x/x1` both at the h2 origin's address.
fn h2_layout() -> String {
    "defaults\n    mode http\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\
     frontend fe\n    bind 127.0.0.10:8000\n    default_backend be\n\
     backend be\n    http-reuse always\n    server h1 127.0.0.11:9001 proto h2\n\
     frontend fe_x\n    bind 127.0.0.10:8009\n    default_backend be_x\n\
     backend be_x\n    http-reuse always\n    server x1 127.0.0.11:9001 proto h2\n"
        .to_string()
}

/// Several streams through `front` whose bodies never finish, multiplexed
/// over h2 backend connections.
fn h2_streams(front: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(front).unwrap();
            c.write_all(b"POST /up HTTP/1.1\r\nHost: lab\r\nContent-Length: 5000\r\n\r\npartial").unwrap();
            c
        })
        .collect()
}

/// An h2 backend connection with several streams, at an address another
/// backend's server (`be_x/x1`, streams in flight too) shares.
/// `--no-shutdown` (HAProxy does nothing) destroys h1's connection, which
/// its streams name; with the shutdown, HAProxy kills h1's streams and
/// (2.4-3.2) leaves the h2 connection idle, which no stream names any more:
/// `show fd` does. x1's connection is left alone both times.
#[test]
fn an_h2_backend_connection_with_several_streams() {
    require!(Netns);
    let _g = serial();
    in_private_netns(|| {
        let _origin = H2Origin::start();
        let h = Haproxy::start(false, h2_layout().as_str());
        let x_streams = h2_streams("127.0.0.10:8009", 2);
        wait_until(Duration::from_secs(5), "x1's h2 connection", || !to_origin(&h).is_empty());
        let x1: BTreeSet<u64> =
            settled(Duration::from_secs(5), "x1's connections", || to_origin(&h).into_values().collect());
        let streams = h2_streams("127.0.0.10:8000", 4);
        wait_until(Duration::from_secs(5), "h1's h2 connection", || to_origin(&h).len() > x1.len());
        let h1: BTreeSet<u64> = settled(Duration::from_secs(5), "h1's connections", || {
            to_origin(&h).into_values().filter(|c| !x1.contains(c)).collect()
        });
        assert!(h1.len() < 4, "h1's streams share h2 connections: {h1:?}");
        let (rc, doc, err) = run(&h, &["--server", "be/h1", "--no-shutdown", "--grace", "200ms"]);
        record("http: h2 connection with several streams, shared address (--no-shutdown)", false, &doc, rc);
        assert_eq!(destroyed_cookies(&doc, "destroyed"), h1, "{doc}");
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        let left: BTreeSet<u64> = to_origin(&h).into_values().collect();
        assert!(x1.is_subset(&left), "x1's connection was touched");
        drop(streams);

        // Again, after the operator's own shutdown: HAProxy kills h1's streams;
        // what it leaves (2.4-3.2: the idle h2 connection) no stream names.
        let ready = h.api().command("set server be/h1 state ready").unwrap();
        assert!(ready.trim().is_empty(), "{ready}");
        let streams = h2_streams("127.0.0.10:8000", 4);
        wait_until(Duration::from_secs(5), "h1's h2 connection again", || to_origin(&h).len() > x1.len());
        settled(Duration::from_secs(5), "h1's connections again", || to_origin(&h).len());
        for cmd in ["set server be/h1 state maint", "shutdown sessions server be/h1"] {
            assert!(h.api().command(cmd).unwrap().trim().is_empty(), "{cmd}");
        }
        // What HAProxy closes after the shutdown, it closes asynchronously.
        let idle: BTreeSet<u64> = settled(Duration::from_secs(5), "h1's connections after the shutdown", || {
            to_origin(&h).into_values().filter(|c| !x1.contains(c)).collect()
        });
        let (rc, doc, err) = run(&h, &["--server", "be/h1"]);
        record("http: h2 connection left idle after its streams were killed, shared address", false, &doc, rc);
        if !idle.is_empty() {
            // HAProxy left it: sockkill found it through `show fd` and destroyed it.
            assert_eq!(destroyed_cookies(&doc, "destroyed"), idle, "{doc}");
        }
        let left: BTreeSet<u64> = to_origin(&h).into_values().collect();
        assert_eq!(left, x1, "h1's h2 connection lingers, or x1's was touched: {doc}");
        assert_eq!(rc, 0, "{err}\n{doc}\n{}", h.log());
        assert_eq!(doc["summary"]["ambiguous"], 0, "{doc}");
        drop((streams, x_streams));
    });
}
