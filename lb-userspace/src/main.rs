//! `wklb`: the daemon and its CLI in one binary.

use std::process::ExitCode;

use clap::Parser;
use lb_userspace::cli::{self, Cli};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
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
