//! SYN cookies (lb_common::cookie has the arithmetic): the edge answers SYNs itself while a
//! VIP is in cookie mode, creates a flow only for a client ACK that proves the cookie, then does
//! the backend handshake itself and translates sequence numbers for the life of the flow.

pub mod ack;
pub mod backend_syn;
pub mod budget;
pub mod client;
pub mod handshake;
pub mod segment;
pub mod syn;
pub mod translate;
