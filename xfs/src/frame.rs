//! Framing: `u32 length | u32 crc32 of payload | payload`, both integers big-endian, payload bincode 2.
//!
//! A frame whose checksum fails, or whose length is over the limit, is an error that closes the
//! connection: after it, the byte stream cannot be trusted.

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec;

/// The default bound on one frame's payload (a message body plus its summary fits well inside).
pub const MAX_FRAME_DEFAULT: usize = 64 * 1024 * 1024;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch: header says {expected:#010x}, payload has {actual:#010x}")]
    BadChecksum { expected: u32, actual: u32 },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("unencodable message: {0}")]
    Encode(String),
    #[error("peer closed the connection inside a frame")]
    Truncated,
}

impl FrameError {
    /// A short name, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::Io(_) => "io",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::BadChecksum { .. } => "bad_crc",
            FrameError::Decode(_) => "decode",
            FrameError::Encode(_) => "encode",
            FrameError::Truncated => "truncated",
        }
    }
}

/// Encode a message as one complete frame (header and payload).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    codec::encode_into(msg, &mut buf).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = buf.len() - HEADER_LEN;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: u32::MAX as usize,
    })?;
    let crc = crc32fast::hash(&buf[HEADER_LEN..]);
    buf[0..4].copy_from_slice(&len32.to_be_bytes());
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
    Ok(buf)
}

/// Decode a payload (checksum already verified by [`read_frame`]); no length inside it is
/// trusted beyond the payload's own size ([`codec::decode`]).
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    codec::decode(payload).map_err(|e| match e {
        codec::CodecError::Decode(why) => FrameError::Decode(why),
        other => FrameError::Decode(other.to_string()),
    })
}

/// Read one frame's payload, verifying length and checksum. `Ok(None)` is a clean end of stream
/// between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = match r.read(&mut header[got..]).await {
            Ok(n) => n,
            // A TLS peer that closed without a close_notify, between frames: a close like any
            // other (every frame before it was whole and authenticated).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let expected = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    let actual = crc32fast::hash(&payload);
    if actual != expected {
        return Err(FrameError::BadChecksum { expected, actual });
    }
    Ok(Some(payload))
}

/// Read and decode one message; a clean end of stream is `Ok(None)`.
pub async fn read_msg<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, FrameError> {
    match read_frame(r, max).await? {
        Some(payload) => decode(&payload).map(Some),
        None => Ok(None),
    }
}

/// Encode and write one message.
pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    let buf = encode(msg)?;
    w.write_all(&buf).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::*;

    /// A stream that ends as a TLS stream does when the peer left without a close_notify.
    struct EofError;

    impl AsyncRead for EofError {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no close_notify");
            std::task::Poll::Ready(Err(e))
        }
    }

    #[tokio::test]
    async fn a_peer_gone_without_close_notify_between_frames_is_a_close() {
        assert!(matches!(read_frame(&mut EofError, 1024).await, Ok(None)));
    }

    fn sample() -> ClientFrame {
        ClientFrame::Request(Request {
            id: 7,
            deadline_ms: 1000,
            trace: "r-1".into(),
            session: Some(crate::envelope::SessionToken("v2.k1.p.s".into())),
            op: Op::Deliver {
                target: Target::new("alice@example.test", 1, 3),
                delivery: Delivery {
                    id: [9; 32],
                    folder: None,
                    internal_date_ms: 5,
                    flags: Flags::SEEN,
                    summary: Summary {
                        subject: "hi".into(),
                        ..Default::default()
                    },
                    body: bytes::Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n"),
                },
            },
        })
    }

    #[tokio::test]
    async fn round_trip() {
        let buf = encode(&sample()).unwrap();
        let mut r = &buf[..];
        let back: ClientFrame = read_msg(&mut r, MAX_FRAME_DEFAULT).await.unwrap().unwrap();
        match back {
            ClientFrame::Request(req) => {
                assert_eq!(req.id, 7);
                assert_eq!(req.op.name(), "deliver");
            }
            other => panic!("decoded {other:?}"),
        }
        let end: Option<ClientFrame> = read_msg(&mut r, MAX_FRAME_DEFAULT).await.unwrap();
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn flipped_bit_is_a_checksum_error() {
        let mut buf = encode(&sample()).unwrap();
        let last = buf.len() - 3;
        buf[last] ^= 0x40;
        let err = read_frame(&mut &buf[..], MAX_FRAME_DEFAULT)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::BadChecksum { .. }), "{err}");
    }

    #[tokio::test]
    async fn oversize_length_is_refused_before_reading() {
        let mut buf = vec![0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0];
        buf.extend_from_slice(b"short");
        let err = read_frame(&mut &buf[..], 1024).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_not_eof() {
        let buf = encode(&sample()).unwrap();
        let err = read_frame(&mut &buf[..buf.len() - 1], MAX_FRAME_DEFAULT)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
        let err = read_frame(&mut &buf[..3], MAX_FRAME_DEFAULT)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated), "{err}");
    }

    #[test]
    fn garbage_payload_with_good_crc_is_a_decode_error() {
        let err = decode::<ClientFrame>(&[0xfe, 0xff, 0x01]).unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }

    #[tokio::test]
    async fn a_hello_claiming_a_huge_string_is_a_decode_error() {
        // The 19-byte frame that used to abort a store: a hello whose client name claims 2^62
        // bytes. Frame header (length 11, crc), then variant 0, version 1, the length varint.
        let mut payload = vec![0u8, 1u8, 0xfd];
        payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let mut buf = (payload.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        buf.extend_from_slice(&payload);
        assert_eq!(buf.len(), 19);
        let got = read_msg::<_, ClientFrame>(&mut &buf[..], MAX_FRAME_DEFAULT).await;
        assert!(matches!(got, Err(FrameError::Decode(_))), "{got:?}");
    }

    #[test]
    fn errors_round_trip() {
        let resp = ServerFrame::Response(Response {
            id: 1,
            result: Err(XfsError::Moved {
                to: "store2".into(),
                epoch: 4,
            }),
        });
        let buf = encode(&resp).unwrap();
        let back: ServerFrame = decode(&buf[HEADER_LEN..]).unwrap();
        match back {
            ServerFrame::Response(r) => assert_eq!(
                r.result,
                Err(XfsError::Moved {
                    to: "store2".into(),
                    epoch: 4
                })
            ),
            other => panic!("{other:?}"),
        }
    }
}
