//! An off-path attacker for end-to-end tests: sends TCP segments with a forged source address
//! and guessed sequence numbers through a raw socket (run it inside a test namespace only).
//!
//! wk-spoof --src IP --dst IP:PORT --ports P1,P2,... [--flags R] [--per-port N]
//!
//! Every segment gets a random sequence number (and acknowledgment) from the kernel's random
//! source: the blind guess an attacker who knows only the addresses and ports can make.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use clap::Parser;
use wklb_tests::packets::{Seg, tcp_seg};

#[derive(Parser)]
struct Cli {
    /// Forged source address.
    #[arg(long)]
    src: Ipv4Addr,
    #[arg(long)]
    dst: SocketAddrV4,
    /// Source ports, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    ports: Vec<u16>,
    /// TCP flags (letters S A F R P).
    #[arg(long, default_value = "R")]
    flags: String,
    /// Segments per port, each with a fresh guess.
    #[arg(long, default_value_t = 1)]
    per_port: u32,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom fills the 4-byte buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 4, "getrandom: {}", std::io::Error::last_os_error());
    u32::from_ne_bytes(b)
}

fn main() {
    let cli = Cli::parse();
    // SAFETY: plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(cli.dst.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut sent = 0u64;
    for port in &cli.ports {
        for _ in 0..cli.per_port {
            let seg = Seg {
                flags: &cli.flags,
                seq: random_u32(),
                ack: random_u32(),
                ..Seg::default()
            };
            let frame = tcp_seg((cli.src, *port), (*cli.dst.ip(), cli.dst.port()), &seg);
            // IPPROTO_RAW sockets take the IP header from us: skip the Ethernet header.
            let packet = &frame[14..];
            // SAFETY: sendto with a buffer and address we own, of the sizes given.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            assert_eq!(
                n as usize,
                packet.len(),
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            sent += 1;
        }
    }
    println!("{{\"sent\":{sent}}}");
}
