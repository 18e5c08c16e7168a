//! A delay line for the lab (the kernel here has no netem): bridges two interfaces of one
//! network namespace with AF_PACKET sockets and holds every frame for a fixed time in each
//! direction, so a backend behind it is that much farther away (round trip = 2 × delay).
//! Frames keep their order. Runs until killed (the harness owns it and stops it by PID).
//!
//! wk-delay --a IFACE --b IFACE --delay-us MICROSECONDS

use std::{
    io,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A raw socket bound to one interface, receiving every frame that arrives on it (not the ones
/// it or anyone else sends out of it).
fn packet_socket(ifname: &str) -> io::Result<i32> {
    let name = std::ffi::CString::new(ifname).expect("interface name");
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::other(format!("no interface {ifname}")));
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let one: libc::c_int = 1;
    // PACKET_IGNORE_OUTGOING (23): our own transmissions are not read back.
    // SAFETY: valid option buffer.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            23,
            &one as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as u32,
        )
    };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binding with a properly sized sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd,
            &sll as *const _ as *const libc::sockaddr,
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Frames arriving on `from` leave through `to` `delay` later.
fn direction(from: i32, to: i32, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        for (due, frame) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            // SAFETY: sending a buffer we own on a bound packet socket.
            unsafe { libc::send(to, frame.as_ptr().cast(), frame.len(), 0) };
        }
    });
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(from, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if tx
            .send((Instant::now() + delay, buf[..n as usize].to_vec()))
            .is_err()
        {
            return;
        }
    }
}

fn main() {
    let a = arg("--a").expect("--a IFACE");
    let b = arg("--b").expect("--b IFACE");
    let delay = Duration::from_micros(
        arg("--delay-us")
            .expect("--delay-us MICROSECONDS")
            .parse()
            .expect("--delay-us takes a number"),
    );
    let fa = packet_socket(&a).unwrap_or_else(|e| panic!("{a}: {e}"));
    let fb = packet_socket(&b).unwrap_or_else(|e| panic!("{b}: {e}"));
    thread::spawn(move || direction(fa, fb, delay));
    direction(fb, fa, delay);
}
