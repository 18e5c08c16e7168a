//! A quirk of veth labs: veth hands frames that XDP_TX sends back out of an interface to the
//! peer's NAPI only when the peer runs an XDP program of its own (redirected frames are kicked
//! regardless). Without one they wait in the peer's ring until the host happens to transmit on
//! that link, tens to hundreds of milliseconds later. A real NIC has no such peer; a one-armed
//! lab gives the peer a two-instruction XDP_PASS program.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::programs::{Xdp, XdpMode, links::FdLink};
use aya_obj::programs::XdpAttachType;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    /// The rest of `union bpf_attr`, zero.
    _rest: [u64; 12],
}

#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    _rest: [u64; 2],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a bpf_attr prefix of the size given, zero-padded.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// Loads `r0 = XDP_PASS; exit` and pins it at `pin` (so aya can attach it).
fn load_pass(pin: &Path) -> Result<()> {
    // mov64 r0, 2; exit
    let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 2, 0, 0, 0]), 0x95];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..8].copy_from_slice(b"lab_pass");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_XDP,
        _rest: [0; 12],
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading the XDP_PASS program")?;
    // SAFETY: a descriptor the kernel just gave us.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut pin_attr = ObjPin {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        _rest: [0; 2],
    };
    bpf(BPF_OBJ_PIN, &mut pin_attr).with_context(|| format!("pinning at {}", pin.display()))?;
    Ok(())
}

/// XDP_PASS links on veth peers of one lab run (named after the run's id), detached on drop.
#[derive(Default)]
pub struct PeerPass {
    links: Vec<FdLink>,
}

impl PeerPass {
    /// Gives the veth `ifname` in `ns` an XDP_PASS program: a veth schedules the frames its
    /// peer sends with XDP_TX (and redirects into it) promptly only then.
    pub fn add(&mut self, run_id: &str, ns: &str, ifname: &str) -> Result<()> {
        let pin =
            std::path::PathBuf::from(format!("/sys/fs/bpf/{run_id}-pass{}", self.links.len()));
        self.links.push(attach_pass(ns, ifname, &pin)?);
        Ok(())
    }
}

/// An XDP_PASS program attached (driver mode) to `ifname` in namespace `ns`, through a
/// temporary pin at `pin`; detached when the returned link is dropped or the interface goes away.
pub fn attach_pass(ns: &str, ifname: &str, pin: &Path) -> Result<FdLink> {
    load_pass(pin)?;
    let prog = Xdp::from_pin(pin, XdpAttachType::Interface);
    // The opened program keeps it loaded; the pin was only the way in.
    let _ = std::fs::remove_file(pin);
    let mut prog = prog.context("opening the pinned XDP_PASS program")?;
    let ifname = ifname.to_string();
    crate::netns::in_named_netns(ns, move || -> Result<FdLink> {
        let id = prog
            .attach(&ifname, XdpMode::Driver)
            .with_context(|| format!("attaching XDP_PASS to {ifname}"))?;
        let link = prog.take_link(id)?;
        FdLink::try_from(link).context("the XDP_PASS link has no descriptor")
    })?
}
