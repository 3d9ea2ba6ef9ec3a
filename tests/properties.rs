//! Property tests that check meaning, not only the absence of panics:
//! requests decode back to what was encoded, replies decode to the sockets
//! they describe, the kernel's bytecode selects exactly what the user-side
//! matcher selects, and HAProxy's tables parse by name whatever the column
//! order or extra columns. (Filter flags -> text -> flags round trips through
//! the real command line are in the binary's own tests, src/cli/args.rs.)

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use nix::sys::socket::{setsockopt, sockopt};
use proptest::prelude::*;
use sockkill::diag::{bytecode, wire, DumpSpec, SockDiag};
use sockkill::engine::Query;
use sockkill::filter::expr::{Cmp, Side, Term};
use sockkill::filter::{parse_cidr, Cgroup, Expr, Family, Mark, PortRange, Protocols, StateSet};
use sockkill::haproxy::parse;
use sockkill::testing::strategies::{arb_filter, arb_range, arb_states};
use sockkill::Filter;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// An inet_diag_msg reply for one socket, as the kernel builds it, with an attribute after it.
fn socket_reply(seq: u32, af: u8, state: u8, local: SocketAddr, peer: SocketAddr, cookie: u64, inode: u32) -> Vec<u8> {
    let addr = |ip: IpAddr| -> [u8; 16] {
        let mut b = [0u8; 16];
        match ip {
            IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
        }
        b
    };
    let mut m = Vec::new();
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&20u16.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[af, state, 0, 0]);
    m.extend_from_slice(&local.port().to_be_bytes());
    m.extend_from_slice(&peer.port().to_be_bytes());
    m.extend_from_slice(&addr(local.ip()));
    m.extend_from_slice(&addr(peer.ip()));
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&(cookie as u32).to_ne_bytes());
    m.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    m.extend_from_slice(&[0; 12]);
    m.extend_from_slice(&0u32.to_ne_bytes()); // uid
    m.extend_from_slice(&inode.to_ne_bytes());
    m.extend_from_slice(&8u16.to_ne_bytes()); // an attribute of a type we do not know
    m.extend_from_slice(&99u16.to_ne_bytes());
    m.extend_from_slice(&[1, 2, 3, 4]);
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn arb_endpoint(v6: bool) -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(move |(a, p)| {
        if v6 {
            SocketAddr::new(IpAddr::from(a), p)
        } else {
            SocketAddr::new(IpAddr::from([a[0], a[1], a[2], a[3]]), p)
        }
    })
}

proptest! {
    #![proptest_config(config(2000))]

    /// A dump request decodes back to its family, states, sequence number and
    /// the exact bytecode of its filter.
    #[test]
    fn dump_requests_round_trip(f in arb_filter(), v6 in any::<bool>(), seq in any::<u32>()) {
        let af = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        let bc = bytecode::compile(&f);
        let mut out = Vec::new();
        let sport = f.sport.first().map_or(0, |r| r.lo);
        let dport = f.dport.first().map_or(0, |r| r.hi);
        wire::encode_dump(&mut out, &DumpSpec { sport, dport, ..DumpSpec::new(af, f.states, &bc) }, seq).unwrap();
        prop_assert_eq!(out.len() % 4, 0);
        let back = wire::decode_dump_request(&out).unwrap();
        prop_assert_eq!(back.family, af);
        prop_assert_eq!(back.protocol, libc::IPPROTO_TCP as u8);
        prop_assert_eq!(back.states, f.states.bits());
        prop_assert_eq!(back.seq, seq);
        prop_assert_eq!((back.sport, back.dport), (sport, dport));
        prop_assert_eq!(back.bytecode, bc);
    }

    /// A socket reply decodes to the socket it describes (whatever attributes follow).
    #[test]
    fn socket_replies_decode_to_their_socket(
        v6 in any::<bool>(),
        (local, peer) in any::<bool>().prop_flat_map(|v6| (arb_endpoint(v6), arb_endpoint(v6))),
        state in 1u8..=12,
        cookie in any::<u64>(),
        inode in any::<u32>(),
        seq in any::<u32>(),
    ) {
        let af = if local.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET } as u8;
        let _ = v6;
        let dg = socket_reply(seq, af, state, local, peer, cookie, inode);
        let replies = wire::decode(&dg).unwrap();
        prop_assert_eq!(replies.len(), 1);
        let wire::Reply::Socket { seq: s, socket, interrupted } = &replies[0] else {
            return Err(TestCaseError::fail("not a socket"));
        };
        prop_assert_eq!(*s, seq);
        prop_assert!(!interrupted);
        prop_assert_eq!(socket.local().ip(), local.ip());
        prop_assert_eq!(socket.local().port(), local.port());
        prop_assert_eq!(socket.peer().ip(), peer.ip());
        prop_assert_eq!(socket.peer().port(), peer.port());
        prop_assert_eq!(socket.cookie(), cookie);
        prop_assert_eq!(socket.inode, inode);
        prop_assert_eq!(socket.state.map(|s| s as u8), Some(state));
    }

    /// A datagram cut anywhere decodes to an error or to a prefix of its
    /// messages, never to a socket that was not in it.
    #[test]
    fn truncated_datagrams_are_errors_or_prefixes(cookies in proptest::collection::vec(any::<u64>(), 1..6), cut in any::<usize>()) {
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let mut dg = Vec::new();
        for c in &cookies {
            dg.extend(socket_reply(1, libc::AF_INET as u8, 1, a, b, *c, 1));
        }
        let cut = cut % (dg.len() + 1);
        if let Ok(replies) = wire::decode(&dg[..cut]) {
            let got: Vec<u64> = replies
                .iter()
                .map(|r| match r { wire::Reply::Socket { socket, .. } => socket.cookie(), _ => u64::MAX })
                .collect();
            prop_assert_eq!(&got[..], &cookies[..got.len()]);
        }
    }

    /// `show servers state` parses by field name, whatever the column order and extra columns.
    #[test]
    fn servers_state_found_by_name(
        servers in proptest::collection::vec(("[a-z][a-z0-9_]{0,8}", "[a-z][a-z0-9_]{0,8}", any::<[u8; 4]>(), any::<u16>()), 1..6),
        extra in proptest::collection::vec("x_[a-z]{1,6}", 0..4),
        order in any::<u64>(),
    ) {
        let mut names = vec!["be_name", "srv_name", "srv_addr", "srv_port"];
        let extra_names: Vec<String> = extra.iter().enumerate().map(|(i, e)| format!("{e}{i}")).collect();
        names.extend(extra_names.iter().map(String::as_str));
        let perm = permutation(names.len(), order);
        let header: Vec<&str> = perm.iter().map(|&i| names[i]).collect();
        let mut text = format!("1\n# {}\n", header.join(" "));
        for (be, srv, ip, port) in &servers {
            let ip = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
            let port = port.to_string();
            let mut values = vec![be.as_str(), srv.as_str(), ip.as_str(), port.as_str()];
            values.extend(extra_names.iter().map(|_| "-"));
            let row: Vec<&str> = perm.iter().map(|&i| values[i]).collect();
            text += &format!("{}\n", row.join(" "));
        }
        text.push('\n');
        let parsed = parse::parse_servers_state(&text).unwrap();
        prop_assert_eq!(parsed.len(), servers.len());
        for (p, (be, srv, ip, port)) in parsed.iter().zip(&servers) {
            prop_assert_eq!(&p.backend, be);
            prop_assert_eq!(&p.name, srv);
            prop_assert_eq!(p.addr, Some(IpAddr::from(*ip)));
            prop_assert_eq!(p.port, *port);
        }
    }

    /// `show stat` CSV parses by field name, whatever the column order and extra columns.
    #[test]
    fn stat_found_by_name(
        rows in proptest::collection::vec(("[a-z][a-z0-9_]{0,8}", "[a-z][a-z0-9_]{0,8}", proptest::option::of(0u64..1_000_000), "(UP|DOWN|MAINT|no check)"), 1..6),
        extra in 0usize..5,
        order in any::<u64>(),
    ) {
        let mut names: Vec<String> = ["pxname", "svname", "scur", "status"].iter().map(|s| s.to_string()).collect();
        names.extend((0..extra).map(|i| format!("col{i}")));
        let perm = permutation(names.len(), order);
        let mut text = format!("# {}\n", perm.iter().map(|&i| names[i].as_str()).collect::<Vec<_>>().join(","));
        for (px, sv, scur, status) in &rows {
            let scur = scur.map_or(String::new(), |s| s.to_string());
            let mut values = vec![px.clone(), sv.clone(), scur, status.clone()];
            values.extend((0..extra).map(|i| i.to_string()));
            text += &format!("{}\n", perm.iter().map(|&i| values[i].as_str()).collect::<Vec<_>>().join(","));
        }
        let parsed = parse::parse_stat(&text).unwrap();
        prop_assert_eq!(parsed.len(), rows.len());
        for (p, (px, sv, scur, status)) in parsed.iter().zip(&rows) {
            prop_assert_eq!((&p.proxy, &p.server, p.scur, &p.status), (px, sv, *scur, status));
        }
    }

    /// `show proc` of any branch's shape (2.4's extra column, old workers,
    /// a programs section or none) yields the master and every worker, old ones marked.
    #[test]
    fn proc_lists_every_worker(
        master in 1u32..100_000,
        current in proptest::collection::vec(1u32..100_000, 1..3),
        old in proptest::collection::vec(1u32..100_000, 0..4),
        relative_column in any::<bool>(),
        programs in any::<bool>(),
    ) {
        let row = |pid: u32, kind: &str, rel: &str| {
            if relative_column { format!("{pid}          {kind}          {rel}               0               0d00h00m02s     2.4.0\n") }
            else { format!("{pid}          {kind}          0               0d00h00m02s     3.2.0\n") }
        };
        let mut text = if relative_column {
            "#<PID>          <type>          <relative PID>  <reloads>       <uptime>        <version>\n".to_string()
        } else {
            "#<PID>          <type>          <reloads>       <uptime>        <version>\n".to_string()
        };
        text += &row(master, "master", "0");
        text += "# workers\n";
        for p in &current { text += &row(*p, "worker", "1"); }
        if !old.is_empty() {
            text += "# old workers\n";
            for p in &old { text += &row(*p, "worker", "[was: 1]"); }
        }
        if programs { text += "# programs\n9999 dataplane 0 0d00h00m05s -\n"; }
        let parsed = parse::parse_proc(&text).unwrap();
        let workers: Vec<(u32, bool)> = parsed.iter().filter(|p| p.kind == "worker").map(|p| (p.pid, p.old)).collect();
        let want: Vec<(u32, bool)> = current.iter().map(|p| (*p, false)).chain(old.iter().map(|p| (*p, true))).collect();
        prop_assert_eq!(workers, want);
        prop_assert_eq!(parsed.iter().filter(|p| p.kind == "master").count(), 1);
        prop_assert!(parsed.iter().all(|p| p.kind != "dataplane"));
    }

    /// `show sess` lines, in 2.4's shape (`s1=[..]`) or 2.6+'s (`scb=[..]`),
    /// with fields in any order and unknown ones between, give each stream's
    /// backend, server and server-side fd.
    #[test]
    fn sess_gives_backend_server_and_fd(
        streams in proptest::collection::vec((proptest::option::of("[a-z][a-z0-9_]{0,8}"), proptest::option::of("[a-z][a-z0-9_]{0,8}"), proptest::option::of(3u32..100_000), 0u32..100_000), 0..8),
        legacy in any::<bool>(),
        order in any::<u64>(),
    ) {
        let mut text = String::new();
        for (i, (be, srv, fd, front_fd)) in streams.iter().enumerate() {
            let fd_text = fd.map_or("-1".to_string(), |f| f.to_string());
            let (front_key, back_key) = if legacy { ("s0", "s1") } else { ("scf", "scb") };
            let mut tokens = vec![
                "proto=tcpv4".to_string(),
                "src=10.0.0.1:4000".to_string(),
                "fe=fe".to_string(),
                format!("be={}", be.as_deref().unwrap_or("<NONE>")),
                format!("srv={}", srv.as_deref().unwrap_or("<none>")),
                "ts=00".to_string(),
                "rq[f=848202h,i=0,an=00h,rx=59m59s,wx=,ax=]".to_string(),
                format!("{front_key}=[8,0h,fd={front_fd}]"),
                format!("{back_key}=[8,1h,fd={fd_text},ex=]"),
                "exp=3s".to_string(),
            ];
            let perm = permutation(tokens.len(), order.wrapping_add(i as u64));
            tokens = perm.iter().map(|&j| tokens[j].clone()).collect();
            text += &format!("0x{:x}: {}\n", 0x5555_0000 + i, tokens.join(" "));
        }
        let parsed = parse::parse_sess(&text);
        prop_assert_eq!(parsed.len(), streams.len());
        for (p, (be, srv, fd, _)) in parsed.iter().zip(&streams) {
            prop_assert_eq!(&p.backend, be);
            prop_assert_eq!(&p.server, srv);
            prop_assert_eq!(p.fd, *fd);
        }
    }
}

/// A permutation of 0..n chosen by `seed`.
fn permutation(n: usize, mut seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let j = (seed >> 33) as usize % (i + 1);
        v.swap(i, j);
    }
    v
}

/// One group of connections: (listen address, connect address, connections,
/// the clients' mark, clients bound to `lo`).
type Group = (String, String, usize, Option<u32>, bool);

/// One generated socket layout: listeners (with connections to them) on a
/// handful of addresses of both families, IPv4-mapped ones included, some
/// clients marked (SO_MARK) or bound to `lo` (SO_BINDTODEVICE).
#[derive(Debug, Clone)]
struct Layout {
    groups: Vec<Group>,
}

fn arb_layout() -> impl Strategy<Value = Layout> {
    let addrs = prop_oneof![
        (0u8..4).prop_map(|h| (format!("127.0.{h}.2"), format!("127.0.{h}.2"))),
        (0u8..4).prop_map(|h| ("::".to_string(), format!("::ffff:127.0.{h}.9"))),
        (1u8..4).prop_map(|h| (format!("fd00::{h}"), format!("fd00::{h}"))),
        Just(("::1".to_string(), "::1".to_string())),
    ];
    let mark = prop_oneof![Just(None), Just(Some(0x10)), Just(Some(0x11)), Just(Some(0x20))];
    let group = (addrs, 1usize..4, mark, any::<bool>()).prop_map(|((l, c), n, m, b)| (l, c, n, m, b));
    proptest::collection::vec(group, 1..6).prop_map(|groups| Layout { groups })
}

/// Filters aimed at a layout's neighbourhood, so they select something but not everything.
fn arb_near_filter() -> impl Strategy<Value = Filter> {
    let net = prop_oneof![
        (0u8..4, prop_oneof![Just(32u8), Just(24), Just(16), Just(8)])
            .prop_map(|(h, p)| parse_cidr(&format!("127.0.{h}.2/{p}")).unwrap()),
        (0u8..4).prop_map(|h| parse_cidr(&format!("127.0.{h}.9")).unwrap()),
        (1u8..4, prop_oneof![Just(128u8), Just(64), Just(16)])
            .prop_map(|(h, p)| parse_cidr(&format!("fd00::{h}/{p}")).unwrap()),
        Just(parse_cidr("::1").unwrap()),
        Just(parse_cidr("127.0.0.1").unwrap()),
    ];
    let range = prop_oneof![(1u16..65535).prop_map(PortRange::one), arb_range()];
    let mark = prop_oneof![
        Just(Mark { value: 0x10, mask: u32::MAX }),
        Just(Mark { value: 0x10, mask: 0xf0 }),
        Just(Mark { value: 0x20, mask: 0x20 }),
        Just(Mark { value: 0, mask: u32::MAX }),
    ];
    // A cgroup id is patched in at run time: 0 stands for the test's own cgroup, 1 for another.
    let cgroup = (0u64..2).prop_map(|id| Cgroup { path: id.to_string(), id, root: false });
    (
        (
            proptest::collection::vec(net.clone(), 0..3),
            proptest::collection::vec(net, 0..2),
            proptest::collection::vec(range.clone(), 0..2),
            proptest::collection::vec(range, 0..2),
        ),
        arb_states(),
        prop_oneof![Just(None), Just(Some(Family::V4)), Just(Some(Family::V6))],
        (
            proptest::collection::vec(prop_oneof![Just(1u32), Just(2u32)], 0..2),
            proptest::collection::vec(mark, 0..2),
            proptest::collection::vec(cgroup, 0..2),
        ),
    )
        .prop_map(|((dst, src, dport, sport), states, family, (devs, marks, cgroups))| Filter {
            // -4/-6 with a prefix of the other family is refused before any dump: keep it out.
            dst: dst.into_iter().filter(|n| compatible(family, n)).collect(),
            src: src.into_iter().filter(|n| compatible(family, n)).collect(),
            dport,
            sport,
            states,
            family,
            pids: Vec::new(),
            devs,
            marks,
            cgroups,
            expression: None,
            protocols: Protocols::TCP,
        })
}

/// ss expressions over the same neighbourhood (`not` and `or` included).
fn arb_near_expr() -> impl Strategy<Value = Expr> {
    let net = prop_oneof![
        (0u8..4, prop_oneof![Just(32u8), Just(24), Just(8), Just(0)]).prop_map(|(h, p)| ipnet::IpNet::new(
            format!("127.0.{h}.2").parse().unwrap(),
            p
        )
        .unwrap()
        .trunc()),
        (1u8..4, prop_oneof![Just(128u8), Just(64), Just(0)]).prop_map(|(h, p)| ipnet::IpNet::new(
            format!("fd00::{h}").parse().unwrap(),
            p
        )
        .unwrap()
        .trunc()),
        Just("::1/128".parse().unwrap()),
        Just("::ffff:127.0.0.0/104".parse().unwrap()),
    ];
    let side = prop_oneof![Just(Side::Src), Just(Side::Dst)];
    let port = prop_oneof![Just(0u16), Just(1024), Just(32768), Just(40000), Just(50000), Just(60999), Just(65535)];
    let cmp = prop_oneof![Just(Cmp::Ge), Just(Cmp::Le), Just(Cmp::Gt), Just(Cmp::Lt)];
    let term = prop_oneof![
        4 => (side.clone(), proptest::option::of(net), proptest::option::of(port.clone()))
            .prop_map(|(side, net, port)| Term::Host { side, net, port }),
        3 => (side, cmp, port).prop_map(|(side, cmp, port)| Term::Port { side, cmp, port }),
        1 => prop_oneof![Just(1u32), Just(7)].prop_map(|index| Term::Dev { name: index.to_string(), index }),
        1 => prop_oneof![
            Just(Mark { value: 0x10, mask: u32::MAX }),
            Just(Mark { value: 0x10, mask: 0xf0 }),
            Just(Mark { value: 0, mask: u32::MAX }),
        ]
        .prop_map(Term::Mark),
        1 => (0u64..2).prop_map(|id| Term::Cgroup(Cgroup { path: id.to_string(), id, root: false })),
        1 => Just(Term::Autobound { ephemeral: PortRange { lo: 0, hi: 0 } }),
    ];
    term.prop_map(Expr::Term).prop_recursive(4, 16, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
        ]
    })
}

fn ephemeral_range() -> PortRange {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    sockkill::filter::expr::parse_port_range(&text).expect("ip_local_port_range")
}

/// Near filters, half of them with an expression too.
fn arb_near_filter_or_expr() -> impl Strategy<Value = Filter> {
    (arb_near_filter(), proptest::option::of(arb_near_expr())).prop_map(|(f, expression)| Filter { expression, ..f })
}

fn compatible(family: Option<Family>, n: &ipnet::IpNet) -> bool {
    !matches!((family, n), (Some(Family::V4), ipnet::IpNet::V6(_)) | (Some(Family::V6), ipnet::IpNet::V4(_)))
}

/// What the kernel returns for `filter` alone (bytecode and header ports, as
/// sockkill asks), or, with `user_side`, what the user-side matcher selects
/// from an unfiltered dump — through one dump per family, or (`one_walk`)
/// the one request that returns both families.
fn dump(filter: &Filter, user_side: bool, one_walk: bool) -> BTreeSet<(String, String, u64)> {
    let mut diag = SockDiag::open().unwrap();
    let mut out = BTreeSet::new();
    let query = Query::new(filter.clone()).unwrap();
    let families: &[u8] = if one_walk { &[0] } else { &[libc::AF_INET as u8, libc::AF_INET6 as u8] };
    for &af in families {
        let spec = if user_side { DumpSpec::new(af, filter.states, &[]) } else { query.spec(af) };
        diag.dump(&spec, |s| {
            if !user_side || filter.matches(&s) {
                out.insert((s.local().to_string(), s.peer().to_string(), s.cookie()));
            }
        })
        .unwrap();
    }
    out
}

proptest! {
    #![proptest_config(config(24))]

    /// For generated filters over a generated set of sockets, what the kernel
    /// returns through the bytecode alone (before sockkill's own re-check)
    /// is exactly what the user-side matcher selects from an unfiltered dump.
    #[test]
    fn kernel_bytecode_equals_the_user_side_matcher(
        layout in arb_layout(),
        filters in proptest::collection::vec(arb_near_filter_or_expr(), 12),
    ) {
        if !common::can(common::Need::Netns, "kernel_bytecode_equals_the_user_side_matcher") {
            return Ok(());
        }
        let result = common::in_private_netns(move || -> Result<(), String> {
            for addr in ["fd00::1", "fd00::2", "fd00::3"] {
                let st = std::process::Command::new("ip")
                    .args(["-6", "addr", "add", &format!("{addr}/128"), "dev", "lo", "nodad"])
                    .status()
                    .map_err(|e| e.to_string())?;
                if !st.success() {
                    return Err(format!("ip addr add {addr}"));
                }
                common::wait_local_address(addr.parse().map_err(|_| format!("bad address {addr}"))?, 0);
            }
            let mut listeners = Vec::new();
            let mut keep = Vec::new();
            for (listen, connect, n, mark, bind_lo) in &layout.groups {
                let ip: IpAddr = listen.parse().map_err(|_| format!("bad address {listen}"))?;
                let l = std::net::TcpListener::bind((ip, 0)).map_err(|e| format!("bind {listen}: {e}"))?;
                let port = l.local_addr().map_err(|e| e.to_string())?.port();
                for _ in 0..*n {
                    let to = SocketAddr::new(connect.parse().map_err(|_| format!("bad address {connect}"))?, port);
                    let c = std::net::TcpStream::connect(to).map_err(|e| format!("connect {to}: {e}"))?;
                    if let Some(m) = mark {
                        setsockopt(&c, sockopt::Mark, m).map_err(|e| format!("SO_MARK: {e}"))?;
                    }
                    if *bind_lo {
                        setsockopt(&c, sockopt::BindToDevice, &std::ffi::OsString::from("lo"))
                            .map_err(|e| format!("SO_BINDTODEVICE: {e}"))?;
                    }
                    keep.push(c);
                    keep.push(l.accept().map_err(|e| e.to_string())?.0);
                }
                listeners.push(l);
            }
            // The test's own cgroup (v2) id, as the kernel reports it for its sockets.
            let own = {
                let mut diag = SockDiag::open().map_err(|e| e.to_string())?;
                let mut id = 0;
                diag.dump(&DumpSpec::new(libc::AF_INET6 as u8, StateSet::ALL, &[]), |s| id = id.max(s.cgroup))
                    .map_err(|e| e.to_string())?;
                diag.dump(&DumpSpec::new(libc::AF_INET as u8, StateSet::ALL, &[]), |s| id = id.max(s.cgroup))
                    .map_err(|e| e.to_string())?;
                id
            };
            for f in &filters {
                let mut f = f.clone();
                for c in &mut f.cgroups {
                    c.id = if c.id == 0 { own } else { own + 1_000_003 };
                }
                if let Some(e) = f.expression.as_mut() {
                    for t in e.terms_mut() {
                        match t {
                            Term::Cgroup(c) => c.id = if c.id == 0 { own } else { own + 1_000_003 },
                            // The namespace's ephemeral range, as `autobound` resolves it.
                            Term::Autobound { ephemeral } => *ephemeral = ephemeral_range(),
                            _ => {}
                        }
                    }
                }
                let by_kernel = dump(&f, false, false);
                let by_user = dump(&f, true, false);
                if by_kernel != by_user {
                    return Err(format!("kernel and user side disagree for {f}:\nkernel {by_kernel:?}\nuser   {by_user:?}"));
                }
                let one_walk = dump(&f, false, true);
                if one_walk != by_kernel {
                    return Err(format!("the one walk differs for {f}:\none walk {one_walk:?}\nper family {by_kernel:?}"));
                }
            }
            drop((keep, listeners));
            Ok(())
        });
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
