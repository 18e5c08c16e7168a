//! Operating-system plumbing: BPF syscalls aya lacks, bpffs, network devices, neighbours, routes, clock,
//! RCU grace periods.

pub mod bpf;
pub mod bpffs;
pub mod clock;
pub mod neighbors;
pub mod netdev;
pub mod rcu;
pub mod routes;
