//! Man pages: sockkill(1) and one sockkill-SUBCOMMAND(1) per subcommand
//! (every page the main one refers to), each with EXIT STATUS, EXAMPLES and
//! SEE ALSO sections added to what clap_mangen renders from the clap definitions.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::args::Cli;

/// One page: the (built) command it documents and its examples.
pub struct Page {
    cmd: clap::Command,
    examples: &'static [(&'static str, &'static str)],
    exit_status: &'static str,
}

const KILL_STATUS: &str = "0: no matching socket remains at the end (a dry run: nothing matches).\n\
1: matching sockets remain, or a signal or an error stopped the run after something was destroyed (the report is printed all the same).\n\
2: an error or a signal before anything was destroyed (bad filter, refused catch-all, missing namespace or process, no permission, no kernel support, --max exceeded, unwritable audit log).";
const HAPROXY_STATUS: &str = "0: no socket to the server for the settle period at the end (a dry run: none lingers now).\n\
1: sockets remain or are ambiguous, or a signal or an error stopped the run after HAProxy's state was changed or something was destroyed.\n\
2: an error or a signal before anything was changed or destroyed (HAProxy missing, silent or refusing, unknown server, --max exceeded).";
const SIMPLE_STATUS: &str = "0: success.\n2: error.";

/// ss(8)'s STATE-FILTER and EXPRESSION, as `list` and `kill` take them.
const FILTER_EXPRESSIONS: &str = "After the flags, ss's own filter words: [state STATE | exclude STATE]... [EXPRESSION], ANDed with the flags. The first `state` starts from no state and adds; the first `exclude` starts from every state and removes; they cannot be combined with --state.\n\n\
Conditions: dst PREFIX[:PORT], src PREFIX[:PORT] (an IPv6 address in brackets: [fd00::7]:443; * for any address: *:80), dport OP :PORT, sport OP :PORT with OP one of = == eq != ne neq > gt < lt >= ge geq <= le leq (none means =), dev NAME|INDEX, fwmark VALUE[/MASK], cgroup PATH, autobound (the kernel chose the local port). dev, fwmark and cgroup also take = or !=.\n\n\
Operators: and (&, &&, or nothing between two conditions), or (|, ||), not (!), and parentheses, each a separate word (quote them from the shell). As in ss, and and or have equal precedence and group from the left: `dst A or dst B and dport = :80` is `(dst A or dst B) and dport = :80`.\n\n\
Matching follows ss and the kernel: an IPv4 prefix matches IPv4 sockets and IPv4-mapped IPv6 ones; an IPv6 prefix (a mapped one too) matches IPv6 sockets' addresses only; ::/0 is every IPv6 socket. The whole expression goes into the kernel's bytecode (not and or included) and is re-checked in user space. Unlike ss, host names and service names are not looked up, and numbers with a leading zero (octal in ss) are refused.\n\n\
A kill is refused as a catch-all unless the flags or the expression narrow it: a term narrows as the equivalent flag does, and narrows when either side does, or when both do, and not never does.";

fn examples(name: &str) -> &'static [(&'static str, &'static str)] {
    match name {
        "sockkill" => &[
            ("Every connection to 10.0.0.7, then verify none remain:", "sockkill kill --dst 10.0.0.7"),
            ("HAProxy: take a server out and end what lingers:", "sockkill haproxy --socket /run/haproxy/admin.sock --server be_app/web3"),
            ("Can this host list and destroy sockets?", "sockkill check"),
        ],
        "list" => &[
            ("Connections to a subnet, with their processes:", "sockkill list --dst 10.0.0.0/24 -p"),
            ("In ss's words: established, to a subnet, not SSH:", "sockkill list state established dst 10.0.0.0/24 and not dport = :22"),
            ("Listeners inside namespace blue, as JSON:", "sockkill list --netns blue --state listening --json"),
        ],
        "kill" => &[
            ("Every connection to 10.0.0.7:", "sockkill kill --dst 10.0.0.7"),
            ("The same in ss's words (what ss -K dst 10.0.0.7 takes):", "sockkill kill dst 10.0.0.7"),
            ("To 10.0.0.7 or to port 8443 of its subnet, but not SSH:", "sockkill kill '(' dst 10.0.0.7 or dst 10.0.0.0/24:8443 ')' and not dport = :22"),
            ("Disconnect the UDP sockets connected to a removed DNS server:", "sockkill kill -u dst 10.0.0.53"),
            ("To Postgres on a subnet, showing owners:", "sockkill kill --dst 10.0.0.0/24 --dport 5432 -p"),
            ("Only one process's:", "sockkill kill --dst 10.0.0.7 --pid 4242"),
            ("What would go (exit 1 if anything matches):", "sockkill kill --dst 10.0.0.7 --dry-run"),
            ("Keep ending new ones for a minute, with an audit trail:", "sockkill kill --dst 10.0.0.7 --for 60s --audit-log /var/log/sockkill.jsonl"),
        ],
        "haproxy" => &[
            ("Take a server out and end what HAProxy keeps:", "sockkill haproxy --socket /run/haproxy/admin.sock --server be_app/web3"),
            ("After a reload removed it (old workers' sessions):", "sockkill haproxy --socket /run/haproxy/admin.sock --addr 10.0.0.7:8080"),
            ("Whatever a reload or an address change left behind (gone or moved servers):", "sockkill haproxy --socket /run/haproxy/admin.sock --lingering"),
            ("The same as a detector, one metrics series per lingering server:", "sockkill haproxy --socket /run/haproxy/admin.sock --lingering --dry-run --metrics-file /var/lib/prometheus/node-exporter/sockkill-lingering.prom"),
            ("Detector for monitoring (exit 1 while anything lingers):", "sockkill haproxy --socket /run/haproxy/admin.sock --addr 10.0.0.7:8080 --dry-run --metrics-file /var/lib/node_exporter/textfile/sockkill.prom"),
        ],
        "check" => &[("Probe a throwaway namespace:", "sockkill check"), ("Probe namespace blue:", "sockkill check --netns blue")],
        "completions" => &[("Bash completion for this shell:", "source <(sockkill completions bash)")],
        "man" => &[("Read this page:", "sockkill man | man -l -"), ("Write every page:", "sockkill man --out /usr/share/man/man1")],
        _ => &[],
    }
}

/// sockkill(1) first, then one page per subcommand.
pub fn pages() -> Vec<Page> {
    let mut cmd = <Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = vec![Page { cmd: cmd.clone(), examples: examples("sockkill"), exit_status: KILL_STATUS }];
    for sub in cmd.get_subcommands() {
        let status = match sub.get_name() {
            "kill" => KILL_STATUS,
            "haproxy" => HAPROXY_STATUS,
            _ => SIMPLE_STATUS,
        };
        pages.push(Page { cmd: sub.clone(), examples: examples(sub.get_name()), exit_status: status });
    }
    pages
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\e").replace('-', "\\-")
}

/// Renders one page as roff.
pub fn render(page: &Page, w: &mut dyn Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(page.cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    if page.cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(w)?;
    }
    if page.cmd.has_subcommands() {
        man.render_subcommands_section(w)?;
    }
    let short = page.cmd.get_name();
    if short == "list" || short == "kill" || short.ends_with("-list") || short.ends_with("-kill") {
        writeln!(w, ".SH \"FILTER EXPRESSIONS\"")?;
        for para in FILTER_EXPRESSIONS.split("\n\n") {
            writeln!(w, ".PP\n{}", escape(para))?;
        }
    }
    writeln!(w, ".SH \"EXIT STATUS\"")?;
    for line in page.exit_status.lines() {
        writeln!(w, ".TP\n{}", escape(line).replacen(": ", "\n", 1))?;
    }
    if !page.examples.is_empty() {
        writeln!(w, ".SH EXAMPLES")?;
        for (what, command) in page.examples {
            writeln!(w, ".PP\n{}\n.PP\n.RS 4\n.EX\n{}\n.EE\n.RE", escape(what), escape(command))?;
        }
    }
    writeln!(w, ".SH \"SEE ALSO\"")?;
    let name = page.cmd.get_display_name().unwrap_or_else(|| page.cmd.get_name());
    let others: Vec<String> = pages()
        .iter()
        .map(|p| p.cmd.get_display_name().unwrap_or_else(|| p.cmd.get_name()).to_string())
        .filter(|n| n != name)
        .map(|n| format!("\\fB{}\\fR(1)", escape(&n)))
        .chain(["\\fBss\\fR(8)".to_string(), "\\fBhaproxy\\fR(1)".to_string()])
        .collect();
    writeln!(w, "{}", others.join(", "))?;
    writeln!(w, ".SH VERSION\nv{}", env!("CARGO_PKG_VERSION"))
}

/// Writes every page into `dir` (created if missing); returns the files.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for page in pages() {
        let name = page.cmd.get_display_name().unwrap_or_else(|| page.cmd.get_name()).to_string();
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        render(&page, &mut out)?;
        std::fs::write(&path, out)?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page a page refers to is generated too.
    #[test]
    fn every_referenced_page_exists() {
        let names: Vec<String> =
            pages().iter().map(|p| p.cmd.get_display_name().unwrap_or_else(|| p.cmd.get_name()).to_string()).collect();
        assert!(names.contains(&"sockkill".to_string()) && names.contains(&"sockkill-kill".to_string()), "{names:?}");
        for page in pages() {
            let mut out = Vec::new();
            render(&page, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(".SH \"EXIT STATUS\"") && text.contains(".SH EXAMPLES"), "{text}");
            for r in text.split("sockkill\\-").skip(1) {
                let Some(name) = r.split('(').next().filter(|n| r[n.len()..].starts_with("(1)")) else { continue };
                let full = format!("sockkill-{}", name.replace("\\-", "-").replace("\\fR", ""));
                assert!(names.contains(&full), "a page refers to {full}, which is not generated");
            }
        }
    }
}
