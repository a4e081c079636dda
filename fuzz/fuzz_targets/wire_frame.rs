//! Everything an aggregator or agent decodes from the network: framed client and server
//! messages and enrollment messages. Decoding must never panic; a decoded report is
//! validated; whatever decodes re-encodes to something that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pathpulse_wire::frame::{self, DEFAULT_MAX_FRAME, HEADER_LEN, MAGIC, PROTOCOL_VERSION};
use pathpulse_wire::message::{MAX_ENROLL_FRAME, validate_report};
use pathpulse_wire::{ClientMsg, EnrollReply, EnrollRequest, ServerMsg};

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fuzz_target!(|data: &[u8]| {
    // As received: header and all.
    let _ = frame::decode::<ClientMsg>(data, DEFAULT_MAX_FRAME);
    // Past the header check, so the payload decoders see every input.
    let f = framed(data);
    if let Ok(m) = frame::decode::<ClientMsg>(&f, DEFAULT_MAX_FRAME) {
        if let ClientMsg::Report(r) = &m {
            let _ = validate_report(r);
        }
        let again = frame::encode(&m).expect("re-encode");
        let back: ClientMsg = frame::decode(&again, u32::MAX).expect("decode own encoding");
        assert_eq!(format!("{back:?}"), format!("{m:?}"));
    }
    if let Ok(m) = frame::decode::<ServerMsg>(&f, DEFAULT_MAX_FRAME) {
        let again = frame::encode(&m).expect("re-encode");
        assert_eq!(frame::decode::<ServerMsg>(&again, u32::MAX).ok(), Some(m));
    }
    let _ = frame::decode::<EnrollRequest>(&f, MAX_ENROLL_FRAME);
    let _ = frame::decode::<EnrollReply>(&f, DEFAULT_MAX_FRAME);
});
