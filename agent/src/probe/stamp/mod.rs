//! STAMP (RFC 8762): a stateful Session-Reflector every agent can run, and a
//! Session-Sender prober that measures RTT without the reflector's residence time, loss per
//! direction from both sequence numbers, and one-way delay when both clocks are
//! synchronized.

pub mod clock;
pub mod ecmp;
pub mod listen;
pub mod packet;
pub mod reflector;
pub mod sender;
pub mod session;
pub mod socket;
