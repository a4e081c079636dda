//! STAMP (RFC 8762) packets as the reflector and the sender receive them, unauthenticated
//! and authenticated: decoding never panics, and what decodes encodes back to the same
//! packet.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pathpulse_agent::probe::stamp::packet::{ReflectorPacket, SenderPacket, StampKey};

fn key() -> &'static StampKey {
    static KEY: OnceLock<StampKey> = OnceLock::new();
    KEY.get_or_init(|| StampKey::from_hex(&"5a".repeat(32)).expect("key"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = SenderPacket::decode(data) {
        assert_eq!(SenderPacket::decode(&p.encode()).ok(), Some(p));
    }
    if let Ok(p) = ReflectorPacket::decode(data) {
        assert_eq!(ReflectorPacket::decode(&p.encode()).ok(), Some(p));
    }
    if let Ok(p) = SenderPacket::decode_auth(data, key()) {
        assert_eq!(
            SenderPacket::decode_auth(&p.encode_auth(key()), key()).ok(),
            Some(p)
        );
    }
    if let Ok(p) = ReflectorPacket::decode_auth(data, key()) {
        assert_eq!(
            ReflectorPacket::decode_auth(&p.encode_auth(key()), key()).ok(),
            Some(p)
        );
    }
    let _ = SenderPacket::peek(data, false);
    let _ = SenderPacket::peek(data, true);
});
