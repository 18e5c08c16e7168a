//! Logging: env_logger with a level that can change while the daemon runs.
//!
//! Which level wins: `--log-level` on the command line, else `RUST_LOG` when it is set (it may
//! also name modules), else `daemon.log_level` from the config (applied again on every reload),
//! else `info`. Libraries (hyper, netlink) log only warnings unless `RUST_LOG` says otherwise.

use log::LevelFilter;
use serde::Serialize;

/// A log level as the CLI and the config spell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const NAMES: &str = "error, warn, info, debug, trace";

    pub const fn name(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    pub const fn filter(self) -> LevelFilter {
        match self {
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, true)
            .map_err(|_| format!("{s:?} is not a log level ({})", Self::NAMES))
    }
}

/// True when `RUST_LOG` chose the filter (the config's level then does not apply).
fn from_env() -> bool {
    std::env::var_os("RUST_LOG").is_some_and(|v| !v.is_empty())
}

/// Installs the logger. `cli`: `--log-level`.
pub fn init(cli: Option<LogLevel>) {
    let mut b = env_logger::Builder::new();
    if from_env() {
        b.parse_env("RUST_LOG");
    } else {
        // Our own crate may go as low as trace; the max level below is the real cap.
        b.filter_level(LevelFilter::Warn)
            .filter_module("lb_userspace", LevelFilter::Trace)
            .filter_module("wklb", LevelFilter::Trace);
    }
    b.init();
    match cli {
        Some(l) => log::set_max_level(l.filter()),
        None if from_env() => {}
        None => log::set_max_level(LevelFilter::Info),
    }
}

/// Applies the config's `daemon.log_level` unless the command line or `RUST_LOG` chose.
pub fn apply_config(cli: Option<LogLevel>, config: LogLevel) {
    if cli.is_none() && !from_env() {
        log::set_max_level(config.filter());
    }
}

/// `wklb VERSION (commit HASH)`: `--version`, the daemon's first log line, `wklb_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("WKLB_COMMIT");
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WKLB_COMMIT"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_as_the_config_and_cli_spell_them() {
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel::Debug));
        assert_eq!("WARN".parse::<LogLevel>(), Ok(LogLevel::Warn));
        let e = "loud".parse::<LogLevel>().unwrap_err();
        assert!(e.contains("\"loud\"") && e.contains("trace"), "{e}");
        for l in [LogLevel::Error, LogLevel::Trace] {
            assert_eq!(l.name().parse::<LogLevel>(), Ok(l));
        }
    }

    #[test]
    fn the_version_line_names_the_commit() {
        assert!(VERSION_LINE.starts_with(VERSION));
        assert!(VERSION_LINE.contains(COMMIT) && !COMMIT.is_empty());
    }
}
