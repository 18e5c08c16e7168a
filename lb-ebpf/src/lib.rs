//! Empty on purpose: lb-userspace's build script depends on this crate so cargo rebuilds the XDP
//! object when it changes; the program itself is the `wklb-xdp` binary (src/main.rs).
#![no_std]
