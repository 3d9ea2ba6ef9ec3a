//! The command line: parse (`args`) → plan (`plan`: every check that can
//! fail before anything is done) → execute (`exec`) → output (`output`: the
//! one place that turns an outcome into stdout, stderr, records and an exit code).

mod args;
mod exec;
mod man;
mod output;
mod plan;

use std::ffi::OsString;
use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use args::Cli;
use exec::Ran;
use plan::Global;

/// Runs sockkill with `argv` and returns the exit code.
pub fn main(argv: Vec<OsString>) -> u8 {
    let json = argv.iter().skip(1).take_while(|a| *a != "--").any(|a| a == "--json");
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, json, &argv),
    };
    let global = Global { json: cli.global.json, verbose: cli.global.verbose, quiet: cli.global.quiet };
    init_logging(&global);
    output::set_color(std::io::stdout().is_terminal() && !no_color());
    let command = plan::command_name(&cli);
    let (metrics_file, server) = plan::metrics_target(&cli);
    let plan = match plan::plan(cli) {
        Ok(plan) => plan,
        Err(e) => {
            // Nothing was done; a metrics file that can be written still says so.
            let metrics = metrics_file.filter(|p| sockkill::metrics::check_target(p).is_ok());
            return output::finish(&global, command, Ran::Failed(e), None, metrics.as_deref(), server);
        }
    };
    let (ran, audit) = exec::execute(plan);
    output::finish(&global, command, ran, audit.as_deref(), metrics_file.as_deref(), server)
}

/// clap's own errors keep clap's format (help and --version exit 0); with
/// `--json`, an error document goes to stdout too.
fn usage_error(e: &clap::Error, json: bool, argv: &[OsString]) -> u8 {
    let _ = e.print();
    if !e.use_stderr() {
        return 0;
    }
    if json {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
        let cli = <Cli as clap::CommandFactory>::command();
        let names: Vec<&str> = cli.get_subcommands().map(|c| c.get_name()).collect();
        let command = argv.iter().skip(1).filter_map(|a| a.to_str()).find(|a| names.contains(a)).unwrap_or("sockkill");
        let mut out = std::io::stdout().lock();
        let _ = output::error_doc(&mut out, command, &first, "usage");
    }
    2
}

/// `NO_COLOR` set to anything but the empty string (no-color.org).
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Logs go to stderr; a closed or full stderr never makes them panic.
fn init_logging(g: &Global) {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("sockkill={level}")));
    let color = std::io::stderr().is_terminal() && !no_color();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .log_internal_errors(false)
        .try_init();
}
