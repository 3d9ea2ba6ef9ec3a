//! The `sockkill` binary: a thin shell over the library (see `cli`).

mod cli;

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cli::main(std::env::args_os().collect()))
}
