//! What an enrollment brings from outside: the token text the operator pastes, and the
//! certificate request the aggregator signs (only its public key may be used).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pathpulse_wire::tls::{self, Ca, EnrollToken};

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| Ca::generate("fuzz CA").expect("CA"))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(t) = EnrollToken::parse(&text) {
        assert_eq!(EnrollToken::parse(&t.to_string()), Ok(t));
    }
    // As PEM text and as raw DER wrapped in PEM.
    let _ = ca().sign_agent_request("fuzz", &text, Duration::from_secs(60));
    let b64 = base64ish(data);
    let pem =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
    if let Ok(cert) = ca().sign_agent_request("fuzz", &pem, Duration::from_secs(60)) {
        let der = tls::cert_serial_pem(&cert);
        assert!(der.is_ok());
    }
});

/// Standard base64 (no dependency for one fuzz target).
fn base64ish(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
