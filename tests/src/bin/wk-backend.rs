//! A test backend that behaves like a WuKongIM node at the socket level: on TCP connect it sends
//! its name and a newline, answers each PING byte 0x70 with a PONG byte 0x80, echoes every other
//! byte; over UDP it answers every datagram with its name. Runs until killed.
//!
//! Fault modes for the harness: `--mode reset` accepts and resets at once; `--mode slow` waits
//! `--delay-ms` before every answer (greeting, pongs, health).
//! `--health ADDR:PORT` answers any HTTP request with 200 (after the delay in slow mode).
//! `--greet-peer` greets with `NAME@PEER_ADDRESS`: behind full NAT the peer is the SNAT address
//! of the edge the connection came through (a fleet of edges tells them apart by it).
//!
//! `--proxy-protocol` reads a connection the way WuKongIM v2 does (client first): its first
//! read must hold a whole PROXY v1 or v2 header (first byte `P` or `\r`) followed by the
//! client's first line; it greets `NAME@ADDR:PORT` with the address the header gave (or
//! `NAME@NOPROXY`), then echoes as above.
//!
//! wk-backend --name NAME --listen ADDR:PORT [--udp ADDR:PORT] [--health ADDR:PORT]
//!            [--mode normal|reset|slow] [--delay-ms MS] [--greet-peer] [--proxy-protocol]

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Reset,
    Slow(Duration),
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn delay(mode: Mode) {
    if let Mode::Slow(d) = mode {
        thread::sleep(d);
    }
}

/// The source a PROXY header at the start of `b` names and the header's length, parsed as
/// WuKongIM v2 parses it (`internal/server/proxyproto.go`).
fn parse_proxy(b: &[u8]) -> Option<(std::net::SocketAddr, usize)> {
    const SIG: [u8; 12] = [13, 10, 13, 10, 0, 13, 10, 0x51, 0x55, 0x49, 0x54, 10];
    match b.first()? {
        b'P' => {
            let end = b.iter().position(|&c| c == b'\n')?;
            if end >= 107 || end == 0 || b[end - 1] != b'\r' {
                return None;
            }
            let line = std::str::from_utf8(&b[..end - 1]).ok()?;
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() != 6 || f[0] != "PROXY" || !(f[1] == "TCP4" || f[1] == "TCP6") {
                return None;
            }
            let ip: std::net::IpAddr = f[2].parse().ok()?;
            Some(((ip, f[4].parse().ok()?).into(), end + 1))
        }
        b'\r' => {
            if b.len() < 16 || b[..12] != SIG || b[12] >> 4 != 2 {
                return None;
            }
            let len = u16::from_be_bytes([b[14], b[15]]) as usize;
            let a = b.get(16..16 + len)?;
            let src: std::net::SocketAddr = match (b[13] >> 4, len) {
                (1, 12) => (
                    std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]),
                    u16::from_be_bytes([a[8], a[9]]),
                )
                    .into(),
                (2, 36) => (
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).ok()?),
                    u16::from_be_bytes([a[32], a[33]]),
                )
                    .into(),
                _ => return None,
            };
            Some((src, 16 + len))
        }
        _ => None,
    }
}

/// `--proxy-protocol`: the header and the client's first line (the first read, as WuKongIM
/// reads it, or more when they came apart) decide the greeting; what followed the line is echoed.
fn serve_proxied(mut s: TcpStream, name: String) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 4096];
    // Reads until the client's first line is in: a proxy in front (HAProxy's `send-proxy`)
    // may send its header in a segment of its own.
    let mut n = 0;
    let (who, after) = loop {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        let (who, rest) = match parse_proxy(&buf[..n]) {
            Some((src, len)) => (src.to_string(), len),
            None => ("NOPROXY".to_string(), 0),
        };
        let line_end = buf[rest..n].iter().position(|&c| c == b'\n');
        if let Some(i) = line_end {
            break (who, rest + i + 1);
        }
        if n == buf.len() {
            break (who, n);
        }
    };
    let mut out = format!("{name}@{who}\n").into_bytes();
    out.extend(
        buf[after..n]
            .iter()
            .map(|&b| if b == 0x70 { 0x80 } else { b }),
    );
    if s.write_all(&out).is_err() {
        return;
    }
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for b in &mut buf[..n] {
            if *b == 0x70 {
                *b = 0x80;
            }
        }
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn serve_tcp(mut s: TcpStream, mut name: String, mode: Mode, greet_peer: bool) {
    if greet_peer && let Ok(p) = s.peer_addr() {
        name = format!("{name}@{}", p.ip());
    }
    if mode == Mode::Reset {
        // SO_LINGER 0: close() sends a RST.
        let _ = socket_linger_zero(&s);
        return;
    }
    let _ = s.set_nodelay(true);
    delay(mode);
    if s.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        delay(mode);
        for b in &mut buf[..n] {
            if *b == 0x70 {
                *b = 0x80;
            }
        }
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a correctly sized struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if rc != 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Answers every HTTP request with 200, after the mode's delay.
fn serve_health(addr: String, mode: Mode) {
    let l = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind health {addr}: {e}"));
    for mut s in l.incoming().flatten() {
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            delay(mode);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}");
        });
    }
}

fn main() {
    let name = arg("--name").expect("--name NAME");
    let listen = arg("--listen").expect("--listen ADDR:PORT");
    let delay_ms: u64 = arg("--delay-ms")
        .map(|d| d.parse().expect("--delay-ms MS"))
        .unwrap_or(2000);
    let mode = match arg("--mode").as_deref() {
        None | Some("normal") => Mode::Normal,
        Some("reset") => Mode::Reset,
        Some("slow") => Mode::Slow(Duration::from_millis(delay_ms)),
        Some(other) => panic!("--mode {other}: expected normal, reset or slow"),
    };
    if let Some(h) = arg("--health") {
        thread::spawn(move || serve_health(h, mode));
    }
    if let Some(udp) = arg("--udp") {
        let sock = UdpSocket::bind(&udp).unwrap_or_else(|e| panic!("bind udp {udp}: {e}"));
        let name = name.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(name.as_bytes(), from);
            }
        });
    }
    let greet_peer = std::env::args().any(|a| a == "--greet-peer");
    let proxied = std::env::args().any(|a| a == "--proxy-protocol");
    let l = TcpListener::bind(&listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    for s in l.incoming().flatten() {
        let name = name.clone();
        if proxied {
            thread::spawn(move || serve_proxied(s, name));
        } else {
            thread::spawn(move || serve_tcp(s, name, mode, greet_peer));
        }
    }
}
