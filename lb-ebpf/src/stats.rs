//! Per-CPU counters: no atomics needed, userspace sums the CPUs.

use lb_common::Reason;

use crate::maps::{BACKEND_STATS, PASSIVE_STATS, REASONS, VIP_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn vip(vip_id: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += new_flow as u64;
        }
    }
}

#[inline(always)]
pub fn vip_no_backend(vip_id: u32) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*s).no_backend += 1 };
    }
}

#[inline(always)]
pub fn backend_in(backend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets_in += 1;
            (*s).bytes_in += bytes;
            (*s).new_flows += new_flow as u64;
        }
    }
}

#[inline(always)]
pub fn backend_out(backend_id: u32, bytes: u64) {
    if let Some(s) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets_out += 1;
            (*s).bytes_out += bytes;
        }
    }
}

/// The backend refused a new connection: a RST answering the SYN the edge sent it.
#[inline(always)]
pub fn backend_refused(backend_id: u32) {
    if let Some(s) = PASSIVE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*s).refused += 1 };
    }
}

/// A client sent its SYN again while the backend had not answered the first.
#[inline(always)]
pub fn backend_syn_retransmit(backend_id: u32) {
    if let Some(s) = PASSIVE_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot.
        unsafe { (*s).syn_retransmits += 1 };
    }
}

/// Per-VIP counters of new-connection attempts (`VipStats`): SYNs, cookies, source policy.
#[derive(Clone, Copy)]
pub enum VipSyn {
    /// An initial SYN reached the VIP.
    Syn,
    /// A client completed the handshake of a flow its SYN created.
    Handshake,
    CookieSent,
    CookieValid,
    CookieInvalid,
    Denied,
    Allowed,
    RateLimited,
    ConnLimited,
}

#[inline(always)]
pub fn vip_syn(vip_id: u32, what: VipSyn) {
    if let Some(s) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot.
        unsafe {
            match what {
                VipSyn::Syn => (*s).syns += 1,
                VipSyn::Handshake => (*s).handshakes += 1,
                VipSyn::CookieSent => (*s).cookies_sent += 1,
                VipSyn::CookieValid => (*s).cookies_valid += 1,
                VipSyn::CookieInvalid => (*s).cookies_invalid += 1,
                VipSyn::Denied => (*s).denied += 1,
                VipSyn::Allowed => (*s).allowed += 1,
                VipSyn::RateLimited => (*s).rate_limited += 1,
                VipSyn::ConnLimited => (*s).conn_limited += 1,
            }
        }
    }
}
