//! The filters `ss` has beyond addresses and ports — cgroup, interface, mark —
//! for real: sockets made in private namespaces with those properties, one
//! kill, and the kernel (and the applications) say only the selected ones
//! ended. Plus the one-walk dump (both families in one request) against one
//! dump per family.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::*;
use nix::sys::socket::{setsockopt, sockopt};
use sockkill::diag::{DumpSpec, SockDiag};
use sockkill::StateSet;

/// Sockets by family and cookie.
type Seen = BTreeSet<(&'static str, u64)>;

/// Every socket the kernel has, through one dump per family and through the one walk.
fn both_ways() -> (Seen, Seen) {
    let mut diag = SockDiag::open().unwrap();
    let mut per_family = BTreeSet::new();
    for af in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        diag.dump(&DumpSpec::new(af, StateSet::ALL, &[]), |s| {
            per_family.insert((s.family(), s.cookie()));
        })
        .unwrap();
    }
    let mut one = BTreeSet::new();
    diag.dump(&DumpSpec::new(libc::AF_UNSPEC as u8, StateSet::ALL, &[]), |s| {
        one.insert((s.family(), s.cookie()));
    })
    .unwrap();
    (per_family, one)
}

/// The one-walk request returns IPv4, IPv6 and IPv4-mapped sockets, each
/// with its cookie: exactly what one dump per family returns.
#[test]
fn one_walk_returns_both_families() {
    require!(Netns);
    in_private_netns(|| {
        let v4 = Echo::start("127.0.0.2:0");
        let v6 = Echo::start("[::1]:0");
        let dual = Echo::start("[::]:0");
        let mapped: SocketAddr = format!("[::ffff:127.0.0.4]:{}", dual.addr.port()).parse().unwrap();
        let _c: Vec<Conn> = [v4.addr, v6.addr, mapped, v4.addr].into_iter().map(Conn::open).collect();
        let (per_family, one) = both_ways();
        assert_eq!(one, per_family);
        let families: BTreeSet<&str> = one.iter().map(|(f, _)| *f).collect();
        assert_eq!(families.len(), 2, "both families in one walk: {one:?}");
        assert!(one.iter().all(|(_, c)| *c != 0));
        assert!(one.len() >= 11, "{one:?}"); // 4 pairs + 3 listeners
    });
}

fn marked(to: SocketAddr, mark: Option<u32>) -> Conn {
    let c = Conn::open(to);
    if let Some(m) = mark {
        setsockopt(&c.stream, sockopt::Mark, &m).unwrap();
    }
    c
}

/// `--mark VALUE/MASK` selects by SO_MARK, in the kernel: four marked
/// connections of six end, two unmarked ones keep talking.
#[test]
fn mark_selects_marked_connections() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut hit: Vec<Conn> = [0x10, 0x1f, 0x10, 0x11].into_iter().map(|m| marked(up.addr, Some(m))).collect();
        let mut miss: Vec<Conn> = vec![marked(up.addr, None), marked(up.addr, Some(0x20)), marked(up.addr, None)];
        let out = sockkill(&["list", "--json", "--mark", "0x10/0xf0"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        let listed = doc["sockets"].as_array().unwrap();
        assert_eq!(listed.len(), 4, "{doc}");
        assert!(listed.iter().all(|s| s["mark"].as_u64().is_some_and(|m| m & 0xf0 == 0x10)), "{doc}");
        let out = sockkill_in_netns(&["kill", "--json", "--mark", "0x10/0xf0"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(json(&out)["summary"]["destroyed"], 4);
        for c in &mut hit {
            c.assert_killed();
        }
        for c in &mut miss {
            c.assert_alive();
        }
        // A mark of 0 in an empty mask selects everything: refused as a catch-all.
        let out = sockkill_in_netns(&["kill", "--mark", "0/0"]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("catch-all"), "{}", stderr(&out));
        for c in &mut miss {
            c.assert_alive();
        }
    });
}

/// Without CAP_NET_ADMIN the kernel refuses a mark condition even to list:
/// said plainly, exit 2.
#[test]
fn mark_needs_cap_net_admin() {
    require!(Netns);
    in_private_netns(|| {
        // Something to dump (an empty namespace is not even walked).
        let up = Echo::start("127.0.0.2:0");
        let _c = Conn::open(up.addr);
        let out = Command::new("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all", BIN, "list", "--mark", "1"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("CAP_NET_ADMIN"), "{}", stderr(&out));
    });
}

/// `--dev IFACE` selects sockets bound to the interface (SO_BINDTODEVICE),
/// by name or index, resolved in the target namespace.
#[test]
fn dev_selects_sockets_bound_to_the_interface() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let bound = |_| {
            let c = Conn::open(up.addr);
            setsockopt(&c.stream, sockopt::BindToDevice, &std::ffi::OsString::from("lo")).unwrap();
            c
        };
        let mut hit: Vec<Conn> = (0..3).map(bound).collect();
        let mut miss: Vec<Conn> = (0..2).map(|_| Conn::open(up.addr)).collect();
        let out = sockkill(&["list", "--json", "--dev", "1"]);
        assert_eq!(json(&out)["sockets"].as_array().unwrap().len(), 3, "{}", stderr(&out));
        let out = sockkill_in_netns(&["kill", "--json", "--dev", "lo"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(json(&out)["summary"]["destroyed"], 3);
        for c in &mut hit {
            c.assert_killed();
        }
        for c in &mut miss {
            c.assert_alive();
        }
        let out = sockkill(&["list", "--dev", "nosuch0"]);
        assert_eq!(code(&out), 2);
        assert!(stderr(&out).contains("no such interface"), "{}", stderr(&out));
    });
}

/// An interface name is looked up in the namespace `--netns` names, not ours.
#[test]
fn dev_names_resolve_in_the_target_namespace() {
    require!(Root);
    let ns = NamedNetns::create();
    let st = Command::new("ip")
        .args(["-n", &ns.name, "link", "add", "skva0", "type", "veth", "peer", "name", "skvb0"])
        .status()
        .unwrap();
    assert!(st.success(), "veth pair in {}", ns.name);
    let out = sockkill(&["list", "--netns", &ns.name, "--dev", "skva0"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = sockkill(&["list", "--dev", "skva0"]);
    assert_eq!(code(&out), 2, "skva0 is not in our namespace: {}", stderr(&out));
    assert!(stderr(&out).contains("no such interface"), "{}", stderr(&out));
}

/// `--cgroup PATH`: in a private mount namespace with cgroup v2 mounted, two
/// processes in two child cgroups each hold connections; one kill by cgroup
/// ends one process's connections, and only those (the kernel's view:
/// sockets by cgroup id).
#[test]
fn cgroup_selects_the_connections_of_one_cgroup() {
    require!(Root);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let port = up.addr.port();
        let dir = std::env::temp_dir().join(format!("sockkill-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Each holder moves itself into its cgroup, then connects (the socket is
        // charged to the cgroup it is created in) and waits.
        let holder = |cg: &str, tag: &str| {
            format!(
                "bash -c \"echo \\$\\$ > {cg}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.2/{port} 4<>/dev/tcp/127.0.0.2/{port} && \
                 echo up > {d}/ready-{tag} && exec sleep 30\" &",
                d = dir.display()
            )
        };
        let script = format!(
            r#"set -e
mount -t cgroup2 none {m}
a={m}/sockkill-test-a-$$; b={m}/sockkill-test-b-$$
mkdir $a $b
{ha}
pa=$!
{hb}
pb=$!
for i in $(seq 100); do [ -e {d}/ready-a ] && [ -e {d}/ready-b ] && break; sleep 0.05; done
echo "ids $(stat -c %i $a) $(stat -c %i $b)"
"$1" kill --json --cgroup $a > {d}/kill.json 2> {d}/kill.err; echo "rc $?"
"$1" kill --json --cgroup sockkill-test-b-$$ --dry-run > {d}/dry.json 2>&1 || true
"$1" list --json --dport {port} > {d}/after.json
kill $pa $pb; wait $pa $pb 2>/dev/null || true
rmdir $a $b
umount {m}
"#,
            m = dir.join("mnt").display(),
            d = dir.display(),
            ha = holder("$a", "a"),
            hb = holder("$b", "b"),
        );
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        assert_not_root_netns();
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "bash", "-c", &script, "sh", BIN])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        let ids: Vec<u64> = text
            .lines()
            .find_map(|l| l.strip_prefix("ids "))
            .map(|l| l.split_whitespace().filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_default();
        assert_eq!(ids.len(), 2, "{text}");
        assert!(text.contains("rc 0"), "{text}\n{}", std::fs::read_to_string(dir.join("kill.err")).unwrap_or_default());
        let kill: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("kill.json")).unwrap()).unwrap();
        validate(&kill);
        assert_eq!(kill["summary"]["destroyed"], 2, "{kill}");
        assert!(kill["sockets"].as_array().unwrap().iter().all(|s| s["cgroup"] == ids[0]), "{kill}");
        // A relative path (to the cgroup2 mount) names b: its two connections, left alone in a dry run.
        let dry: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("dry.json")).unwrap()).unwrap();
        assert_eq!(dry["sockets"].as_array().map(|s| s.len()), Some(2), "{dry}");
        // The kernel's view after the kill: b's client sockets were all there until the holders ended.
        let after: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("after.json")).unwrap()).unwrap();
        let cgroups: Vec<u64> =
            after["sockets"].as_array().unwrap().iter().filter_map(|s| s["cgroup"].as_u64()).collect();
        assert_eq!(cgroups.iter().filter(|c| **c == ids[1]).count(), 2, "{after}");
        assert_eq!(cgroups.iter().filter(|c| **c == ids[0]).count(), 0, "{after}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// A cgroup path that is not cgroup v2, or absent: exit 2, nothing done.
#[test]
fn cgroup_paths_that_are_not_cgroup2_are_refused() {
    for (path, want) in [("/proc", "cgroup v2"), ("/nonexistent/x", "No such file")] {
        let out = sockkill(&["list", "--cgroup", path]);
        assert_eq!(code(&out), 2, "{path}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{path}: {}", stderr(&out));
    }
}

/// A server-side SYN-RECV socket: a listener with TCP_DEFER_ACCEPT keeps the
/// request socket until data arrives, while the client is ESTABLISHED.
fn syn_recv_pair() -> (std::net::TcpListener, std::net::TcpStream, u16) {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let secs: libc::c_int = 30;
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            &secs as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "TCP_DEFER_ACCEPT");
    let port = listener.local_addr().unwrap().port();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let sport = format!("sport = :{port}");
    wait_until(std::time::Duration::from_secs(2), "a SYN-RECV socket", || {
        ss(&["state", "syn-recv", &sport]).len() == 1
    });
    (listener, client, port)
}

/// ss's state groups select what ss selects: `synchronized` and `bucket`
/// include SYN-RECV (the old `synchronized` left it out, so a kill reported
/// clean while `ss -K state synchronized` destroyed it).
#[test]
fn state_groups_select_syn_recv_as_ss_does() {
    require!(Netns);
    in_private_netns(|| {
        let (_listener, _client, port) = syn_recv_pair();
        let p = port.to_string();
        let sport = format!("sport = :{port}");
        for group in ["synchronized", "bucket", "connected"] {
            let oracle = ss(&["state", group, &sport]);
            assert_eq!(oracle.len(), 1, "ss state {group}: {oracle:?}");
            let out = sockkill(&["list", "--state", group, "--sport", &p, "--json"]);
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            let doc = json(&out);
            let states: Vec<&str> =
                doc["sockets"].as_array().unwrap().iter().filter_map(|s| s["state"].as_str()).collect();
            assert_eq!(states, vec!["SYN-RECV"], "--state {group}");
        }
        for group in ["big", "established"] {
            let out = sockkill(&["list", "--state", group, "--sport", &p, "--json"]);
            let doc = json(&out);
            let states: Vec<&str> =
                doc["sockets"].as_array().unwrap().iter().filter_map(|s| s["state"].as_str()).collect();
            assert!(!states.contains(&"SYN-RECV"), "--state {group}: {states:?}");
        }
        let out = sockkill_in_netns(&["kill", "--state", "synchronized", "--sport", &p, "--json"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(json(&out)["summary"]["destroyed"], 1);
        // The kernel, through ss, for a while after the clean exit.
        for _ in 0..10 {
            assert!(ss(&["state", "syn-recv", &sport]).is_empty(), "the SYN-RECV socket is back");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
}
