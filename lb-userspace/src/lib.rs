//! wklb userspace: loader and typed map access, configuration, controller, health checks,
//! control socket and CLI.
pub mod config;
pub mod dataplane;
pub mod netdev;
pub mod privileges;
