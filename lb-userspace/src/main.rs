//! `wklb`: the daemon and its CLI in one binary.

use std::process::ExitCode;

use clap::Parser;
use lb_userspace::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    lb_userspace::logging::init(cli.log_level);
    let json = cli.json;
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<cli::PipeClosed>() => ExitCode::SUCCESS,
        Err(e) if e.is::<cli::Silent>() => ExitCode::FAILURE,
        Err(e) => {
            cli::print_error(json, &e);
            ExitCode::FAILURE
        }
    }
}
