//! Bad input, table-driven: every case must give a one-line error naming the
//! problem, exit code 2, no panic or backtrace, and destroy nothing.
//!
//! Each case runs inside a private namespace holding a live connection that
//! every kill case would match if the input were (wrongly) accepted; after
//! each case the connection must still talk, and special files given as
//! outputs are still what they were. HAProxy refusals from a real HAProxy
//! (`level user`, unknown backend/server) are in haproxy_e2e.rs.

#[macro_use]
mod common;

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Case {
    args: Vec<OsString>,
    expect: &'static str,
}

fn case(args: &[&str], expect: &'static str) -> Case {
    Case { args: args.iter().map(OsString::from).collect(), expect }
}

/// A fake stats socket that behaves badly in one way: it is a failure
/// injection for our client, not a stand-in for HAProxy's behaviour.
fn bad_server(path: &std::path::Path, reply: &'static [u8], close_after: bool) {
    let l = UnixListener::bind(path).expect("bind unix");
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            // Read the command (up to the client's half-close), then misbehave.
            let mut cmd = Vec::new();
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = std::io::Read::read_to_end(&mut c, &mut cmd);
            let _ = c.write_all(reply);
            if close_after {
                drop(c);
            } else {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(10));
                    drop(c);
                });
            }
        }
    });
}

#[test]
fn bad_inputs_fail_cleanly_and_destroy_nothing() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conn = Conn::open(up.addr);

        let dir = std::env::temp_dir().join(format!("sockkill-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        bad_server(&dir.join("silent.sock"), b"", false);
        bad_server(&dir.join("midway.sock"), b"Name: HAProxy\nVers", true);
        bad_server(&dir.join("garbage.sock"), b"HTTP/1.1 400 Bad Request\r\n\r\n", true);
        bad_server(&dir.join("empty.sock"), b"", true);
        std::fs::write(dir.join("plain.txt"), "not a socket").unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // A character device of our own (the same as /dev/null), which must stay one;
        // without CAP_MKNOD (a user namespace) /dev/null itself stands in.
        let mut dev = dir.join("null-device");
        if nix::sys::stat::mknod(
            &dev,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .is_err()
        {
            dev = std::path::PathBuf::from("/dev/null");
        }

        // An exited process: its pid no longer exists.
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let exited = gone.id().to_string();
        let silent = path("silent.sock");
        let hx = |extra: &[&str]| {
            let mut a = vec!["haproxy", "--socket", silent.as_str(), "--server", "be/s1"];
            a.extend_from_slice(extra);
            a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        };
        let hx_case = |extra: &[&str], expect| {
            let a = hx(extra);
            case(&a.iter().map(String::as_str).collect::<Vec<_>>(), expect)
        };

        let mut cases = vec![
            case(&["list", "--dst", "10.0.0.300"], "10.0.0.300"),
            case(&["list", "--dst", "10.0.0.1/33"], "10.0.0.1/33"),
            case(&["list", "--dst", "fd00::/129"], "fd00::/129"),
            case(&["list", "--dst", ""], "bad address"),
            case(&["list", "--dst", "example.com"], "example.com"),
            case(&["list", "--dst", "fe80::1%lo"], "--dev lo"),
            case(&["list", "--netns", &fifo.to_string_lossy()], "is a FIFO"),
            case(&["check", "--netns", &fifo.to_string_lossy()], "is a FIFO"),
            case(&["kill", "--dport", "70000", "--dst", "127.0.0.2"], "70000"),
            case(&["kill", "--dport", "-5", "--dst", "127.0.0.2"], "-5"),
            case(&["kill", "--dport", "90-80", "--dst", "127.0.0.2"], "reversed port range"),
            case(&["kill", "--sport", "http", "--dst", "127.0.0.2"], "http"),
            case(&["kill", "--state", "establised", "--dst", "127.0.0.2"], "unknown TCP state"),
            case(&["kill", "-4", "-6", "--dst", "127.0.0.2"], "cannot be used with"),
            case(&["kill", "-4", "--dst", "fd00::1"], "-4 conflicts"),
            case(&["kill", "-6", "--dst", "127.0.0.2"], "-6 conflicts"),
            case(&["kill"], "catch-all"),
            case(&["kill", "--dst", "0.0.0.0/0"], "catch-all"),
            case(&["kill", "--dst", "0.0.0.0/1", "--dst", "128.0.0.0/1"], "catch-all"),
            case(&["kill", "--dport", "1-65535"], "catch-all"),
            case(&["kill", "--dport", "1-30000", "--dport", "30001-65535"], "catch-all"),
            case(&["kill", "--state", "listening", "--dport", "0"], "catch-all"),
            case(&["kill", "--mark", "0/0"], "catch-all"),
            case(&["kill", "--mark", "0x1/0"], "outside the mask"),
            case(&["kill", "--mark", "0x1g"], "bad mark"),
            case(&["kill", "--mark", "4294967296"], "bad mark"),
            case(&["list", "--mark", ""], "bad mark"),
            case(&["kill", "--dev", "sockkill-no-such0"], "no such interface"),
            case(&["kill", "--dev", "99999"], "no such interface"),
            case(&["kill", "--cgroup", "/proc"], "cgroup v2"),
            case(&["kill", "--cgroup", "/nonexistent/unit.service"], "No such file"),
            case(&["kill", "--cgroup", ""], "empty path"),
            case(&["list", "--cgroup", "/proc/self/status"], "not a directory"),
            case(&["kill", "--dst", "127.0.0.2", "--netns", "sockkill-no-such-ns"], "no such network namespace"),
            case(&["kill", "--dst", "127.0.0.2", "--netns", "/etc/hostname"], "not a namespace file"),
            case(&["kill", "--dst", "127.0.0.2", "--netns", "/proc/self/ns/uts"], "not a network namespace"),
            case(&["kill", "--dst", "127.0.0.2", "--netns", &fifo.to_string_lossy()], "is a FIFO"),
            case(&["kill", "--dst", "127.0.0.2", "--netns", "99999999999"], "pid out of range"),
            case(&["kill", "--dst", "127.0.0.2", "--netns", &exited], "no process"),
            case(&["kill", "--dst", "127.0.0.2", "--pid", &exited], "no such process"),
            case(&["kill", "--dst", "127.0.0.2", "--pid", "0"], "--pid"),
            case(&["kill", "--dst", "127.0.0.2", "--max", "0x10"], "--max"),
            case(&["kill", "--dst", "127.0.0.2", "--audit-log", "/nonexistent-dir/audit.log"], "/nonexistent-dir"),
            case(&["kill", "--dst", "127.0.0.2", "--audit-log", &fifo.to_string_lossy()], "is a FIFO"),
            case(&["kill", "--dst", "127.0.0.2", "--audit-log", "/dev/full"], "character device"),
            case(&["kill", "--dst", "127.0.0.2", "--audit-log", &dir.to_string_lossy()], "is a directory"),
            case(&["kill", "--dst", "127.0.0.2", "--metrics-file", "/dev/null"], "character device"),
            case(&["kill", "--dst", "127.0.0.2", "--metrics-file", &dev.to_string_lossy()], "character device"),
            case(&["kill", "--dst", "127.0.0.2", "--metrics-file", &fifo.to_string_lossy()], "is a FIFO"),
            case(&["kill", "--dst", "127.0.0.2", "--metrics-file", &dir.to_string_lossy()], "is a directory"),
            case(&["kill", "--dst", "127.0.0.2", "--metrics-file", "/nonexistent-dir/x.prom"], "/nonexistent-dir"),
            case(&["kill", "--dst", "127.0.0.2", "--for", "0s"], "--for must be longer than 0"),
            case(&["kill", "--dst", "127.0.0.2", "--for", "25h"], "--for"),
            case(&["kill", "--dst", "127.0.0.2", "--for", "1e19s"], "too long"),
            case(&["kill", "--dst", "127.0.0.2", "--for", "2s", "--interval", "0"], "--interval"),
            case(&["kill", "--dst", "127.0.0.2", "--for", "2s", "--interval", "5ms"], "at least 10ms"),
            case(&["kill", "--dst", "127.0.0.2", "--for=-1s"], "bad duration"),
            case(&["haproxy", "--socket", &path("missing.sock"), "--server", "be/s1"], "no such file"),
            case(&["haproxy", "--socket", &path("plain.txt"), "--server", "be/s1"], "not a unix socket"),
            case(&["haproxy", "--socket", &fifo.to_string_lossy(), "--server", "be/s1"], "not a unix socket"),
            hx_case(&["--api-timeout", "300ms"], "no answer within"),
            case(&["haproxy", "--socket", &path("midway.sock"), "--server", "be/s1"], "truncated"),
            case(&["haproxy", "--socket", &path("garbage.sock"), "--server", "be/s1"], "not an HAProxy"),
            case(&["haproxy", "--socket", &path("empty.sock"), "--server", "be/s1"], "not an HAProxy"),
            case(&["haproxy", "--socket", "127.0.0.1:1", "--server", "be/s1"], "connecting to"),
            case(&["haproxy", "--socket", &silent], "required"),
            case(&["haproxy", "--socket", &silent, "--server", "be"], "BACKEND/SERVER"),
            case(&["haproxy", "--socket", &silent, "--addr", "127.0.0.2"], "no port"),
            case(&["haproxy", "--socket", &silent, "--addr", "127.0.0.300:80"], "not IP:PORT"),
            case(&["haproxy", "--socket", &silent, "--addr", "127.0.0.2:0"], "port 0"),
            hx_case(&["--grace", "soon"], "bad duration"),
            hx_case(&["--grace", "2h"], "--grace"),
            hx_case(&["--settle", "61m"], "--settle"),
            hx_case(&["--api-timeout", "0"], "--api-timeout must be longer than 0"),
            hx_case(&["--deadline", "0s"], "--deadline must be longer than 0"),
            hx_case(&["--deadline", "1s"], "shorter than --grace + --settle"),
            hx_case(&["--for", "1e19s", "--settle", "1e19s"], "too long"),
            hx_case(&["--deadline", "25h", "--grace", "1s"], "--deadline"),
            hx_case(&["--metrics-file", "/dev/null"], "character device"),
            hx_case(&["--audit-log", &fifo.to_string_lossy()], "is a FIFO"),
        ];
        // The --max guard: two connections match a /8.
        let _extra = Conn::open(up.addr);
        cases.push(case(&["kill", "--dst", "127.0.0.0/8", "--max", "1"], "more than --max 1"));
        // Arguments that are not UTF-8 where text is expected.
        let bad = |flag: &str| Case {
            args: vec![
                "kill".into(),
                "--dst".into(),
                "127.0.0.2".into(),
                flag.into(),
                OsString::from_vec(vec![0xff, 0xfe]),
            ],
            expect: "UTF-8",
        };
        cases.push(bad("--netns"));
        cases.push(bad("--state"));

        assert!(cases.len() >= 60);
        for c in &cases {
            assert_not_root_netns();
            let started = Instant::now();
            let out = Command::new(BIN).args(&c.args).stdin(Stdio::null()).output().unwrap();
            let err = stderr(&out);
            assert_eq!(code(&out), 2, "{:?}: exit {:?}\n{err}", c.args, out.status);
            assert!(err.contains(c.expect), "{:?}: expected {:?} in:\n{err}", c.args, c.expect);
            assert!(!err.contains("panicked") && !err.contains("backtrace"), "{:?}: {err}", c.args);
            let error_lines =
                err.lines().filter(|l| l.starts_with("sockkill: error") || l.starts_with("error:")).count();
            assert_eq!(error_lines, 1, "{:?}: one error line expected:\n{err}", c.args);
            assert!(started.elapsed() < Duration::from_secs(8), "{:?} took {:?}", c.args, started.elapsed());
            conn.assert_alive();
        }
        assert_eq!(dump_dst("127.0.0.2").len(), 2);
        // Special files are what they were.
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        assert!(std::fs::metadata(&dev).unwrap().file_type().is_char_device());
        assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// With --json, an error before anything is done is a JSON document on
/// stdout too (scripts read stdout), and the metrics file says exit code 2.
#[test]
fn errors_are_reported_in_json_and_metrics() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conn = Conn::open(up.addr);
        let dir = std::env::temp_dir().join(format!("sockkill-bad-json-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let prom = dir.join("sockkill.prom");
        std::fs::write(&prom, "sockkill_exit_code{command=\"kill\"} 0\n").unwrap();
        let prom_s = prom.to_string_lossy().into_owned();
        for args in [
            vec!["kill", "--json", "--dst", "127.0.0.2", "--audit-log", "/dev/full", "--metrics-file", &prom_s],
            vec!["kill", "--json", "--dst", "127.0.0.0/8", "--max", "0x1", "--metrics-file", &prom_s],
            vec!["kill", "--json", "--metrics-file", &prom_s],
            vec![
                "haproxy",
                "--json",
                "--socket",
                "/nonexistent.sock",
                "--addr",
                "127.0.0.2:80",
                "--metrics-file",
                &prom_s,
            ],
        ] {
            let out = sockkill_in_netns(&args);
            assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
            let doc = json(&out);
            assert_eq!(doc["schema_version"], 1, "{doc}");
            assert_eq!(doc["command"], args[0], "{doc}");
            assert_eq!(doc["exit_code"], 2, "{doc}");
            assert!(doc["error"].as_str().is_some_and(|e| !e.is_empty()), "{doc}");
            if args[0] == "haproxy" {
                assert_eq!(doc["commands_sent"], serde_json::json!([]), "{doc}");
                assert_eq!(doc["server_left_in_maintenance"], false, "{doc}");
            }
            // clap's own errors have no metrics (the run never started); ours do.
            if !args.contains(&"0x1") {
                let text = std::fs::read_to_string(&prom).unwrap();
                let line = text.lines().find(|l| l.starts_with("sockkill_exit_code{")).unwrap_or_default();
                assert!(line.contains(&format!("command=\"{}\"", args[0])) && line.ends_with(" 2"), "{args:?}: {text}");
            }
            conn.assert_alive();
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn without_cap_net_admin_check_and_kill_fail_cleanly() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conn = Conn::open(up.addr);
        let run = |args: &[&str]| {
            assert_not_root_netns();
            Command::new("setpriv")
                .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", BIN])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let out = run(&["check"]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("CAP_NET_ADMIN: NO") && text.contains("[FAIL]"), "{text}");
        let out = run(&["kill", "--dst", "127.0.0.2"]);
        assert_eq!(code(&out), 2);
        assert!(stderr(&out).contains("CAP_NET_ADMIN"));
        conn.assert_alive();
    });
}
