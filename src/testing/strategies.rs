//! proptest generators of library values, shared by the integration tests
//! (tests/properties.rs) and the binary's own tests (src/cli/args.rs).
#![allow(clippy::unwrap_used)] // generated values are valid by construction

use std::net::Ipv6Addr;

use crate::filter::{parse_cidr, Family, Mark, PortRange, Protocols, StateSet};
use crate::Filter;
use proptest::prelude::*;

/// Any non-empty set of TCP states, built from `--state` names.
pub fn arb_states() -> impl Strategy<Value = StateSet> {
    (1u32..(1 << 11)).prop_map(|bits| {
        let names: Vec<&str> = crate::filter::state_flag_names()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, n)| n)
            .collect();
        StateSet::parse_names(&names).unwrap()
    })
}

/// Any IPv4 or IPv6 prefix (IPv4-mapped ones become IPv4, as parsing does).
pub fn arb_net() -> impl Strategy<Value = ipnet::IpNet> {
    prop_oneof![
        (any::<[u8; 4]>(), 0u8..=32)
            .prop_map(|(a, p)| parse_cidr(&format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3])).unwrap()),
        (any::<[u16; 8]>(), 0u8..=128).prop_map(|(a, p)| parse_cidr(&format!("{}/{p}", Ipv6Addr::from(a))).unwrap()),
    ]
}

/// Any port range.
pub fn arb_range() -> impl Strategy<Value = PortRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(a, b)| PortRange { lo: a.min(b), hi: a.max(b) })
}

/// Any mark condition (the value within the mask).
pub fn arb_mark() -> impl Strategy<Value = Mark> {
    (any::<u32>(), any::<u32>()).prop_map(|(v, m)| Mark { value: v & m, mask: m })
}

/// Any filter without `--pid`, `--cgroup` and `--dev` (those name things on
/// the system, resolved when the command line is planned).
pub fn arb_filter() -> impl Strategy<Value = Filter> {
    (
        proptest::collection::vec(arb_net(), 0..3),
        proptest::collection::vec(arb_net(), 0..3),
        proptest::collection::vec(arb_range(), 0..3),
        proptest::collection::vec(arb_range(), 0..3),
        arb_states(),
        prop_oneof![Just(None), Just(Some(Family::V4)), Just(Some(Family::V6))],
        (
            proptest::collection::vec(arb_mark(), 0..2),
            prop_oneof![
                4 => Just(Protocols::TCP),
                1 => Just(Protocols { tcp: false, udp: true }),
                1 => Just(Protocols { tcp: true, udp: true }),
            ],
        ),
    )
        .prop_map(|(dst, src, dport, sport, states, family, (marks, protocols))| Filter {
            dst,
            src,
            dport,
            sport,
            states,
            family,
            marks,
            protocols,
            ..Filter::default()
        })
}

/// Any filter with `--pid` values too.
pub fn arb_filter_with_pids() -> impl Strategy<Value = Filter> {
    (arb_filter(), proptest::collection::vec(1u32..100_000, 0..3)).prop_map(|(f, pids)| Filter { pids, ..f })
}

/// Addresses the expression generators and the sockets share, so that
/// conditions hit: IPv4, IPv6, link-local, IPv4-mapped, unspecified.
const V4_POOL: [&str; 4] = ["10.0.0.1", "10.0.0.2", "192.168.1.1", "0.0.0.0"];
const V6_POOL: [&str; 6] = ["fd00::1", "fd00::2:1", "fe80::1", "::1", "::ffff:10.0.0.1", "::"];
const PORT_POOL: [u16; 7] = [0, 1, 22, 80, 1024, 40000, 65535];

fn arb_pool_ip() -> impl Strategy<Value = std::net::IpAddr> {
    prop_oneof![
        proptest::sample::select(&V4_POOL[..]).prop_map(|a| a.parse().unwrap()),
        proptest::sample::select(&V6_POOL[..]).prop_map(|a| a.parse().unwrap()),
    ]
}

fn arb_pool_port() -> impl Strategy<Value = u16> {
    prop_oneof![proptest::sample::select(&PORT_POOL[..]), any::<u16>()]
}

/// A prefix around a pool address (IPv4-mapped ones stay IPv6, as ss reads them).
fn arb_expr_net() -> impl Strategy<Value = ipnet::IpNet> {
    (arb_pool_ip(), any::<u8>()).prop_map(|(ip, len)| {
        let max = if ip.is_ipv4() { 33 } else { 129 };
        ipnet::IpNet::new(ip, len % max).unwrap().trunc()
    })
}

/// One term of ss's expression over the shared pools (devices 0-3 by index,
/// cgroup ids 0-3, the ephemeral range 1024-50000).
pub fn arb_term() -> impl Strategy<Value = crate::filter::expr::Term> {
    use crate::filter::expr::{Cmp, Side, Term};
    use crate::filter::Cgroup;
    let side = prop_oneof![Just(Side::Src), Just(Side::Dst)];
    let cmp = prop_oneof![Just(Cmp::Ge), Just(Cmp::Le), Just(Cmp::Gt), Just(Cmp::Lt)];
    prop_oneof![
        4 => (side.clone(), proptest::option::of(arb_expr_net()), proptest::option::of(arb_pool_port()))
            .prop_map(|(side, net, port)| Term::Host { side, net, port }),
        2 => (side, cmp, arb_pool_port()).prop_map(|(side, cmp, port)| Term::Port { side, cmp, port }),
        1 => (1u32..4).prop_map(|i| Term::Dev { name: i.to_string(), index: i }),
        1 => (0u32..4, prop_oneof![Just(u32::MAX), Just(0xf), Just(0)])
            .prop_map(|(v, mask)| Term::Mark(Mark { value: v & mask, mask })),
        1 => (1u64..4).prop_map(|id| Term::Cgroup(Cgroup { path: format!("/g{id}"), id, root: false })),
        1 => Just(Term::Autobound { ephemeral: PortRange { lo: 1024, hi: 50000 } }),
    ]
}

/// Any ss expression of up to a few dozen terms.
pub fn arb_expr() -> impl Strategy<Value = crate::filter::Expr> {
    use crate::filter::Expr;
    arb_term().prop_map(Expr::Term).prop_recursive(5, 32, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| Expr::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner).prop_map(|(a, b)| Expr::Or(Box::new(a), Box::new(b))),
        ]
    })
}

/// A socket over the shared pools, with an interface, mark and cgroup.
pub fn arb_expr_socket() -> impl Strategy<Value = crate::socket::TcpSocket> {
    use std::net::{IpAddr, SocketAddr};
    (arb_pool_ip(), arb_pool_ip(), arb_pool_port(), arb_pool_port(), 0u32..4, 0u32..0x20, 0u64..4).prop_map(
        |(local, peer, lport, pport, dev, mark, cgroup)| {
            // Both ends of a socket are of its family.
            let peer = match (local, peer) {
                (IpAddr::V4(_), IpAddr::V6(_)) => "10.0.0.2".parse().unwrap(),
                (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
                (_, p) => p,
            };
            let mut s = crate::socket::TcpSocket::for_test(
                SocketAddr::new(local, lport),
                SocketAddr::new(peer, pport),
                crate::socket::TcpState::Established,
            );
            s.id.interface_id = dev;
            s.mark = Some(mark);
            s.cgroup = cgroup;
            s
        },
    )
}
