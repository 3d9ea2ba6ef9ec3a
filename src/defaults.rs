//! The defaults users see, each written once: the command line, the
//! library's options and the loop's policy all take them from here.

use std::time::Duration;

/// Time between looks while a run waits (grace, settle, a `--for` window).
pub const INTERVAL: Duration = Duration::from_millis(100);
/// `--interval`, as the command line shows it.
pub const INTERVAL_ARG: &str = "100ms";
/// `--max`: a first look matching more sockets than this is refused.
pub const MAX: usize = 10_000;
/// `--settle`: clean only after this long of quiet after the last action.
pub const SETTLE: Duration = Duration::from_millis(1500);
/// `--settle`, as the command line shows it.
pub const SETTLE_ARG: &str = "1.5s";
/// `--api-timeout`: for a connect to HAProxy and for each answer.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);
/// `--api-timeout`, as the command line shows it.
pub const API_TIMEOUT_ARG: &str = "5s";
/// `--grace` when commands are sent to HAProxy and none is given.
pub const GRACE: Duration = Duration::from_secs(2);
/// `--deadline` when none is given (or grace + settle, or the window + settle, when longer).
pub const DEADLINE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_say_the_values() {
        assert_eq!(INTERVAL, Duration::from_millis(INTERVAL_ARG.trim_end_matches("ms").parse().unwrap()));
        assert_eq!(SETTLE.as_secs_f64(), SETTLE_ARG.trim_end_matches('s').parse::<f64>().unwrap());
        assert_eq!(API_TIMEOUT.as_secs(), API_TIMEOUT_ARG.trim_end_matches('s').parse::<u64>().unwrap());
    }
}
