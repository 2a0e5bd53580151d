//! base64url without padding (RFC 4648 §5), the encoding of subscription claims.
//!
//! The decoder is strict, so that one claim has exactly one spelling: padding, characters
//! outside the URL-safe alphabet, an impossible length (4n+1) and non-zero bits left over in
//! the last character are all refused.

use std::fmt;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Why a text is not base64url.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// A byte outside `A-Z a-z 0-9 - _` (padding `=` included), at this offset.
    BadCharacter(usize),
    /// A length of 4n+1 characters, which no byte string encodes to.
    BadLength,
    /// The last character carries bits beyond the data: another spelling of shorter input.
    TrailingBits,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadCharacter(at) => write!(f, "not a base64url character at offset {at}"),
            Self::BadLength => f.write_str("impossible base64url length"),
            Self::TrailingBits => f.write_str("non-zero trailing bits"),
        }
    }
}

impl std::error::Error for DecodeError {}

pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // 2, 3 or 4 characters for 1, 2 or 3 bytes.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

fn sextet(byte: u8) -> Option<u32> {
    let value = match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    };
    Some(u32::from(value))
}

pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let input = text.as_bytes();
    if input.len() % 4 == 1 {
        return Err(DecodeError::BadLength);
    }
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 2);
    for (index, chunk) in input.chunks(4).enumerate() {
        let mut n = 0u32;
        for (i, &byte) in chunk.iter().enumerate() {
            let value = sextet(byte).ok_or(DecodeError::BadCharacter(index * 4 + i))?;
            n |= value << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        // 2, 3 or 4 characters carry 1, 2 or 3 bytes; the bits after them must be zero.
        let carried = chunk.len() - 1;
        if bytes[1 + carried..].iter().any(|&b| b != 0) {
            return Err(DecodeError::TrailingBits);
        }
        out.extend_from_slice(&bytes[1..1 + carried]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4648_without_padding() {
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded).as_deref(), Ok(plain.as_bytes()));
        }
        // The URL-safe characters in place of + and /.
        assert_eq!(encode(&[0xfb, 0xff, 0xbf]), "-_-_");
        assert_eq!(decode("-_-_"), Ok(vec![0xfb, 0xff, 0xbf]));
    }

    #[test]
    fn round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..data.len() {
            assert_eq!(decode(&encode(&data[..len])).as_deref(), Ok(&data[..len]));
        }
    }

    #[test]
    fn is_strict() {
        assert_eq!(decode("Zg=="), Err(DecodeError::BadCharacter(2)));
        assert_eq!(decode("Zm8="), Err(DecodeError::BadCharacter(3)));
        assert_eq!(decode("Zm9v+w"), Err(DecodeError::BadCharacter(4)));
        assert_eq!(decode("Zm9v/w"), Err(DecodeError::BadCharacter(4)));
        assert_eq!(decode("Zm 9"), Err(DecodeError::BadCharacter(2)));
        assert_eq!(decode("Zm9vY"), Err(DecodeError::BadLength));
        // "Zh" and "Zm9": "Zg" and "Zm8" ("f" and "fo") with a non-zero bit past the data.
        assert_eq!(decode("Zh"), Err(DecodeError::TrailingBits));
        assert_eq!(decode("Zm9"), Err(DecodeError::TrailingBits));
        assert_eq!(decode("é"), Err(DecodeError::BadCharacter(0)));
    }
}
