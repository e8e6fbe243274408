//! The one bincode codec: what frames carry, what the stores and the index keep on disk
//! (`crc32 | bincode` records) and what Raft's messages are wrapped in.
//!
//! Decoding never trusts a length inside the bytes: bincode is given a memory limit of sixteen
//! times the input's length (rounded up to a power of two), so a string or byte field claiming
//! 2^62 bytes is a [`CodecError::Decode`] before anything is allocated. A well-formed value never
//! claims more: bincode counts each integer at its size in memory (at most 16 bytes, from at
//! least one byte of input) and each string or byte buffer at its length (all of it in the
//! input); with serde, sequences grow as their elements arrive instead of preallocating.

use serde::{de::DeserializeOwned, Serialize};

/// Why bytes could not be turned into a value, or a value into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("undecodable: {0}")]
    Decode(String),
    #[error("unencodable: {0}")]
    Encode(String),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("record of {0} bytes is shorter than its checksum")]
    Truncated(usize),
}

fn standard() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// bincode of `value`, appended to `buf`.
pub fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    bincode::serde::encode_into_std_write(value, buf, standard())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// bincode of `value`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Decode exactly one value filling all of `bytes`, claiming at most about `bytes.len()` bytes
/// of memory for the strings and buffers inside it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used) = decode_limited(bytes)?;
    if used != bytes.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the value",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// bincode's limit is a type parameter: pick the smallest power of two at or above sixteen times
/// the input's length (at least 1 KiB; up to 64 GiB, beyond any frame or record we accept).
fn decode_limited<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize), CodecError> {
    macro_rules! with_limit {
        ($($bits:literal)*) => {{
            let need = bytes.len().max(64).saturating_mul(16).next_power_of_two();
            $(
                if need <= 1usize << $bits {
                    return bincode::serde::decode_from_slice(
                        bytes,
                        standard().with_limit::<{ 1usize << $bits }>(),
                    )
                    .map_err(|e| CodecError::Decode(e.to_string()));
                }
            )*
            Err(CodecError::Decode(format!("{} bytes is beyond any value we decode", bytes.len())))
        }};
    }
    with_limit!(10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36)
}

/// `crc32 | bincode(value)`: a record as the stores and the index keep it on disk.
pub fn encode_record<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut buf = vec![0u8; 4];
    encode_into(value, &mut buf)?;
    let crc = crc32fast::hash(&buf[4..]);
    buf[..4].copy_from_slice(&crc.to_be_bytes());
    Ok(buf)
}

/// The payload of a `crc32 | payload` value once its checksum holds.
pub fn checked(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < 4 {
        return Err(CodecError::Truncated(bytes.len()));
    }
    let (head, payload) = bytes.split_at(4);
    let stored = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let computed = crc32fast::hash(payload);
    if stored != computed {
        return Err(CodecError::BadChecksum { stored, computed });
    }
    Ok(payload)
}

/// Check a record's crc, then decode it; a mismatch is an error, never data.
pub fn decode_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode(checked(bytes)?)
}

impl CodecError {
    /// Whether the bytes failed their checksum (as opposed to failing to parse).
    pub fn is_checksum(&self) -> bool {
        matches!(
            self,
            CodecError::BadChecksum { .. } | CodecError::Truncated(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        name: String,
        body: Vec<u8>,
        ids: Vec<u64>,
    }

    fn sample() -> Rec {
        Rec {
            name: "Привет, 世界 👋".into(),
            body: vec![7; 1000],
            ids: (0..300).collect(),
        }
    }

    #[test]
    fn values_and_records_round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode::<Rec>(&bytes).unwrap(), sample());
        let rec = encode_record(&sample()).unwrap();
        assert_eq!(decode_record::<Rec>(&rec).unwrap(), sample());
    }

    #[test]
    fn a_string_claiming_2_pow_62_bytes_is_refused_before_allocating() {
        // A varint length of 2^62 (0xfd marks a u64), then a few bytes: a 2^62-byte string.
        let mut bytes = vec![0xfd];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        bytes.extend_from_slice(b"xyz");
        let err = decode::<String>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        let err = decode::<Vec<u8>>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
        // Inside a struct, after a good field, the same.
        let mut bytes = encode(&"ok".to_string()).unwrap();
        bytes.push(0xfd);
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let err = decode::<Rec>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::Decode(_)), "{err}");
    }

    #[test]
    fn a_length_just_past_the_input_is_refused() {
        let mut bytes = encode(&"abc".to_string()).unwrap();
        bytes[0] = 100; // claims 100 bytes, has 3
        assert!(decode::<String>(&bytes).is_err());
    }

    #[test]
    fn a_sequence_claiming_many_elements_fails_without_allocating_them() {
        let mut bytes = vec![0xfd];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bytes.push(1);
        assert!(decode::<Vec<u64>>(&bytes).is_err());
    }

    #[test]
    fn trailing_bytes_and_bad_crcs_are_errors() {
        let mut bytes = encode(&5u32).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u32>(&bytes), Err(CodecError::Decode(_))));
        let mut rec = encode_record(&sample()).unwrap();
        let last = rec.len() - 1;
        rec[last] ^= 1;
        let err = decode_record::<Rec>(&rec).unwrap_err();
        assert!(err.is_checksum(), "{err}");
        assert_eq!(
            decode_record::<Rec>(&[1, 2]).unwrap_err(),
            CodecError::Truncated(2)
        );
    }
}
