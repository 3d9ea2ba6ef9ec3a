//! proptest generators of library values, shared by the integration tests
//! (tests/properties.rs) and the binary's own tests (src/cli/args.rs).
#![allow(clippy::unwrap_used)] // generated values are valid by construction

use std::net::Ipv6Addr;

use crate::filter::{parse_cidr, Family, Mark, PortRange, StateSet};
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
        proptest::collection::vec(arb_mark(), 0..2),
    )
        .prop_map(|(dst, src, dport, sport, states, family, marks)| Filter {
            dst,
            src,
            dport,
            sport,
            states,
            family,
            marks,
            ..Filter::default()
        })
}

/// Any filter with `--pid` values too.
pub fn arb_filter_with_pids() -> impl Strategy<Value = Filter> {
    (arb_filter(), proptest::collection::vec(1u32..100_000, 0..3)).prop_map(|(f, pids)| Filter { pids, ..f })
}
