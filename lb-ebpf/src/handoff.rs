//! What a program tells the one it tail-calls about the packet: the lookups it made, so the
//! next one does not make them again (a second FLOWS4 miss, a second VIP lookup, a second walk
//! of a SYN's options, a second parse are tens of nanoseconds each). Per CPU, and naming the
//! packet's tuple: the callee trusts it only for that tuple, and takes it once; a tail call
//! that fails clears it (`maps::tails::call`), so no record outlives the packet it was given for.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map, programs::XdpContext};
use lb_common::{AddrClass, Flow4Key, VipMeta};

use crate::parse::{Packet, load16, load32, ptr_at};

#[repr(C)]
pub struct Handoff {
    key: Flow4Key,
    /// `NO_FLOW`, `VIP`, `OPTIONS`, `PACKET`.
    what: u32,
    vip: VipMeta,
    /// With `PACKET`: the caller's parse and the destination's class.
    packet: Packet,
    class: AddrClass,
}

/// What the caller recorded: `NO_FLOW`, `VIP`, `OPTIONS` bits (0: nothing), and the VIP.
#[derive(Clone, Copy)]
pub struct Told {
    pub what: u32,
    pub vip: VipMeta,
}

impl Told {
    pub const NOTHING: Told = Told {
        what: 0,
        vip: VipMeta {
            vip_id: 0,
            flags: 0,
        },
    };

    #[inline(always)]
    pub fn has(&self, bit: u32) -> bool {
        self.what & bit != 0
    }
}

/// The entry program looked the tuple up (hint and FLOWS4) and found no flow.
pub const NO_FLOW: u32 = 1;
/// `vip` is the VIP the packet is for.
pub const VIP: u32 = 2;
/// The SYN's options were walked into the per-CPU scratch slot (`parse::tcp`).
pub const OPTIONS: u32 = 4;
/// `packet` and `class` are the caller's parse of the packet (the entry's, for the flow
/// program: a SYN's second parse was most of what the split into programs cost it).
pub const PACKET: u32 = 8;
/// For `wklb_proxy`: the segment was tracked (`TRACKED`), and its RST or FIN (if any) was
/// acceptable (`ACCEPTED`).
pub const ACCEPTED: u32 = 16;
pub const TRACKED: u32 = 32;

#[btf_map]
static HANDOFF: PerCpuArray<Handoff, 1> = PerCpuArray::new();

/// Records what this program found about the packet with tuple `key`.
#[inline(always)]
pub fn give(key: &Flow4Key, what: u32, vip: VipMeta) {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: this CPU's value; only this run of this CPU touches it.
        unsafe {
            (*h).key = *key;
            (*h).what = what;
            (*h).vip = vip;
        }
    }
}

/// Records the entry's parse of the packet, with `what` it found about its flow.
#[inline(always)]
pub fn give_parsed(p: &Packet, class: AddrClass, what: u32) {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: this CPU's value; only this run of this CPU touches it.
        unsafe {
            (*h).key = Flow4Key::from_wire(p.src, p.dst, p.ports, p.proto);
            (*h).what = what | PACKET;
            (*h).vip = VipMeta::default();
            (*h).packet = *p;
            (*h).class = class;
        }
    }
}

/// The caller's parse of this packet, its class and what else it recorded, once. None when
/// there is none, or when the packet at the recorded offsets is not the one recorded: its
/// header length, total length, TTL, protocol, addresses and ports, and not a fragment.
#[inline(always)]
pub fn take_parsed(ctx: &XdpContext) -> Option<(Packet, AddrClass, Told)> {
    let h = HANDOFF.get_ptr_mut(0)?;
    // SAFETY: this CPU's value, written earlier in this run (or stale: then the check below
    // fails, or the record was cleared after its last use).
    unsafe {
        let what = (*h).what;
        if what & PACKET == 0 {
            return None;
        }
        (*h).what = 0;
        let p = (*h).packet;
        let l3 = p.l3();
        let ip = ptr_at::<[u8; 20]>(ctx, l3)?;
        let l4 = ptr_at::<u32>(ctx, p.l4())?;
        let ip = ip.cast::<u8>();
        // Version and header length (from where L4 starts), total length; not a fragment; TTL
        // and protocol, then the addresses: the packet the record names, where it said.
        let ihl = ((p.l4() - l3) / 4) as u8;
        let [len_hi, len_lo] = p.ip_len.to_be_bytes();
        if load32(ip) & 0xffff_00ff != u32::from_ne_bytes([0x40 | ihl, 0, len_hi, len_lo])
            || load16(ip.add(6)) & 0x3fffu16.to_be() != 0
            || load16(ip.add(8)) != u16::from_ne_bytes([p.ttl, p.proto])
            || load32(ip.add(12)) != p.src
            || load32(ip.add(16)) != p.dst
            || *l4 != p.ports
        {
            return None;
        }
        let told = Told {
            what,
            vip: (*h).vip,
        };
        Some((p, (*h).class, told))
    }
}

/// Forgets any record (after a tail call that did not happen).
#[inline(always)]
pub fn clear() {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: this CPU's value.
        unsafe { (*h).what = 0 };
    }
}

/// What the caller recorded about the packet with tuple `key`, once (the record is cleared).
#[inline(always)]
pub fn take(key: &Flow4Key) -> Told {
    let Some(h) = HANDOFF.get_ptr_mut(0) else {
        return Told::NOTHING;
    };
    // SAFETY: this CPU's value, written earlier in this run (or stale: then the key differs,
    // or the record was cleared after its last use).
    unsafe {
        if (*h).what == 0 || (*h).key != *key {
            return Told::NOTHING;
        }
        let told = Told {
            what: (*h).what,
            vip: (*h).vip,
        };
        (*h).what = 0;
        told
    }
}
