//! ss's filter words on `list` and `kill`, for real: `not`, `or` across
//! fields, comparisons, `ADDR:PORT` and state words select in the kernel
//! what they say, kills end exactly those connections (the applications see
//! it), and bad words are refused before anything is done.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;

fn ports_of(doc: &serde_json::Value, key: &str, side: &str) -> BTreeSet<u16> {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {doc}"))
        .iter()
        .map(|s| s[side].as_str().unwrap().parse::<SocketAddr>().unwrap().port())
        .collect()
}

/// `dst A and not dport = :P` and `( ... or ... )` across fields: the
/// kernel's selection equals ss's on the same sockets, and a kill ends
/// exactly those connections while the others keep talking.
#[test]
fn not_and_or_select_and_kill_what_they_say() {
    require!(Netns);
    in_private_netns(|| {
        let a = Echo::start("127.0.0.2:0");
        let b = Echo::start("127.0.0.2:0");
        let c = Echo::start("127.0.0.3:0");
        let mut to_a: Vec<Conn> = (0..2).map(|_| Conn::open(a.addr)).collect();
        let mut to_b: Vec<Conn> = (0..2).map(|_| Conn::open(b.addr)).collect();
        let mut to_c: Vec<Conn> = (0..2).map(|_| Conn::open(c.addr)).collect();
        let not_b = format!("not dport = :{}", b.addr.port());

        // list: the clients' sockets to 127.0.0.2 except b's: a's two.
        let words =
            ["state", "established", "dst", "127.0.0.2", "and", "not", "dport", "=", &format!(":{}", b.addr.port())];
        let out = sockkill(&[&["list", "--json"][..], &words[..]].concat());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(ports_of(&doc, "sockets", "peer"), BTreeSet::from([a.addr.port()]), "{doc}");
        assert_eq!(doc["sockets"].as_array().unwrap().len(), 2, "{doc}");
        assert_eq!(doc["filter"]["expression"], format!("dst 127.0.0.2/32 and {not_b}"), "{doc}");
        // ss says the same.
        let by_ss = ss(&words);
        assert_eq!(by_ss.len(), 2, "{by_ss:?}");

        // `or` across fields: to c, or from a's server port (a's accepted side).
        let either = format!("( dst 127.0.0.3 or sport = :{} )", a.addr.port());
        let out = sockkill(&["list", "--json", "state", "established", &either]);
        let doc = json(&out);
        let peers = ports_of(&doc, "sockets", "peer");
        let locals = ports_of(&doc, "sockets", "local");
        assert_eq!(doc["sockets"].as_array().unwrap().len(), 4, "{doc}");
        assert!(peers.contains(&c.addr.port()) && locals.contains(&a.addr.port()), "{doc}");

        // kill: a's clients end, b's and c's keep talking.
        let out = sockkill_in_netns(&["kill", "--json", "dst", "127.0.0.2", "and", &not_b]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["destroyed"], 2, "{doc}");
        assert_eq!(doc["summary"]["clean"], true, "{doc}");
        for conn in &mut to_a {
            conn.assert_killed();
        }
        for conn in to_b.iter_mut().chain(to_c.iter_mut()) {
            conn.assert_alive();
        }
        // Nothing that matches is left, as ss sees it.
        assert!(ss(&["dst", "127.0.0.2", "and", "not", "dport", "=", &format!(":{}", b.addr.port())]).is_empty());
    });
}

/// Comparisons and `ADDR:PORT` in one term, IPv6 in brackets.
#[test]
fn comparisons_and_address_port_terms() {
    require!(Netns);
    in_private_netns(|| {
        let v4 = Echo::start("127.0.0.2:0");
        let v6 = Echo::start("[::1]:0");
        let mut conns: Vec<Conn> = [v4.addr, v4.addr, v6.addr].into_iter().map(Conn::open).collect();
        let list = |words: &[&str]| {
            let out = sockkill(&[&["list", "--json", "state", "established"][..], words].concat());
            assert_eq!(code(&out), 0, "{words:?}: {}", stderr(&out));
            json(&out)["sockets"].as_array().unwrap().len()
        };
        let v6_term = format!("[::1]:{}", v6.addr.port());
        assert_eq!(list(&["dst", &v6_term]), 1);
        assert_eq!(list(&["dst", &format!("127.0.0.2:{}", v4.addr.port())]), 2);
        assert_eq!(list(&["dst", &format!("*:{}", v4.addr.port())]), 2);
        let p = v4.addr.port();
        assert_eq!(list(&["sport", "=", &format!(":{p}"), "or", "dport", "eq", &format!(":{p}")]), 4);
        assert_eq!(list(&["dport", "ge", &format!(":{p}"), "and", "dport", "le", &format!(":{p}")]), 2);
        assert_eq!(list(&["dport", ">", &format!(":{p}"), "and", "dport", "<", &format!(":{p}")]), 0);
        assert_eq!(list(&["dst", "::/0"]), 2, "both ends of the IPv6 connection");
        assert_eq!(list(&["dst", "0.0.0.0/0"]), 4);
        for c in &mut conns {
            c.assert_alive();
        }
    });
}

/// Bad words, a catch-all expression and states given twice: exit 2,
/// a one-line error naming the word, nothing destroyed.
#[test]
fn bad_expressions_are_refused_and_nothing_is_killed() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conns: Vec<Conn> = (0..2).map(|_| Conn::open(up.addr)).collect();
        for (words, says) in [
            (vec!["dport", ">"], "expected a port, like :80 after `dport >`"),
            (vec!["dst", "fd00::7"], "brackets"),
            (vec!["dst", "127.0.0.2", "or"], "after `or`"),
            (vec!["(", "dst", "127.0.0.2"], "expected `)`"),
            (vec!["dst", "localhost"], "host names are not resolved"),
            (vec!["dport", "=", ":https"], "service names"),
            (vec!["dst", "127.0.0.2", "dev", "nosuchif0"], "nosuchif0"),
            (vec!["not", "dst", "127.0.0.9"], "catch-all"),
            (vec!["dst", "127.0.0.2", "or", "not", "dport", "=", ":1"], "catch-all"),
            (vec!["--state", "established", "state", "established", "dst", "127.0.0.2"], "not both"),
        ] {
            let out = sockkill_in_netns(&[&["kill", "--json"][..], &words[..]].concat());
            assert_eq!(code(&out), 2, "{words:?}: {}", stderr(&out));
            let doc = json(&out);
            let message = doc["error"].as_str().unwrap_or_default().to_string();
            assert!(message.contains(says), "{words:?}: {doc}");
            assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
        }
        for c in &mut conns {
            c.assert_alive();
        }
        // The same catch-all with --allow-catch-all is the operator's choice.
        let out = sockkill_in_netns(&["kill", "--json", "--allow-catch-all", "not", "dst", "127.0.0.9"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for c in &mut conns {
            c.assert_killed();
        }
    });
}
