//! Framing: every message on a stream is `magic (2) | version (2) | length (4) | payload`,
//! big-endian, payload encoded with postcard. The version is checked per frame so an old
//! aggregator refuses a newer agent with a message instead of misreading it.

use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const MAGIC: [u8; 2] = *b"PP";
/// Protocol version spoken by this build. 2: path reports carry hops and STAMP's
/// directional loss and one-way delay. 3: mesh membership (`ClientMsg::Join`,
/// `ServerMsg::Peers`); version 2's messages are a subset of version 3's, encoded alike.
/// 4: confirmation bursts (`ClientMsg::Confirm`); a superset of version 3 in the same way.
pub const PROTOCOL_VERSION: u16 = 4;
/// Oldest version still accepted: an aggregator answers a version-2 agent in version-2
/// frames (and never sends it a peer list).
pub const MIN_PROTOCOL_VERSION: u16 = 2;
pub const HEADER_LEN: usize = 8;
/// Default upper bound of a frame's payload (a report of ~10,000 paths fits easily).
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("not a pathpulse frame (magic {0:02x?})")]
    BadMagic([u8; 2]),
    #[error(
        "protocol version {got} is not supported (this build speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"
    )]
    UnsupportedVersion { got: u16 },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: u32, max: u32 },
    #[error("undecodable message: {0}")]
    Decode(#[from] postcard::Error),
    #[error("stream closed in the middle of a frame")]
    Truncated,
    /// The source is kept for the cause behind it: a QUIC stream's "connection lost"
    /// wraps why (a TLS alert from the peer, a timeout), which `{:#}` then shows.
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    }
}

/// Encode a message into one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_as(msg, PROTOCOL_VERSION)
}

/// Encode a message into one frame of the given version (to answer an older peer in its
/// own version; the message must be one that version has).
pub fn encode_as<T: Serialize>(msg: &T, version: u16) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; HEADER_LEN];
    out = postcard::to_extend(msg, out)?;
    let len = u32::try_from(out.len() - HEADER_LEN).map_err(|_| FrameError::Oversize {
        len: u32::MAX,
        max: u32::MAX,
    })?;
    out[0..2].copy_from_slice(&MAGIC);
    out[2..4].copy_from_slice(&version.to_be_bytes());
    out[4..8].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// Parse a frame header, returning the payload length.
pub fn parse_header(h: &[u8; HEADER_LEN], max: u32) -> Result<u32, FrameError> {
    parse_header_versioned(h, max).map(|(len, _)| len)
}

/// Parse a frame header, returning the payload length and the frame's version.
pub fn parse_header_versioned(h: &[u8; HEADER_LEN], max: u32) -> Result<(u32, u16), FrameError> {
    let magic = [h[0], h[1]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([h[2], h[3]]);
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion { got: version });
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    Ok((len, version))
}

/// Decode a whole frame held in memory.
pub fn decode<T: DeserializeOwned>(frame: &[u8], max: u32) -> Result<T, FrameError> {
    let header: &[u8; HEADER_LEN] = frame
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = parse_header(header, max)? as usize;
    let payload = frame
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(FrameError::Truncated)?;
    Ok(postcard::from_bytes(payload)?)
}

/// Read one frame. `Ok(None)` on a clean end of stream before a header.
pub async fn read<T, R>(r: &mut R, max: u32) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    Ok(read_versioned(r, max).await?.map(|(m, _)| m))
}

/// As [`read`], with the version the peer wrote the frame in.
pub async fn read_versioned<T, R>(r: &mut R, max: u32) -> Result<Option<(T, u16)>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    let n = r.read(&mut header[..1]).await?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[1..]).await?;
    let (len, version) = parse_header_versioned(&header, max)?;
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some((postcard::from_bytes(&payload)?, version)))
}

/// Write one frame.
pub async fn write<T, W>(w: &mut W, msg: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    write_as(w, msg, PROTOCOL_VERSION).await
}

/// Write one frame of the given version.
pub async fn write_as<T, W>(w: &mut W, msg: &T, version: u16) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let bytes = encode_as(msg, version)?;
    w.write_all(&bytes).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ClientMsg, Hello, PathReport, Report};

    fn report() -> ClientMsg {
        let mut p = PathReport {
            dst: "127.0.0.2".into(),
            sent: 5,
            received: 4,
            lost: 1,
            ..Default::default()
        };
        for v in [100, 120, 110, 90] {
            p.rtt.record(v);
            p.rtt_sum_us += v;
        }
        ClientMsg::Report(Report {
            seq: 9,
            agent: "a1".into(),
            interval_start_ms: 1_700_000_000_000,
            interval_ms: 5000,
            paths: vec![p],
            health: Default::default(),
        })
    }

    #[tokio::test]
    async fn roundtrip_over_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = ClientMsg::Hello(Hello {
            agent: "a1".into(),
            session: 1,
            software: "0.1".into(),
            site: None,
            isp: None,
        });
        write(&mut a, &hello).await.expect("write");
        write(&mut a, &report()).await.expect("write");
        drop(a);
        assert_eq!(
            read::<ClientMsg, _>(&mut b, DEFAULT_MAX_FRAME)
                .await
                .expect("read"),
            Some(hello)
        );
        assert_eq!(
            read::<ClientMsg, _>(&mut b, DEFAULT_MAX_FRAME)
                .await
                .expect("read"),
            Some(report())
        );
        assert!(
            read::<ClientMsg, _>(&mut b, DEFAULT_MAX_FRAME)
                .await
                .expect("eof")
                .is_none()
        );
    }

    #[test]
    fn bad_frames_name_what_is_wrong() {
        let good = encode(&report()).expect("encode");
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(matches!(
            decode::<ClientMsg>(&bad_magic, DEFAULT_MAX_FRAME),
            Err(FrameError::BadMagic(_))
        ));
        let mut future = good.clone();
        future[2..4].copy_from_slice(&7u16.to_be_bytes());
        let err = decode::<ClientMsg>(&future, DEFAULT_MAX_FRAME).expect_err("version 7");
        assert!(err.to_string().contains("version 7"), "{err}");
        assert!(matches!(
            decode::<ClientMsg>(&good, 4),
            Err(FrameError::Oversize { max: 4, .. })
        ));
        assert!(matches!(
            decode::<ClientMsg>(&good[..good.len() - 1], DEFAULT_MAX_FRAME),
            Err(FrameError::Truncated)
        ));
        let mut garbage = good.clone();
        for b in &mut garbage[HEADER_LEN..] {
            *b = 0xff;
        }
        assert!(matches!(
            decode::<ClientMsg>(&garbage, DEFAULT_MAX_FRAME),
            Err(FrameError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn version_2_frames_are_read_and_answered_in_version_2() {
        // A version-2 agent's hello is a version-3 hello, byte for byte, but for the header.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let hello = ClientMsg::Hello(Hello {
            agent: "old".into(),
            session: 7,
            software: "0.1".into(),
            site: Some("hq".into()),
            isp: None,
        });
        let mut v2 = encode(&hello).expect("encode");
        v2[2..4].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(v2, encode_as(&hello, 2).expect("encode v2"));
        a.write_all(&v2).await.expect("write");
        let got = read_versioned::<ClientMsg, _>(&mut b, DEFAULT_MAX_FRAME)
            .await
            .expect("read");
        assert_eq!(got, Some((hello, 2)));
        let mut old = [0u8; HEADER_LEN];
        old[..2].copy_from_slice(&MAGIC);
        old[2..4].copy_from_slice(&1u16.to_be_bytes());
        assert!(matches!(
            parse_header(&old, 10),
            Err(FrameError::UnsupportedVersion { got: 1 })
        ));
    }

    #[tokio::test]
    async fn oversize_header_is_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&MAGIC);
        header[2..4].copy_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        header[4..].copy_from_slice(&u32::MAX.to_be_bytes());
        a.write_all(&header).await.expect("write");
        let err = read::<ClientMsg, _>(&mut b, DEFAULT_MAX_FRAME)
            .await
            .expect_err("oversize");
        assert!(matches!(err, FrameError::Oversize { .. }));
    }

    #[test]
    fn one_probe_per_second_report_is_small() {
        // 5 s interval at 1 probe/s: the wire-size goal is <= 200 B per path-report.
        let mut p = PathReport {
            dst: "192.0.2.10".into(),
            sent: 5,
            received: 5,
            ..Default::default()
        };
        for v in [10_412, 10_388, 10_501, 10_397, 10_455] {
            p.rtt.record(v);
            p.rtt_sum_us += v;
        }
        let bytes = postcard::to_stdvec(&p).expect("encode");
        assert!(bytes.len() <= 200, "{} bytes", bytes.len());
    }
}
