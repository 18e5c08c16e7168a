//! Replies: the SNAT address and port name the flow's slot directly; the reply must come from
//! that flow's backend, else it is not ours (late packets of an earlier flow on the slot never
//! reach the new flow's client).

use lb_common::{AddrClass, FlowEntry, Reason, ports_of, slot};

use super::Flow;
use crate::{maps::FLOW_TABLE, parse::Packet};

#[inline(always)]
pub fn find(p: &Packet, class: AddrClass) -> Result<Flow, Reason> {
    let (sport, dport) = ports_of(p.ports);
    let s = slot::slot(class.snat_index as u32, dport);
    let Some(e) = FLOW_TABLE.get_ptr_mut(s) else {
        return Err(Reason::DropInternal);
    };
    // SAFETY: valid map value pointer.
    let f: &FlowEntry = unsafe { &*e };
    if !f.is_live() || f.backend != p.src || f.backend_port != sport || f.proto != p.proto {
        return Err(Reason::PassReplyNoFlow);
    }
    Ok(Flow {
        entry: e,
        slot: s,
        token: f.owner,
        new: false,
        accepted: true,
    })
}
