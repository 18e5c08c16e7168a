//! A test backend that behaves like a WuKongIM node at the socket level: on TCP connect it sends
//! its name and a newline, answers each PING byte 0x70 with a PONG byte 0x80, echoes every other
//! byte; over UDP it answers every datagram with its name. Runs until killed.
//!
//! wk-backend --name NAME --listen ADDR:PORT [--udp ADDR:PORT]

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream, UdpSocket},
    thread,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn serve_tcp(mut s: TcpStream, name: String) {
    let _ = s.set_nodelay(true);
    if s.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
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

fn main() {
    let name = arg("--name").expect("--name NAME");
    let listen = arg("--listen").expect("--listen ADDR:PORT");
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
    let l = TcpListener::bind(&listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    for s in l.incoming().flatten() {
        let name = name.clone();
        thread::spawn(move || serve_tcp(s, name));
    }
}
