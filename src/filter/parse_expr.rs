//! A hand-written recursive descent parser for ss(8)'s STATE-FILTER and
//! EXPRESSION words, following iproute2's bison grammar (`misc/ssfilter.y`)
//! and its address syntax (`parse_hostcond` in `misc/ss.c`). Hand-written
//! because the grammar is a dozen rules and every error should name the word
//! that failed; a parser crate would add a dependency for less precise errors.
//!
//! Deliberate differences from ss, each refused with a clear error rather
//! than read differently: host names (ss resolves them through DNS) and
//! service names (`:http`) are not looked up; numbers with a leading zero
//! (ss reads `010` as octal) and `0x` ports are refused. Accepted where ss
//! says "syntax error": `dst != X` and `src != X` (as `not dst X`), and
//! parentheses and `!` glued to a word (`(dst`, `!dst`).

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::expr::{Cmp, Expr, Side, Term, SS_FALLBACK_EPHEMERAL};
use super::{Cgroup, Mark, StateSet};
use crate::error::{Error, Result};

/// What the positional words of `list`/`kill` said: ss's `state`/`exclude`
/// words (the state set they build, when given) and the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The states, when a `state` or `exclude` word was given.
    pub states: Option<StateSet>,
    /// The expression, when one was given.
    pub expr: Option<Expr>,
}

/// Parses ss's positional filter words: `[state S | exclude S]... [EXPRESSION]`.
///
/// Each argument may hold several words (`'dst 10.0.0.7 or dport = :22'`).
/// As in ss, the first `state` word starts from no state and the first
/// `exclude` word from every state; later words add or remove.
pub fn parse_words<S: AsRef<str>>(args: &[S]) -> Result<Parsed> {
    let words = split(args);
    if words.len() > MAX_WORDS {
        return Err(Error::FilterExpr {
            message: format!("the expression has {} words; at most {MAX_WORDS} are taken (split the run)", words.len()),
            word: None,
        });
    }
    let mut p = Parser { words: &words, at: 0 };
    let mut states: Option<StateSet> = None;
    while let Some(w) = p.peek() {
        let exclude = match w {
            "state" => false,
            "exclude" | "excl" => true,
            _ => break,
        };
        p.at += 1;
        let name = p.next_or("expected a TCP state name")?;
        let set = StateSet::parse_name(name).map_err(|_| p.error_prev("unknown TCP state"))?;
        let base = states.unwrap_or(if exclude { StateSet::ALL } else { StateSet::EMPTY });
        states = Some(if exclude { base.minus(set) } else { base.union(set) });
    }
    let expr = if p.peek().is_some() { Some(p.exprlist(0)?) } else { None };
    if let Some(w) = p.peek() {
        let why = if w == ")" { "unbalanced `)`" } else { "expected `and`, `or` or a condition" };
        return Err(p.error_here(why));
    }
    if states == Some(StateSet::EMPTY) {
        return Err(Error::InvalidFilter("the state words leave no TCP state".into()));
    }
    Ok(Parsed { states, expr })
}

/// Splits arguments into words at whitespace, and `(`, `)` and a leading `!`
/// off the words they are glued to.
fn split<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    let mut out = Vec::new();
    for arg in args {
        for word in arg.as_ref().split_whitespace() {
            let mut w = word;
            loop {
                if let Some(rest) = w.strip_prefix('(') {
                    out.push("(".to_string());
                    w = rest;
                } else if w.len() > 1 && w.starts_with('!') && !w.starts_with("!=") {
                    out.push("!".to_string());
                    w = &w[1..];
                } else {
                    break;
                }
            }
            let closing = w.len() - w.trim_end_matches(')').len();
            let core = &w[..w.len() - closing];
            if !core.is_empty() {
                out.push(core.to_string());
            }
            out.extend(std::iter::repeat_n(")".to_string(), closing));
        }
    }
    out
}

struct Parser<'a> {
    words: &'a [String],
    at: usize,
}

/// Longer expressions are refused: the kernel's program has room for about
/// 2,000 conditions, and the tree is walked recursively.
const MAX_WORDS: usize = 4096;

/// Nesting deeper than this is refused (the recursion stays bounded).
const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).map(String::as_str)
    }

    fn next_or(&mut self, why: &str) -> Result<&'a str> {
        match self.peek() {
            Some(w) => {
                self.at += 1;
                Ok(w)
            }
            None => Err(self.error_here(why)),
        }
    }

    /// An error at the word `at` (or at the end): names the words read so far.
    fn error_at(&self, at: usize, why: &str) -> Error {
        let upto = (at + 1).min(self.words.len());
        let from = upto.saturating_sub(4);
        let context = self.words[from..upto].join(" ");
        let context = if from > 0 { format!("... {context}") } else { context };
        let word = self.words.get(at).cloned();
        let message = match &word {
            Some(_) => format!("{why} at `{context}`"),
            None if context.is_empty() => why.to_string(),
            None => format!("{why} after `{context}`"),
        };
        Error::FilterExpr { message, word }
    }

    fn error_here(&self, why: &str) -> Error {
        self.error_at(self.at, why)
    }

    fn error_prev(&self, why: &str) -> Error {
        self.error_at(self.at.saturating_sub(1), why)
    }

    /// exprlist: expr ( ('and'|'or')? expr )*, grouped from the left.
    fn exprlist(&mut self, depth: usize) -> Result<Expr> {
        let mut left = self.expr(depth)?;
        loop {
            let or = match self.peek() {
                None | Some(")") => return Ok(left),
                Some("|" | "||" | "or") => true,
                Some("&" | "&&" | "and") => false,
                Some(_) => {
                    // Juxtaposition is `and`.
                    let right = self.expr(depth)?;
                    left = Expr::And(Box::new(left), Box::new(right));
                    continue;
                }
            };
            self.at += 1;
            if matches!(self.peek(), None | Some(")")) {
                return Err(self.error_here(if or {
                    "expected a condition after `or`"
                } else {
                    "expected a condition after `and`"
                }));
            }
            let right = self.expr(depth)?;
            left =
                if or { Expr::Or(Box::new(left), Box::new(right)) } else { Expr::And(Box::new(left), Box::new(right)) };
        }
    }

    /// expr: '(' exprlist ')' | 'not' expr | condition
    fn expr(&mut self, depth: usize) -> Result<Expr> {
        if depth > MAX_DEPTH {
            return Err(self.error_here("the expression nests too deeply"));
        }
        let word = self.next_or("expected a condition (dst, src, dport, sport, dev, fwmark, cgroup, autobound)")?;
        match word {
            "(" => {
                if self.peek() == Some(")") {
                    return Err(self.error_here("empty parentheses"));
                }
                let inner = self.exprlist(depth + 1)?;
                if self.peek() != Some(")") {
                    return Err(self.error_here("expected `)`"));
                }
                self.at += 1;
                Ok(inner)
            }
            "!" | "not" => Ok(Expr::Not(Box::new(self.expr(depth + 1)?))),
            "dst" | "src" => {
                let side = if word == "dst" { Side::Dst } else { Side::Src };
                let negate = self.operator();
                let text = self.next_or("expected an address")?;
                let term = self.host(side, text)?;
                Ok(maybe_not(negate, Expr::Term(term)))
            }
            "dport" | "sport" => {
                let side = if word == "dport" { Side::Dst } else { Side::Src };
                self.port_condition(side)
            }
            "dev" => {
                let negate = self.operator();
                let name = self.next_or("expected an interface name or index")?;
                let index = if name.bytes().all(|b| b.is_ascii_digit()) {
                    name.parse::<u32>().map_err(|_| self.error_prev("bad interface index"))?
                } else {
                    0
                };
                Ok(maybe_not(negate, Expr::Term(Term::Dev { name: name.to_string(), index })))
            }
            "fwmark" => {
                let negate = self.operator();
                let text = self.next_or("expected a mark VALUE[/MASK]")?;
                if text.split('/').any(leading_zero) {
                    return Err(self.error_prev(
                        "a mark with a leading zero (ss reads it as octal): write it without, or as 0x-hex",
                    ));
                }
                let mark = Mark::from_str(text).map_err(|_| {
                    self.error_prev("bad mark: expected VALUE or VALUE/MASK, decimal or 0x-hex, 32 bits")
                })?;
                Ok(maybe_not(negate, Expr::Term(Term::Mark(mark))))
            }
            "cgroup" => {
                let negate = self.operator();
                let path = self.next_or("expected a cgroup path")?;
                let c = Cgroup { path: path.to_string(), id: 0, root: false };
                Ok(maybe_not(negate, Expr::Term(Term::Cgroup(c))))
            }
            "autobound" => Ok(Expr::Term(Term::Autobound { ephemeral: SS_FALLBACK_EPHEMERAL })),
            ")" => Err(self.error_prev("unexpected `)`")),
            "and" | "or" | "&" | "&&" | "|" | "||" => Err(self.error_prev("expected a condition before it")),
            "state" | "exclude" | "excl" => {
                Err(self
                    .error_prev("state words come before the expression (as in ss: `state established dst 10.0.0.7`)"))
            }
            other => {
                let hint = if other.parse::<IpNet>().is_ok() || other.parse::<IpAddr>().is_ok() {
                    " (an address needs `dst` or `src` before it)"
                } else if other.starts_with(':') {
                    " (a port needs `dport` or `sport` before it)"
                } else {
                    ""
                };
                Err(self.error_prev(&format!(
                    "expected a condition (dst, src, dport, sport, dev, fwmark, cgroup, autobound) or `not`, `(`{hint}"
                )))
            }
        }
    }

    /// An optional `=`/`==`/`eq` (false) or `!=`/`ne`/`neq` (true: negated) after a keyword.
    fn operator(&mut self) -> bool {
        match self.peek() {
            Some("=" | "==" | "eq") => {
                self.at += 1;
                false
            }
            Some("!=" | "ne" | "neq") => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn port_condition(&mut self, side: Side) -> Result<Expr> {
        let cmp = match self.peek() {
            Some(">=" | "ge" | "geq") => Some(Cmp::Ge),
            Some("<=" | "le" | "leq") => Some(Cmp::Le),
            Some(">" | "gt") => Some(Cmp::Gt),
            Some("<" | "lt") => Some(Cmp::Lt),
            _ => None,
        };
        let negate = match cmp {
            Some(_) => {
                self.at += 1;
                false
            }
            None => self.operator(),
        };
        let text = self.next_or("expected a port, like :80")?;
        let port_text = text.strip_prefix(':').unwrap_or(text);
        if port_text == "*" {
            return match (cmp, negate) {
                (None, false) => Ok(Expr::Term(Term::Host { side, net: None, port: None })),
                _ => Err(self.error_prev("`*` (any port) cannot be compared")),
            };
        }
        let port = self.port(port_text)?;
        let term = match cmp {
            Some(cmp) => Term::Port { side, cmp, port },
            None => Term::Host { side, net: None, port: Some(port) },
        };
        Ok(maybe_not(negate, Expr::Term(term)))
    }

    /// A port number (the word just read).
    fn port(&self, text: &str) -> Result<u16> {
        if text.is_empty() {
            return Err(self.error_prev("expected a port after ':'"));
        }
        if leading_zero(text) || text.starts_with("0x") {
            return Err(self.error_prev(
                "a port with a leading zero or 0x (ss reads them as octal or hex): write the decimal number",
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.error_prev("expected a port number (service names are not looked up)"));
        }
        text.parse::<u16>().map_err(|_| self.error_prev("a port is a number from 0 to 65535"))
    }

    /// `dst`/`src` text: `ADDR`, `PREFIX`, `ADDR:PORT`, `PREFIX:PORT`,
    /// `[V6]`, `[V6]:PORT`, `*`, `*:PORT`, `ADDR:*`, as ss's `parse_hostcond`
    /// splits them: the port follows the last `:` (after the `/` when there
    /// is one), so a bare IPv6 address needs brackets.
    fn host(&self, side: Side, text: &str) -> Result<Term> {
        if let Some((_, zone)) = text.split_once('%') {
            let zone = zone.split([']', '/']).next().unwrap_or(zone);
            return Err(self.error_prev(&format!(
                "an IPv6 zone is not part of an address here; give the address alone and `dev {zone}`"
            )));
        }
        let (addr, port) = if let Some(inner) = text.strip_prefix('[') {
            let Some((addr, rest)) = inner.split_once(']') else {
                return Err(self.error_prev("expected `]` after an IPv6 address"));
            };
            (addr, rest.strip_prefix(':').unwrap_or(rest))
        } else if let Some(rest) = text.strip_prefix('*') {
            ("", rest.strip_prefix(':').unwrap_or(rest))
        } else {
            let from = text.find('/').unwrap_or(0);
            match text[from..].rfind(':') {
                Some(i) => (&text[..from + i], &text[from + i + 1..]),
                None => (text, ""),
            }
        };
        let port = match port {
            "" | "*" => None,
            p => Some(self.port(p)?),
        };
        let net = match addr {
            "" | "*" => None,
            a => Some(self.prefix(a, text)?),
        };
        Ok(Term::Host { side, net, port })
    }

    fn prefix(&self, addr: &str, text: &str) -> Result<IpNet> {
        let parsed =
            if addr.contains('/') { IpNet::from_str(addr).ok() } else { IpAddr::from_str(addr).ok().map(IpNet::from) };
        if let Some(net) = parsed {
            return Ok(net.trunc());
        }
        let why = if text.contains(':') && !text.starts_with('[') && text.matches(':').count() > 1 {
            "an IPv6 address takes brackets, `[fd00::7]` or `[fd00::7]:443` (ss reads what follows the last ':' as the port)"
        } else if addr.bytes().any(|b| b.is_ascii_alphabetic()) && !addr.contains(':') {
            "expected an IP address or prefix (host names are not resolved)"
        } else {
            "expected an IP address or prefix, like 10.0.0.7, 10.0.0.0/8 or [fd00::/64]"
        };
        Err(self.error_prev(why))
    }
}

fn maybe_not(negate: bool, e: Expr) -> Expr {
    if negate {
        Expr::Not(Box::new(e))
    } else {
        e
    }
}

fn leading_zero(s: &str) -> bool {
    s.len() > 1 && s.starts_with('0') && s.as_bytes()[1].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(s: &str) -> Expr {
        parse_words(&[s]).unwrap().expr.unwrap()
    }

    fn err(s: &str) -> String {
        parse_words(&[s]).unwrap_err().to_string()
    }

    #[test]
    fn and_or_group_from_the_left_as_in_ss() {
        // ss's grammar: `exprlist: exprlist '|' expr | exprlist '&' expr | exprlist expr`.
        assert_eq!(
            expr("dst 10.0.0.1 or dst 10.0.0.2 and dport = :80").to_string(),
            "dst 10.0.0.1/32 or dst 10.0.0.2/32 and dport = :80"
        );
        let e = expr("dst 10.0.0.1 or dst 10.0.0.2 and dport = :80");
        assert!(matches!(e, Expr::And(ref a, _) if matches!(**a, Expr::Or(..))), "{e:?}");
        let e = expr("dst 10.0.0.1 or ( dst 10.0.0.2 and dport = :80 )");
        assert!(matches!(e, Expr::Or(_, ref b) if matches!(**b, Expr::And(..))), "{e:?}");
        assert_eq!(e.to_string(), "dst 10.0.0.1/32 or ( dst 10.0.0.2/32 and dport = :80 )");
        // Juxtaposition is `and`; `not` binds to the next condition only.
        let e = expr("not dst 10.0.0.1 sport = :22");
        assert!(matches!(e, Expr::And(ref a, _) if matches!(**a, Expr::Not(_))), "{e:?}");
    }

    #[test]
    fn the_canonical_text_parses_back_to_the_same_tree() {
        for s in [
            "dst 10.0.0.0/8:80 and not ( sport >= :1024 or dev lo )",
            "! dst [fd00::/64]:443 || src * && dport != :22",
            "(dst 10.1.2.3 or src 10.0.0.0/24) (fwmark 0x10/0xf0 or cgroup /a) autobound",
            "dport gt :1000 and dport lt 2000 and sport le :5 and sport ge 1",
            "dst *:8080 or src 10.0.0.1:* or dst [::1]",
            "not not not dst 10.0.0.1",
        ] {
            let e = expr(s);
            assert_eq!(expr(&e.to_string()), e, "{s} -> {e}");
        }
    }

    #[test]
    fn host_words_split_as_ss_splits_them() {
        let host = |s: &str| match expr(&format!("dst {s}")) {
            Expr::Term(Term::Host { net, port, .. }) => (net.map(|n| n.to_string()), port),
            other => panic!("{other:?}"),
        };
        assert_eq!(host("10.0.0.7"), (Some("10.0.0.7/32".into()), None));
        assert_eq!(host("10.0.0.7:8080"), (Some("10.0.0.7/32".into()), Some(8080)));
        assert_eq!(host("10.0.0.5/8:80"), (Some("10.0.0.0/8".into()), Some(80)));
        assert_eq!(host("10.0.0.0/8:*"), (Some("10.0.0.0/8".into()), None));
        assert_eq!(host("[fd00::7]:443"), (Some("fd00::7/128".into()), Some(443)));
        assert_eq!(host("[fd00::7]"), (Some("fd00::7/128".into()), None));
        assert_eq!(host("fd00::/64"), (Some("fd00::/64".into()), None));
        // A mapped prefix stays IPv6 (it matches mapped sockets only, as in ss).
        assert_eq!(host("[::ffff:10.0.0.0/104]"), (Some("::ffff:10.0.0.0/104".into()), None));
        assert_eq!(host("*:22"), (None, Some(22)));
        assert_eq!(host("*"), (None, None));
        assert_eq!(host("::/0"), (Some("::/0".into()), None));
    }

    #[test]
    fn operators_and_words_mean_what_ss_says() {
        let port = |s: &str| expr(s).to_string();
        assert_eq!(port("dport > :1024"), "dport > :1024");
        assert_eq!(port("dport gt 1024"), "dport > :1024");
        assert_eq!(port("sport geq :1"), "sport >= :1");
        assert_eq!(port("sport leq :1"), "sport <= :1");
        assert_eq!(port("dport eq :22"), "dport = :22");
        assert_eq!(port("dport :22"), "dport = :22");
        assert_eq!(port("dport == :22"), "dport = :22");
        assert_eq!(port("dport neq :22"), "not dport = :22");
        assert_eq!(port("dport != :22"), "not dport = :22");
        assert_eq!(port("dst != 10.0.0.1"), "not dst 10.0.0.1/32");
        assert_eq!(port("fwmark != 0x10"), "not fwmark 0x10");
        assert_eq!(port("dev = lo"), "dev lo");
        assert_eq!(port("!dst 10.0.0.1"), "not dst 10.0.0.1/32");
        assert_eq!(port("(dst 10.0.0.1)"), "dst 10.0.0.1/32");
        assert_eq!(port("dport = *"), "dst *");
    }

    #[test]
    fn state_words_build_a_set_as_ss_does() {
        use crate::socket::TcpState::*;
        let p = parse_words(&["state", "established", "state", "syn-sent", "dst", "10.0.0.1"]).unwrap();
        assert_eq!(p.states, Some(StateSet::EMPTY.with(Established).with(SynSent)));
        assert!(p.expr.is_some());
        let p = parse_words(&["exclude listening"]).unwrap();
        assert_eq!(p.states, Some(StateSet::ALL.minus(StateSet::EMPTY.with(Listen))));
        assert_eq!(p.expr, None);
        let p = parse_words(&["state connected exclude established"]).unwrap();
        assert!(!p.states.unwrap().contains(Established) && p.states.unwrap().contains(SynSent));
        assert!(err("state established exclude established").contains("no TCP state"));
        assert!(err("state bogus").contains("unknown TCP state at `state bogus`"));
    }

    /// Expressions that match (nearly) everything are catch-alls, however
    /// they are spelled (the escapes a hostile review found).
    #[test]
    fn catch_all_expressions_are_recognised() {
        use crate::filter::{Filter, Protocols};
        use crate::socket::TcpState;
        let catch_all = |words: &str, udp: bool, states: StateSet| {
            let p = parse_words(&[words]).unwrap();
            let f = Filter {
                expression: p.expr,
                states: p.states.unwrap_or(states),
                protocols: Protocols { tcp: !udp, udp },
                ..Filter::default()
            };
            f.is_catch_all()
        };
        let d = StateSet::DEFAULT;
        for (words, udp) in [
            ("dport < :1024 or dport >= :1024", false),
            ("dst 0.0.0.0/1 or dst 128.0.0.0/1", false),
            ("sport <= :32767 or sport > :32767", false),
            ("dport < :1024 or ( dport >= :1024 and dport >= :1024 )", false),
            ("src [::ffff:0.0.0.0/96]", false),
            ("dst [::/64]", false),
            ("state unconn dport = :0", true),
            ("state unconn dst 0.0.0.0", true),
            ("state unconn dport < :1", true),
            ("exclude listening src 0.0.0.0", true),
            ("fwmark 0", false),
            ("fwmark 1/1 or fwmark 0/1", false),
            ("not dst 10.0.0.7", false),
            ("dst * and autobound", false),
            ("dst 10.0.0.7 or not dport = :22", false),
        ] {
            assert!(catch_all(words, udp, d), "{words} (udp {udp}) must be a catch-all");
        }
        for (words, udp) in [
            ("dst 10.0.0.7", false),
            ("dst 10.0.0.7 and not dport = :22", false),
            ("( dst 10.0.0.7 and dport = :80 ) or ( dst 10.0.0.8 and dport = :443 )", false),
            ("dst 10.0.0.0/8 or dport = :80", false),
            ("dport < :1024", false),
            ("dst 10.0.0.53", true),
            ("fwmark 1/1 or fwmark 2/2", false),
            ("src [::ffff:10.0.0.0/104]", false),
        ] {
            assert!(!catch_all(words, udp, d), "{words} (udp {udp}) narrows");
        }
        // A listener's peer port is 0: `dport = :0` over listeners is every listener.
        assert!(catch_all("state listening dport = :0", false, d));
        assert!(!catch_all("state established dport = :0", false, d));
        let _ = TcpState::Listen;
    }

    #[test]
    fn errors_point_at_the_word() {
        assert_eq!(err("dport >"), "invalid filter expression: expected a port, like :80 after `dport >`");
        assert!(err("dport > :").contains("expected a port after ':' at `dport > :`"), "{}", err("dport > :"));
        assert!(err("dst fd00::7").contains("brackets"), "{}", err("dst fd00::7"));
        assert!(err("dst example.com").contains("host names are not resolved"));
        assert!(err("dport = :http").contains("service names"));
        assert!(err("dport = :080").contains("octal"));
        assert!(err("fwmark 010").contains("octal"));
        assert!(err("dport = :70000").contains("0 to 65535"));
        assert!(err("dst 10.0.0.1 or").contains("after `or`"));
        assert!(err("( dst 10.0.0.1").contains("expected `)`"));
        assert!(err("dst 10.0.0.1 )").contains("unbalanced"));
        assert!(err("10.0.0.1").contains("needs `dst` or `src`"));
        assert!(err("dst 10.0.0.1 state established").contains("state words come before"));
        assert!(err("dport >= *").contains("cannot be compared"));
        assert!(err("dst fe80::1%eth0").contains("dev eth0"));
        let deep = format!("{}dst 10.0.0.1{}", "( ".repeat(100), " )".repeat(100));
        assert!(err(&deep).contains("too deeply"));
        let nots = format!("{}dst 10.0.0.1", "not ".repeat(100));
        assert!(err(&nots).contains("too deeply"));
        let long = vec!["autobound"; 5000].join(" or ");
        assert!(err(&long).contains("at most 4096"), "{}", err(&long));
    }
}
