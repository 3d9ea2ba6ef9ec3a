//! End-to-end tests of the binary against the real kernel, each in its own
//! private network namespace.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;

/// Two IPv4 upstreams (A, B), an IPv6 one, and an IPv4 address reached through
/// an IPv6 socket (IPv4-mapped); two connections each.
#[allow(dead_code)] // the listeners must live as long as the lab
struct Lab {
    a: Echo,
    a2: Echo,
    b: Echo,
    v6: Echo,
    mapped: Echo,
    conns_a: Vec<Conn>,
    conns_a2: Vec<Conn>,
    conns_b: Vec<Conn>,
    conns_v6: Vec<Conn>,
    conns_mapped: Vec<Conn>,
}

impl Lab {
    fn start() -> Lab {
        let a = Echo::start("127.0.0.2:0");
        let a2 = Echo::start("127.0.0.2:0");
        let b = Echo::start("127.0.0.3:0");
        let v6 = Echo::start("[::1]:0");
        // Dual-stack listener; clients connect to ::ffff:127.0.0.4 from IPv6 sockets.
        let mapped = Echo::start("[::]:0");
        let mapped_addr: SocketAddr = format!("[::ffff:127.0.0.4]:{}", mapped.addr.port()).parse().unwrap();
        let two = |to: SocketAddr| vec![Conn::open(to), Conn::open(to)];
        Lab {
            conns_a: two(a.addr),
            conns_a2: two(a2.addr),
            conns_b: two(b.addr),
            conns_v6: two(v6.addr),
            conns_mapped: two(mapped_addr),
            a,
            a2,
            b,
            v6,
            mapped,
        }
    }
}

fn local_ports(doc: &serde_json::Value, key: &str) -> BTreeSet<String> {
    doc[key].as_array().unwrap().iter().map(|s| s["local"].as_str().unwrap().to_string()).collect()
}

fn locals(conns: &[Conn]) -> BTreeSet<String> {
    conns.iter().map(|c| c.local.to_string()).collect()
}

#[test]
fn list_shows_exactly_the_expected_sockets() {
    require!(Netns);
    in_private_netns(|| {
        let lab = Lab::start();
        let out = sockkill(&["list", "--json", "--dst", "127.0.0.2"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["schema_version"], 1);
        let mut want = locals(&lab.conns_a);
        want.extend(locals(&lab.conns_a2));
        assert_eq!(local_ports(&doc, "sockets"), want);
        assert_eq!(doc["summary"]["count"], 4);

        // The IPv4-mapped connections: an IPv4 filter finds the IPv6 sockets.
        let out = sockkill(&["list", "--json", "--dst", "127.0.0.4"]);
        let doc = json(&out);
        assert_eq!(local_ports(&doc, "sockets"), locals(&lab.conns_mapped));
        assert!(doc["sockets"].as_array().unwrap().iter().all(|s| s["family"] == "inet6"));

        // IPv6 by address and by port.
        let port = lab.v6.addr.port().to_string();
        let doc = json(&sockkill(&["list", "--json", "--dst", "::1", "--dport", &port]));
        assert_eq!(local_ports(&doc, "sockets"), locals(&lab.conns_v6));

        // -6 excludes mapped sockets; -4 includes them.
        let doc = json(&sockkill(&["list", "--json", "-6"]));
        assert!(doc["sockets"].as_array().unwrap().iter().all(|s| !s["local"].as_str().unwrap().contains("::ffff:")));
        let port = lab.mapped.addr.port().to_string();
        let doc = json(&sockkill(&["list", "--json", "-4", "--dport", &port]));
        assert_eq!(local_ports(&doc, "sockets"), locals(&lab.conns_mapped));

        // Listening sockets only on request.
        let doc = json(&sockkill(&["list", "--json", "--state", "listening", "--src", "127.0.0.3"]));
        let socks = doc["sockets"].as_array().unwrap();
        assert_eq!(socks.len(), 1);
        assert_eq!(socks[0]["state"], "LISTEN");
        assert_eq!(socks[0]["local"], lab.b.addr.to_string());

        // The human table has a header and one row per socket.
        let out = sockkill(&["list", "--dst", "127.0.0.3"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().next().unwrap().starts_with("State"));
        assert_eq!(text.lines().count(), 3, "{text}");
    });
}

#[test]
fn kill_dst_destroys_exactly_that_upstream() {
    require!(Netns);
    in_private_netns(|| {
        let mut lab = Lab::start();
        let out = sockkill_in_netns(&["kill", "--json", "--dst", "127.0.0.2"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["matched"], 4);
        assert_eq!(doc["summary"]["destroyed"], 4);
        assert_eq!(doc["summary"]["remaining"], 0);
        assert_eq!(doc["summary"]["failed"], 0);
        // Each destroy is logged on stderr.
        assert_eq!(stderr(&out).matches("destroyed").count(), 4, "{}", stderr(&out));

        // The kernel agrees, the applications saw it, the others still talk.
        assert!(dump_dst("127.0.0.2").is_empty());
        assert!(ss(&["dst", "127.0.0.2"]).is_empty());
        for c in lab.conns_a.iter_mut().chain(lab.conns_a2.iter_mut()) {
            c.assert_killed();
        }
        for c in lab.conns_b.iter_mut().chain(lab.conns_v6.iter_mut()).chain(lab.conns_mapped.iter_mut()) {
            c.assert_alive();
        }
    });
}

#[test]
fn dry_run_destroys_nothing_and_exits_1() {
    require!(Netns);
    in_private_netns(|| {
        let mut lab = Lab::start();
        let out = sockkill_in_netns(&["kill", "--dry-run", "--json", "--dst", "127.0.0.2"]);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["matched"], 4);
        assert_eq!(doc["summary"]["destroyed"], 0);
        assert!(doc["sockets"].as_array().unwrap().iter().all(|s| s["outcome"] == "would_destroy"));
        assert_eq!(dump_dst("127.0.0.2").len(), 4);
        for c in lab.conns_a.iter_mut().chain(lab.conns_a2.iter_mut()) {
            c.assert_alive();
        }
        // Nothing matches: a dry run exits 0.
        let out = sockkill_in_netns(&["kill", "--dry-run", "--dst", "127.0.0.9"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    });
}

#[test]
fn dport_narrows_the_kill() {
    require!(Netns);
    in_private_netns(|| {
        let mut lab = Lab::start();
        let port = lab.a.addr.port().to_string();
        let out = sockkill_in_netns(&["kill", "--dst", "127.0.0.2", "--dport", &port]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for c in &mut lab.conns_a {
            c.assert_killed();
        }
        for c in &mut lab.conns_a2 {
            c.assert_alive();
        }
    });
}

#[test]
fn ipv6_and_mapped_kills() {
    require!(Netns);
    in_private_netns(|| {
        let mut lab = Lab::start();
        let out = sockkill_in_netns(&["kill", "--dst", "127.0.0.4"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for c in &mut lab.conns_mapped {
            c.assert_killed();
        }
        let out = sockkill_in_netns(&["kill", "--dst", "::1", "--dport", &lab.v6.addr.port().to_string()]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for c in &mut lab.conns_v6 {
            c.assert_killed();
        }
        for c in lab.conns_a.iter_mut().chain(lab.conns_b.iter_mut()) {
            c.assert_alive();
        }
    });
}

#[test]
fn pid_narrows_the_kill_to_one_process() {
    require!(Netns);
    in_private_netns(|| {
        let lab = Lab::start();
        let mut ours = Conn::open(lab.b.addr);
        // Another process holding a connection to the same upstream.
        let script = format!("exec 3<>/dev/tcp/127.0.0.3/{}; echo ready; exec sleep 30", lab.b.addr.port());
        let mut child = Command::new("bash")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("bash");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let guard = ChildGuard(child);
        let pid = guard.0.id().to_string();

        let inodes = sockkill::procfs::socket_inodes(guard.0.id()).unwrap();
        assert_eq!(dump_dst("127.0.0.3").iter().filter(|s| inodes.contains(&s.inode)).count(), 1);

        let out = sockkill_in_netns(&["kill", "--json", "--dst", "127.0.0.3", "--pid", &pid]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["destroyed"], 1);
        assert_eq!(doc["sockets"][0]["owners"][0]["pid"].to_string(), pid);
        // The child's socket is gone from the kernel; ours (same upstream) still talks.
        assert_eq!(dump_dst("127.0.0.3").iter().filter(|s| inodes.contains(&s.inode)).count(), 0);
        ours.assert_alive();
        drop(lab);
    });
}

#[test]
fn netns_by_name_from_outside() {
    require!(Root);
    let ns = NamedNetns::create();
    let (mut a, mut b) = ns.run(|| {
        let a = Echo::start("127.0.0.2:0");
        let b = Echo::start("127.0.0.3:0");
        let conns = (vec![Conn::open(a.addr)], vec![Conn::open(b.addr)]);
        std::mem::forget((a, b)); // keep the listeners' threads serving
        conns
    });
    // This thread is in the root namespace: the kill must happen in `ns` only.
    assert_ns_not_root(ns.path().to_str().unwrap());
    let out = sockkill(&["list", "--json", "--netns", &ns.name, "--dst", "127.0.0.2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(json(&out)["sockets"].as_array().unwrap().len(), 1);

    let out = sockkill(&["kill", "--netns", &ns.name, "--dst", "127.0.0.2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    a[0].assert_killed();
    b[0].assert_alive();
    // By path, too.
    let out = sockkill(&["list", "--json", "--netns", ns.path().to_str().unwrap(), "--dst", "127.0.0.3"]);
    assert_eq!(json(&out)["sockets"].as_array().unwrap().len(), 1);
    b.clear();
    a.clear();
}

#[test]
fn netns_by_pid_from_outside() {
    require!(Netns);
    let (child, mut a, mut b) = in_private_netns(|| {
        let a = Echo::start("127.0.0.2:0");
        let b = Echo::start("127.0.0.3:0");
        let conns = (Conn::open(a.addr), Conn::open(b.addr));
        std::mem::forget((a, b));
        // A process living in this namespace: its pid names the namespace.
        let child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().expect("sleep");
        (ChildGuard(child), conns.0, conns.1)
    });
    let pid = child.0.id().to_string();
    assert_ns_not_root(&format!("/proc/{pid}/ns/net"));
    let out = sockkill(&["kill", "--netns", &pid, "--dst", "127.0.0.2"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    a.assert_killed();
    b.assert_alive();
}

#[test]
fn catch_all_kill_is_refused() {
    require!(Netns);
    in_private_netns(|| {
        let mut lab = Lab::start();
        for args in [
            vec!["kill"],
            vec!["kill", "--dst", "0.0.0.0/0"],
            vec!["kill", "--dst", "::/0", "--dst", "127.0.0.2"],
            vec!["kill", "--dport", "1-65535"],
            vec!["kill", "--state", "established"],
        ] {
            let out = sockkill_in_netns(&args);
            assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
            assert!(stderr(&out).contains("catch-all"), "{args:?}: {}", stderr(&out));
        }
        for c in lab.conns_a.iter_mut().chain(lab.conns_b.iter_mut()).chain(lab.conns_v6.iter_mut()) {
            c.assert_alive();
        }
        // Explicitly allowed: it kills (here, in our private namespace).
        let out = sockkill_in_netns(&["kill", "--allow-catch-all", "--dport", "1-65535"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for c in &mut lab.conns_b {
            c.assert_killed();
        }
    });
}

#[test]
fn missing_namespace_is_an_error() {
    for ns in ["sockkill-no-such-ns", "/tmp/sockkill-no-such-file", "4000000000", "/etc/hostname"] {
        let out = sockkill(&["kill", "--netns", ns, "--dst", "10.0.0.1"]);
        assert_eq!(code(&out), 2, "{ns}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("network namespace") && err.lines().count() == 1, "{ns}: {err}");
    }
}

#[test]
fn without_cap_net_admin_nothing_is_destroyed() {
    require!(Netns);
    in_private_netns(|| {
        let mut lab = Lab::start();
        let run = |args: &[&str]| {
            assert_not_root_netns();
            Command::new("setpriv")
                .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", BIN])
                .args(args)
                .output()
                .expect("setpriv")
        };
        let out = run(&["kill", "--dst", "127.0.0.2"]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("CAP_NET_ADMIN"), "{}", stderr(&out));
        assert!(stderr(&out).contains("nothing was destroyed"), "{}", stderr(&out));
        assert_eq!(dump_dst("127.0.0.2").len(), 4);
        for c in &mut lab.conns_a {
            c.assert_alive();
        }
        // list and the dry run need no privilege.
        let out = run(&["list", "--dst", "127.0.0.2"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let out = run(&["kill", "--dry-run", "--dst", "127.0.0.2"]);
        assert_eq!(code(&out), 1, "{}", stderr(&out));
    });
}

#[test]
fn check_succeeds() {
    require!(Netns);
    let out = sockkill(&["check", "--json"]);
    assert_eq!(code(&out), 0, "{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let doc = json(&out);
    assert_eq!(doc["ok"], true);
    assert!(doc["steps"].as_array().unwrap().iter().any(|s| s["name"] == "SOCK_DESTROY" && s["ok"] == true));
}

#[test]
fn check_in_named_namespace() {
    require!(Root);
    let ns = NamedNetns::create();
    ns.run(|| ()); // brings lo up
    let out = sockkill(&["check", "--netns", &ns.name]);
    assert_eq!(code(&out), 0, "{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
}

#[test]
fn list_in_root_namespace() {
    // Listing is read-only and fine in the root namespace.
    let out = sockkill(&["list", "--state", "all"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = sockkill(&["list", "--state", "all", "--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // SYN-RECV is two kernel states and one name: listed once.
    let states = json(&out)["filter"]["states"].as_array().unwrap().clone();
    assert_eq!(states.iter().filter(|s| *s == "SYN-RECV").count(), 1, "{states:?}");
}

#[test]
fn bad_filters_are_usage_errors() {
    for args in [
        vec!["list", "--dst", "10.0.0.300"],
        vec!["list", "--dport", "70000"],
        vec!["list", "--dport", "90-80"],
        vec!["list", "--state", "establised"],
        vec!["list", "-4", "-6"],
        vec!["list", "-4", "--dst", "fd00::1"],
        vec!["kill", "--pid", "0", "--dst", "10.0.0.1"],
    ] {
        let out = sockkill(&args);
        assert_eq!(code(&out), 2, "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("error"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn audit_log_records_every_destroyed_socket() {
    require!(Netns);
    in_private_netns(|| {
        let mut lab = Lab::start();
        let path = std::env::temp_dir().join(format!("sockkill-audit-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap(); // appended to, never truncated
        let out = sockkill_in_netns(&["kill", "--json", "--dst", "127.0.0.2", "--audit-log", path.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let destroyed = destroyed_cookies(&json(&out), "sockets");
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["earlier"], true);
        // start, one line per destroyed socket, end.
        assert_eq!(lines[1]["event"], "start");
        assert!(lines[1]["command"].as_str().unwrap().contains("--audit-log"));
        let last = lines.last().unwrap();
        assert_eq!(last["event"], "end");
        assert_eq!(last["exit_code"], 0);
        assert_eq!(last["summary"]["destroyed"], 4);
        let middle = &lines[2..lines.len() - 1];
        let logged: BTreeSet<u64> = middle.iter().map(|l| l["cookie"].as_u64().unwrap()).collect();
        assert_eq!(logged, destroyed);
        assert_eq!(destroyed.len(), 4);
        for l in middle {
            assert_eq!(l["event"], "destroyed");
            assert!(l["time"].as_str().unwrap().ends_with('Z'));
            assert!(l["command"].as_str().unwrap().contains("--audit-log"));
            assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.2:"));
        }
        for c in lab.conns_a.iter_mut() {
            c.assert_killed();
        }
        let _ = std::fs::remove_file(&path);
    });
}
