//! wklb userspace: loader and typed map access, configuration, controller, health checks,
//! control socket, metrics, daemon and CLI.
pub mod cli;
pub mod config;
pub mod control;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod metrics;
pub mod neighbors;
pub mod netdev;
pub mod privileges;
pub mod protocol;
pub mod report;
