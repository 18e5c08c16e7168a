//! wklb userspace: configuration, the controller and its data-plane interface, health checks,
//! the daemon with its control socket and metrics, and the CLI.
pub mod announce;
pub mod cli;
pub mod config;
pub mod connlog;
pub mod control;
pub mod controller;
pub mod ctx;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod report;
pub mod sys;
pub mod systemd;
