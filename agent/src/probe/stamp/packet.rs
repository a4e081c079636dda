//! STAMP (RFC 8762) unauthenticated test packets, byte-exact, with the session-sender
//! identifier of RFC 8972 at bytes 14–15. Pure: no I/O, no clock reads.
//!
//! Session-Sender test packet (44 bytes):
//!
//! ```text
//!  0..4   sequence number           12..14 error estimate
//!  4..12  timestamp (NTP 64-bit)    14..16 SSID (RFC 8972)     16..44 MBZ
//! ```
//!
//! Session-Reflector test packet (44 bytes):
//!
//! ```text
//!  0..4   reflector sequence        24..28 sender sequence
//!  4..12  reflector TX timestamp    28..36 sender timestamp
//! 12..14  error estimate            36..38 sender error estimate
//! 14..16  SSID                      38..40 MBZ
//! 16..24  receive timestamp         40     sender TTL          41..44 MBZ
//! ```
//!
//! Decoding never panics: a datagram shorter than 44 bytes is [`PacketError::Truncated`],
//! an error estimate with a zero multiplier (RFC 4656 §4.1.2: "the packet SHOULD be
//! considered corrupt") is [`PacketError::Malformed`]. Bytes past 44 (TWAMP-Light padding,
//! RFC 8972 TLVs) are ignored, as MBZ fields are on receipt.

/// Length of an unauthenticated STAMP test packet, both directions.
pub const PACKET_LEN: usize = 44;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("STAMP packet truncated: {len} bytes, at least {PACKET_LEN} needed")]
    Truncated { len: usize },
    #[error("STAMP packet malformed: {0}")]
    Malformed(&'static str),
    #[error("STAMP packet HMAC does not match the shared key")]
    BadHmac,
}

/// Length of an authenticated STAMP test packet (RFC 8762 §4.2.2, §4.3.2), both directions.
pub const AUTH_PACKET_LEN: usize = 112;
/// The HMAC (HMAC-SHA-256 truncated to 128 bits, RFC 4868) covers bytes 0..96.
const HMAC_AT: usize = 96;
/// Shortest shared key accepted (bytes).
pub const MIN_KEY_LEN: usize = 16;

/// The shared key of authenticated mode. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct StampKey(Vec<u8>);

impl std::fmt::Debug for StampKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StampKey({} bytes)", self.0.len())
    }
}

impl StampKey {
    /// A key of at least [`MIN_KEY_LEN`] bytes.
    pub fn new(bytes: Vec<u8>) -> Result<StampKey, String> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!(
                "key of {} bytes; at least {MIN_KEY_LEN} needed",
                bytes.len()
            ));
        }
        Ok(StampKey(bytes))
    }

    /// From a key file: hex digits (whitespace ignored), at least 32 of them.
    pub fn from_hex(text: &str) -> Result<StampKey, String> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err("odd number of hex digits".into());
        }
        let mut out = Vec::with_capacity(digits.len() / 2);
        for pair in digits.chunks(2) {
            let hex = |b: u8| (b as char).to_digit(16);
            match (hex(pair[0]), hex(pair[1])) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err("not hex digits".into()),
            }
        }
        StampKey::new(out)
    }

    fn tag(&self, data: &[u8]) -> [u8; 16] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let full = ring::hmac::sign(&key, data);
        let mut t = [0u8; 16];
        t.copy_from_slice(&full.as_ref()[..16]);
        t
    }

    fn seal(&self, b: &mut [u8; AUTH_PACKET_LEN]) {
        let t = self.tag(&b[..HMAC_AT]);
        b[HMAC_AT..].copy_from_slice(&t);
    }

    /// Constant-time check of the truncated HMAC.
    fn verify(&self, b: &[u8]) -> Result<(), PacketError> {
        if b.len() < AUTH_PACKET_LEN {
            return Err(PacketError::Truncated { len: b.len() });
        }
        let want = self.tag(&b[..HMAC_AT]);
        let diff = want
            .iter()
            .zip(&b[HMAC_AT..AUTH_PACKET_LEN])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(PacketError::BadHmac)
        }
    }
}

/// NTP 64-bit timestamp: seconds since 1900 (32 bits) and a binary fraction (32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// From nanoseconds since the Unix epoch (era 0: until 2036; later times wrap as the
    /// NTP format does).
    pub fn from_unix_ns(ns: i64) -> NtpTimestamp {
        let ns = ns.max(0) as u64;
        let secs = (ns / 1_000_000_000).wrapping_add(NTP_UNIX_OFFSET_S) & 0xffff_ffff;
        let sub = ns % 1_000_000_000;
        // Round to nearest fraction unit (2^-32 s ≈ 0.23 ns).
        let frac = ((u128::from(sub) << 32) + 500_000_000) / 1_000_000_000;
        NtpTimestamp((secs << 32) + frac.min(u128::from(u32::MAX)) as u64)
    }

    /// Nanoseconds since the Unix epoch (era 0 assumed; times before 1970 are negative).
    pub fn to_unix_ns(self) -> i64 {
        let secs = (self.0 >> 32) as i64 - NTP_UNIX_OFFSET_S as i64;
        let frac = self.0 & 0xffff_ffff;
        let sub = ((u128::from(frac) * 1_000_000_000 + (1 << 31)) >> 32) as i64;
        secs * 1_000_000_000 + sub
    }

    fn read(b: &[u8], at: usize) -> NtpTimestamp {
        NtpTimestamp(u64_at(b, at))
    }
}

/// Error estimate (RFC 4656 §4.1.2, RFC 8762 §4.2.1): S | Z | scale (6) | multiplier (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorEstimate {
    /// S: the sender's clock is synchronized to an external source.
    pub synchronized: bool,
    /// Z: timestamps are in PTP format (always 0 here: NTP format).
    pub ptp: bool,
    /// 6 bits.
    pub scale: u8,
    /// Never 0 on a valid packet.
    pub multiplier: u8,
}

impl ErrorEstimate {
    pub fn from_u16(v: u16) -> ErrorEstimate {
        ErrorEstimate {
            synchronized: v & 0x8000 != 0,
            ptp: v & 0x4000 != 0,
            scale: ((v >> 8) & 0x3f) as u8,
            multiplier: (v & 0xff) as u8,
        }
    }

    pub fn to_u16(self) -> u16 {
        (u16::from(self.synchronized) << 15)
            | (u16::from(self.ptp) << 14)
            | (u16::from(self.scale & 0x3f) << 8)
            | u16::from(self.multiplier)
    }

    /// The estimate in nanoseconds: multiplier × 2^(scale − 32) s.
    pub fn error_ns(self) -> f64 {
        f64::from(self.multiplier) * 2f64.powi(i32::from(self.scale) - 32) * 1e9
    }

    /// The smallest representable estimate not below `error_ns` (at least one unit).
    pub fn new(synchronized: bool, error_ns: u64) -> ErrorEstimate {
        // error in units of 2^-32 s, rounded up.
        let units = ((u128::from(error_ns) << 32).div_ceil(1_000_000_000)).max(1);
        let mut scale = 0u8;
        let mut mult = units;
        while mult > 255 && scale < 63 {
            scale += 1;
            mult = units.div_ceil(1u128 << scale);
        }
        ErrorEstimate {
            synchronized,
            ptp: false,
            scale,
            multiplier: mult.clamp(1, 255) as u8,
        }
    }

    fn check(self) -> Result<ErrorEstimate, PacketError> {
        if self.multiplier == 0 {
            Err(PacketError::Malformed("error estimate multiplier is zero"))
        } else {
            Ok(self)
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Session-Sender → Session-Reflector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderPacket {
    pub seq: u32,
    pub timestamp: NtpTimestamp,
    pub error: ErrorEstimate,
    /// Session-sender identifier (RFC 8972); 0 when the sender does not set one.
    pub ssid: u16,
}

impl SenderPacket {
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0..4].copy_from_slice(&self.seq.to_be_bytes());
        b[4..12].copy_from_slice(&self.timestamp.0.to_be_bytes());
        b[12..14].copy_from_slice(&self.error.to_u16().to_be_bytes());
        b[14..16].copy_from_slice(&self.ssid.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<SenderPacket, PacketError> {
        if b.len() < PACKET_LEN {
            return Err(PacketError::Truncated { len: b.len() });
        }
        Ok(SenderPacket {
            seq: u32_at(b, 0),
            timestamp: NtpTimestamp::read(b, 4),
            error: ErrorEstimate::from_u16(u16_at(b, 12)).check()?,
            ssid: u16_at(b, 14),
        })
    }
}

impl SenderPacket {
    /// Authenticated mode (RFC 8762 §4.2.2, SSID per RFC 8972): sequence (0..4), MBZ (12),
    /// timestamp (16..24), error estimate (24..26), SSID (26..28), MBZ to 96, HMAC (96..112).
    pub fn encode_auth(&self, key: &StampKey) -> [u8; AUTH_PACKET_LEN] {
        let mut b = [0u8; AUTH_PACKET_LEN];
        b[0..4].copy_from_slice(&self.seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.timestamp.0.to_be_bytes());
        b[24..26].copy_from_slice(&self.error.to_u16().to_be_bytes());
        b[26..28].copy_from_slice(&self.ssid.to_be_bytes());
        key.seal(&mut b);
        b
    }

    pub fn decode_auth(b: &[u8], key: &StampKey) -> Result<SenderPacket, PacketError> {
        key.verify(b)?;
        Ok(SenderPacket {
            seq: u32_at(b, 0),
            timestamp: NtpTimestamp::read(b, 16),
            error: ErrorEstimate::from_u16(u16_at(b, 24)).check()?,
            ssid: u16_at(b, 26),
        })
    }

    /// (SSID, sequence) of one of our own packets, unauthenticated or authenticated, from
    /// the end of a transmit-timestamp copy; no HMAC check.
    pub fn peek(tail: &[u8], authenticated: bool) -> Option<(u16, u32)> {
        let len = if authenticated {
            AUTH_PACKET_LEN
        } else {
            PACKET_LEN
        };
        let p = tail.get(tail.len().checked_sub(len)?..)?;
        Some(if authenticated {
            (u16_at(p, 26), u32_at(p, 0))
        } else {
            (u16_at(p, 14), u32_at(p, 0))
        })
    }
}

/// Session-Reflector → Session-Sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReflectorPacket {
    pub seq: u32,
    /// When the reflector sent this packet.
    pub timestamp: NtpTimestamp,
    pub error: ErrorEstimate,
    pub ssid: u16,
    /// When the reflector received the sender's packet.
    pub receive_timestamp: NtpTimestamp,
    pub sender_seq: u32,
    pub sender_timestamp: NtpTimestamp,
    pub sender_error: ErrorEstimate,
    /// TTL (IPv4) or hop limit (IPv6) of the sender's packet as received; 255 when unknown
    /// is not assumed: 0 means the reflector could not read it.
    pub sender_ttl: u8,
}

impl ReflectorPacket {
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0..4].copy_from_slice(&self.seq.to_be_bytes());
        b[4..12].copy_from_slice(&self.timestamp.0.to_be_bytes());
        b[12..14].copy_from_slice(&self.error.to_u16().to_be_bytes());
        b[14..16].copy_from_slice(&self.ssid.to_be_bytes());
        b[16..24].copy_from_slice(&self.receive_timestamp.0.to_be_bytes());
        b[24..28].copy_from_slice(&self.sender_seq.to_be_bytes());
        b[28..36].copy_from_slice(&self.sender_timestamp.0.to_be_bytes());
        b[36..38].copy_from_slice(&self.sender_error.to_u16().to_be_bytes());
        b[40] = self.sender_ttl;
        b
    }

    pub fn decode(b: &[u8]) -> Result<ReflectorPacket, PacketError> {
        if b.len() < PACKET_LEN {
            return Err(PacketError::Truncated { len: b.len() });
        }
        Ok(ReflectorPacket {
            seq: u32_at(b, 0),
            timestamp: NtpTimestamp::read(b, 4),
            error: ErrorEstimate::from_u16(u16_at(b, 12)).check()?,
            ssid: u16_at(b, 14),
            receive_timestamp: NtpTimestamp::read(b, 16),
            sender_seq: u32_at(b, 24),
            sender_timestamp: NtpTimestamp::read(b, 28),
            // The sender's estimate is echoed as received; it is the sender's business.
            sender_error: ErrorEstimate::from_u16(u16_at(b, 36)),
            sender_ttl: b[40],
        })
    }
}

impl ReflectorPacket {
    /// Authenticated mode (RFC 8762 §4.3.2, SSID per RFC 8972): sequence (0..4), MBZ (12),
    /// timestamp (16..24), error estimate (24..26), SSID (26..28), MBZ (4), receive
    /// timestamp (32..40), MBZ (8), sender sequence (48..52), MBZ (12), sender timestamp
    /// (64..72), sender error estimate (72..74), MBZ (6), sender TTL (80), MBZ (15), HMAC
    /// (96..112).
    pub fn encode_auth(&self, key: &StampKey) -> [u8; AUTH_PACKET_LEN] {
        let mut b = [0u8; AUTH_PACKET_LEN];
        b[0..4].copy_from_slice(&self.seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.timestamp.0.to_be_bytes());
        b[24..26].copy_from_slice(&self.error.to_u16().to_be_bytes());
        b[26..28].copy_from_slice(&self.ssid.to_be_bytes());
        b[32..40].copy_from_slice(&self.receive_timestamp.0.to_be_bytes());
        b[48..52].copy_from_slice(&self.sender_seq.to_be_bytes());
        b[64..72].copy_from_slice(&self.sender_timestamp.0.to_be_bytes());
        b[72..74].copy_from_slice(&self.sender_error.to_u16().to_be_bytes());
        b[80] = self.sender_ttl;
        key.seal(&mut b);
        b
    }

    pub fn decode_auth(b: &[u8], key: &StampKey) -> Result<ReflectorPacket, PacketError> {
        key.verify(b)?;
        Ok(ReflectorPacket {
            seq: u32_at(b, 0),
            timestamp: NtpTimestamp::read(b, 16),
            error: ErrorEstimate::from_u16(u16_at(b, 24)).check()?,
            ssid: u16_at(b, 26),
            receive_timestamp: NtpTimestamp::read(b, 32),
            sender_seq: u32_at(b, 48),
            sender_timestamp: NtpTimestamp::read(b, 64),
            sender_error: ErrorEstimate::from_u16(u16_at(b, 72)),
            sender_ttl: b[80],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Session-Sender packet written out by hand from RFC 8762 §4.2.1 / RFC 8972 §3.
    const SENDER_BYTES: [u8; 44] = [
        0x00, 0x00, 0x01, 0x02, // sequence 258
        0xE9, 0x4F, 0x0E, 0x80, // NTP seconds 3914272384 (2024-01-15 01:53:04 UTC)
        0x80, 0x00, 0x00, 0x00, // fraction 0.5
        0x86, 0x10, // S=1, Z=0, scale 6, multiplier 16
        0xBE, 0xEF, // SSID
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // MBZ 16..30
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // MBZ 30..44
    ];

    /// A Session-Reflector packet written out by hand from RFC 8762 §4.3.1.
    const REFLECTOR_BYTES: [u8; 44] = [
        0x00, 0x00, 0x00, 0x07, // reflector sequence 7
        0xE9, 0x4F, 0x0E, 0x81, 0x40, 0x00, 0x00, 0x00, // TX ts: seconds +1, fraction 0.25
        0x01, 0x01, // S=0, Z=0, scale 1, multiplier 1
        0xBE, 0xEF, // SSID
        0xE9, 0x4F, 0x0E, 0x81, 0x00, 0x00, 0x00, 0x01, // receive ts: seconds +1, fraction 1
        0x00, 0x00, 0x01, 0x02, // sender sequence 258
        0xE9, 0x4F, 0x0E, 0x80, 0x80, 0x00, 0x00, 0x00, // sender timestamp
        0x86, 0x10, // sender error estimate
        0x00, 0x00, // MBZ
        0x3F, // sender TTL 63
        0x00, 0x00, 0x00, // MBZ
    ];

    const T0_UNIX_S: i64 = 3_914_272_384 - NTP_UNIX_OFFSET_S as i64;

    #[test]
    fn sender_packet_matches_the_rfc_layout_both_ways() {
        let p = SenderPacket {
            seq: 258,
            timestamp: NtpTimestamp::from_unix_ns(T0_UNIX_S * 1_000_000_000 + 500_000_000),
            error: ErrorEstimate {
                synchronized: true,
                ptp: false,
                scale: 6,
                multiplier: 16,
            },
            ssid: 0xBEEF,
        };
        assert_eq!(p.encode(), SENDER_BYTES);
        assert_eq!(SenderPacket::decode(&SENDER_BYTES), Ok(p));
    }

    #[test]
    fn reflector_packet_matches_the_rfc_layout_both_ways() {
        let p = ReflectorPacket::decode(&REFLECTOR_BYTES).expect("valid");
        assert_eq!(p.seq, 7);
        assert_eq!(p.ssid, 0xBEEF);
        assert_eq!(p.sender_seq, 258);
        assert_eq!(p.sender_ttl, 63);
        assert!(!p.error.synchronized);
        assert!(p.sender_error.synchronized);
        assert_eq!(
            p.timestamp.to_unix_ns(),
            (T0_UNIX_S + 1) * 1_000_000_000 + 250_000_000
        );
        // fraction 1 = 2^-32 s rounds to 0 ns
        assert_eq!(
            p.receive_timestamp.to_unix_ns(),
            (T0_UNIX_S + 1) * 1_000_000_000
        );
        assert_eq!(p.sender_timestamp.0, 0xE94F_0E80_8000_0000);
        assert_eq!(p.encode(), REFLECTOR_BYTES);
    }

    #[test]
    fn error_estimate_bits_and_value() {
        let e = ErrorEstimate::from_u16(0x8610);
        assert_eq!(
            (e.synchronized, e.ptp, e.scale, e.multiplier),
            (true, false, 6, 16)
        );
        // 16 × 2^(6−32) s = 2^-22 s ≈ 238.4 ns
        assert!(
            (e.error_ns() - 238.418_579).abs() < 1e-3,
            "{}",
            e.error_ns()
        );
        assert!(ErrorEstimate::from_u16(0x4000).ptp);
        // new() never underestimates and never gives multiplier 0.
        for ns in [0u64, 1, 999, 1_000_000, 16_000_000_000, u64::MAX / 4] {
            let e = ErrorEstimate::new(false, ns);
            assert!(e.multiplier >= 1);
            assert!(
                e.error_ns() >= ns as f64 * 0.999_999,
                "{ns}: {}",
                e.error_ns()
            );
            assert!(
                ns < 1_000 || e.error_ns() <= ns as f64 * 1.01,
                "{ns}: {}",
                e.error_ns()
            );
            assert_eq!(ErrorEstimate::from_u16(e.to_u16()), e);
        }
    }

    #[test]
    fn ntp_timestamps_round_trip_unix_nanoseconds() {
        // The Unix epoch is NTP second 2208988800 (0x83AA7E80).
        assert_eq!(NtpTimestamp::from_unix_ns(0).0, 0x83AA_7E80_0000_0000);
        assert_eq!(NtpTimestamp(0x83AA_7E80_0000_0000).to_unix_ns(), 0);
        for ns in [
            1i64,
            999_999_999,
            1_700_000_000_123_456_789,
            2_000_000_000_000_000_001,
        ] {
            let back = NtpTimestamp::from_unix_ns(ns).to_unix_ns();
            assert!((back - ns).abs() <= 1, "{ns} -> {back}");
        }
    }

    #[test]
    fn short_corrupt_and_long_input_give_typed_results_never_panics() {
        for len in 0..PACKET_LEN {
            assert_eq!(
                SenderPacket::decode(&SENDER_BYTES[..len]),
                Err(PacketError::Truncated { len })
            );
            assert_eq!(
                ReflectorPacket::decode(&REFLECTOR_BYTES[..len]),
                Err(PacketError::Truncated { len })
            );
        }
        let mut zero_mult = SENDER_BYTES;
        zero_mult[13] = 0;
        assert!(matches!(
            SenderPacket::decode(&zero_mult),
            Err(PacketError::Malformed(_))
        ));
        let mut r = REFLECTOR_BYTES;
        r[13] = 0;
        assert!(matches!(
            ReflectorPacket::decode(&r),
            Err(PacketError::Malformed(_))
        ));
        // TWAMP-Light style padding after 44 bytes is ignored.
        let mut long = SENDER_BYTES.to_vec();
        long.extend_from_slice(&[0xAA; 100]);
        assert_eq!(SenderPacket::decode(&long).expect("padded").seq, 258);
        // Pseudo-random garbage of every length: a typed answer, never a panic.
        let mut x: u32 = 0x1234_5678;
        for len in 0..200 {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = SenderPacket::decode(&g);
            let _ = ReflectorPacket::decode(&g);
        }
    }

    /// Hex of a 112-byte packet: `fields` as (offset, bytes), zeros elsewhere, then the
    /// HMAC given (computed independently with Python's hmac module over bytes 0..96, key
    /// 00 01 .. 1f).
    fn auth_bytes(fields: &[(usize, &[u8])], hmac_hex: &str) -> Vec<u8> {
        let mut b = vec![0u8; AUTH_PACKET_LEN];
        for (at, v) in fields {
            b[*at..*at + v.len()].copy_from_slice(v);
        }
        let tag: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hmac_hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        b[96..].copy_from_slice(&tag);
        b
    }

    fn key() -> StampKey {
        StampKey::new((0u8..32).collect()).expect("key")
    }

    #[test]
    fn authenticated_packets_match_the_rfc_layout_and_hmac() {
        let sender = auth_bytes(
            &[
                (0, &[0, 0, 1, 2]),
                (16, &[0xE9, 0x4F, 0x0E, 0x80, 0x80, 0, 0, 0]),
                (24, &[0x86, 0x10]),
                (26, &[0xBE, 0xEF]),
            ],
            "eae663155d144a9a864162279e78965d",
        );
        let p = SenderPacket::decode(&SENDER_BYTES).expect("unauth");
        assert_eq!(p.encode_auth(&key()).to_vec(), sender);
        assert_eq!(SenderPacket::decode_auth(&sender, &key()), Ok(p));
        assert_eq!(SenderPacket::peek(&sender, true), Some((0xBEEF, 258)));
        assert_eq!(
            SenderPacket::peek(&SENDER_BYTES, false),
            Some((0xBEEF, 258))
        );

        let reflector = auth_bytes(
            &[
                (0, &[0, 0, 0, 7]),
                (16, &[0xE9, 0x4F, 0x0E, 0x81, 0x40, 0, 0, 0]),
                (24, &[0x01, 0x01]),
                (26, &[0xBE, 0xEF]),
                (32, &[0xE9, 0x4F, 0x0E, 0x81, 0, 0, 0, 1]),
                (48, &[0, 0, 1, 2]),
                (64, &[0xE9, 0x4F, 0x0E, 0x80, 0x80, 0, 0, 0]),
                (72, &[0x86, 0x10]),
                (80, &[0x3F]),
            ],
            "6de44cd977bddd8a2669785a469f9848",
        );
        let r = ReflectorPacket::decode(&REFLECTOR_BYTES).expect("unauth");
        assert_eq!(r.encode_auth(&key()).to_vec(), reflector);
        assert_eq!(ReflectorPacket::decode_auth(&reflector, &key()), Ok(r));
    }

    #[test]
    fn authenticated_decoding_refuses_tampering_wrong_keys_and_short_input() {
        let p = SenderPacket::decode(&SENDER_BYTES).expect("unauth");
        let good = p.encode_auth(&key());
        for i in [0, 17, 27, 95, 96, 111] {
            let mut bad = good;
            bad[i] ^= 1;
            assert_eq!(
                SenderPacket::decode_auth(&bad, &key()),
                Err(PacketError::BadHmac),
                "byte {i}"
            );
        }
        let other = StampKey::new(vec![7u8; 16]).expect("key");
        assert_eq!(
            SenderPacket::decode_auth(&good, &other),
            Err(PacketError::BadHmac)
        );
        assert_eq!(
            SenderPacket::decode_auth(&good[..111], &key()),
            Err(PacketError::Truncated { len: 111 })
        );
        assert_eq!(
            ReflectorPacket::decode_auth(&SENDER_BYTES, &key()),
            Err(PacketError::Truncated { len: 44 })
        );
        assert!(SenderPacket::peek(&good[..50], true).is_none());
        assert!(StampKey::new(vec![1u8; 15]).is_err());
        assert_eq!(
            StampKey::from_hex("00 01\n02030405060708090a0b0c0d0e0f").map(|k| k.0.len()),
            Ok(16)
        );
        assert!(StampKey::from_hex("zz").is_err());
        assert!(
            !format!("{:?}", key()).contains("01"),
            "Debug hides the key"
        );
    }
}
