//! Shared between the XDP program (`no_std`) and userspace: every map key/value layout, the flow
//! hash, checksum arithmetic, TCP tracking rules, TCP options, flow-slot maths and the verdict
//! reasons. Userspace-only pieces (Maglev table generation) sit behind the `user` feature because
//! they allocate.
#![cfg_attr(not(test), no_std)]

#[cfg(all(feature = "user", not(test)))]
extern crate std;

pub mod connlog;
pub mod conntrack;
pub mod cookie;
pub mod csum;
pub mod hash;
pub mod icmp;
pub mod maps;
pub mod passive;
pub mod portmap;
pub mod proxy;
pub mod reason;
pub mod rtt;
pub mod shares;
pub mod slot;
pub mod syn_budget;
pub mod tcp_opts;
pub mod xlat;

#[cfg(test)]
pub(crate) mod test_rng;

#[cfg(feature = "user")]
pub mod maglev;

pub use maps::*;
pub use reason::Reason;
