//! Property tests: the parsers never panic, whatever they are fed, and the
//! well-formed inputs they accept round-trip.

use clap::Parser;
use proptest::prelude::*;
use sockkill::diag::wire;
use sockkill::filter::{parse_cidr, PortRange, StateSet};
use sockkill::haproxy::parse;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2000, ..ProptestConfig::default() }
}

/// A netlink message: header with the given type/flags/length fix-up, then payload.
fn message(ty: u16, flags: u16, payload: &[u8], len_delta: i32) -> Vec<u8> {
    let len = (16 + payload.len()) as i64 + len_delta as i64;
    let mut m = Vec::new();
    m.extend_from_slice(&(len.clamp(0, u32::MAX as i64) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&7u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn filter_values_never_panic(s in ".{0,64}") {
        let _ = parse_cidr(&s);
        let _ = s.parse::<PortRange>();
        let _ = StateSet::parse_name(&s);
        let _ = sockkill::cli::duration(&s);
        let _ = sockkill::netns::NetnsSpec::parse(&s);
        let _ = sockkill::haproxy::api::Endpoint::parse(&s);
    }

    #[test]
    fn cidrs_round_trip(a in any::<[u8; 4]>(), p in 0u8..=32) {
        let text = format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3]);
        let net = parse_cidr(&text).unwrap();
        prop_assert_eq!(net.prefix_len(), p);
        prop_assert_eq!(parse_cidr(&net.to_string()).unwrap(), net);
    }

    #[test]
    fn port_ranges_parse_iff_ordered(lo in any::<u16>(), hi in any::<u16>()) {
        let r = format!("{lo}-{hi}").parse::<PortRange>();
        prop_assert_eq!(r.is_ok(), lo <= hi);
    }

    #[test]
    fn command_lines_never_panic(args in proptest::collection::vec(
        prop_oneof![
            Just("list".to_string()), Just("kill".to_string()), Just("haproxy".to_string()), Just("check".to_string()),
            Just("--dst".to_string()), Just("--dport".to_string()), Just("--state".to_string()), Just("-4".to_string()),
            Just("-6".to_string()), Just("--pid".to_string()), Just("--netns".to_string()), Just("--json".to_string()),
            Just("--server".to_string()), Just("--addr".to_string()), Just("--grace".to_string()), Just("--max".to_string()),
            ".{0,12}",
        ],
        0..8,
    )) {
        let mut argv = vec!["sockkill".to_string()];
        argv.extend(args);
        if let Ok(cli) = sockkill::cli::Cli::try_parse_from(&argv) {
            // Accepted command lines still validate their filter without panicking.
            if let sockkill::cli::Command::List { filter, .. } | sockkill::cli::Command::Kill { filter, .. } = &cli.command {
                let _ = sockkill::Query::new(filter.to_filter());
            }
        }
    }

    #[test]
    fn netlink_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = wire::decode(&bytes);
    }

    #[test]
    fn netlink_messages_with_bad_lengths_never_panic(
        ty in prop_oneof![Just(2u16), Just(3u16), Just(20u16), any::<u16>()],
        flags in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        delta in -40i32..40,
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut m = message(ty, flags, &payload, delta);
        m.extend(tail);
        let _ = wire::decode(&m);
    }

    #[test]
    fn socket_replies_decode_with_any_attributes(
        body in proptest::collection::vec(any::<u8>(), 72..72 + 400),
        family in prop_oneof![Just(2u8), Just(10u8)],
    ) {
        // Any inet_diag_msg (right family) with any trailing bytes (unknown or
        // resized attributes) decodes to a socket.
        let mut payload = body;
        payload[0] = family;
        let m = message(20, 2, &payload, 0);
        let replies = wire::decode(&m).unwrap();
        prop_assert_eq!(replies.len(), 1);
        let is_socket = matches!(replies[0], wire::Reply::Socket { .. });
        prop_assert!(is_socket);
    }

    #[test]
    fn haproxy_parsers_never_panic(text in "(.{0,40}\n){0,8}") {
        let _ = parse::parse_info(&text);
        let _ = parse::parse_servers_state(&text);
        let _ = parse::parse_stat(&text);
        let _ = parse::parse_proc(&text);
        let _ = parse::check_answer("x", &text);
        let _ = parse::version_at_least(&text, 3, 0);
    }

    #[test]
    fn haproxy_structured_garbage_never_panics(
        fields in proptest::collection::vec("[a-z_#0-9.:-]{0,12}", 0..30),
        rows in proptest::collection::vec(proptest::collection::vec("[a-z0-9.:,-]{0,10}", 0..30), 0..5),
    ) {
        let header = fields.join(" ");
        let body: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
        let text = format!("1\n# {header}\n{}\n", body.join("\n"));
        let _ = parse::parse_servers_state(&text);
        let csv = format!("# {}\n{}\n", fields.join(","), rows.iter().map(|r| r.join(",")).collect::<Vec<_>>().join("\n"));
        let _ = parse::parse_stat(&csv);
        let proc_text = format!("#<PID> <type>\n{}\n# old workers\n{}\n", body.join("\n"), header);
        let _ = parse::parse_proc(&proc_text);
    }

    #[test]
    fn servers_state_found_by_name(port in 1u16.., a in any::<[u8; 4]>(), extra in 0usize..4) {
        // Fields in any order, with extra unknown ones, are found by name.
        let mut names = vec!["be_name", "srv_name", "srv_addr", "srv_port"];
        let ip = format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3]);
        let port_text = port.to_string();
        let mut values = vec!["be", "s1", ip.as_str(), port_text.as_str()];
        for i in 0..extra {
            names.insert(i, "x_unknown");
            values.insert(i, "-");
        }
        names.rotate_left(extra);
        values.rotate_left(extra);
        let text = format!("1\n# {}\n{}\n", names.join(" "), values.join(" "));
        let s = parse::parse_servers_state(&text).unwrap();
        prop_assert_eq!(s[0].port, port);
        prop_assert_eq!(s[0].addr, Some(ip.parse().unwrap()));
    }
}
