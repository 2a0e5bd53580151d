//! The one WebSocket frame codec of the project (RFC 6455 §5), without I/O.
//!
//! The server builds its own frames here (final, unmasked); tungstenite decodes what clients
//! send, and [`FrameBoundary`] follows that input's frame boundaries from the headers alone.
//! Clients of our own (the load generator) build masked frames with [`masked`] and split what the
//! server sends with [`split_frames`].

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};

/// A frame encoded once and shared by history and every queue it goes to: one thread, so no
/// atomic counts; one heap block holds the two counts and the bytes (the pointer carries the
/// length, so a queue or history slot is 16 bytes).
pub type Shared = Rc<[u8]>;

/// Builds a frame of exactly `len` bytes in its one heap block; `write` fills all of it.
pub fn shared(len: usize, write: impl FnOnce(&mut [u8])) -> Shared {
    // `repeat_n` has an exact length, so `collect` allocates the block once (no `Vec` first).
    let mut frame: Shared = std::iter::repeat_n(0, len).collect();
    write(Rc::get_mut(&mut frame).expect("a block just allocated has no other owner"));
    frame
}

/// WebSocket opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Bytes of a frame header for a payload of `payload_len` (plus 4 for a mask).
pub fn header_len(payload_len: usize, masked: bool) -> usize {
    let base = match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

/// Writes the header of a final frame; `mask` sets the mask bit and key (client frames).
pub fn put_header(
    buf: &mut impl BufMut,
    opcode: Opcode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    buf.put_u8(0x80 | opcode as u8);
    match payload_len {
        0..=125 => buf.put_u8(mask_bit | payload_len as u8),
        126..=0xFFFF => {
            buf.put_u8(mask_bit | 126);
            buf.put_u16(payload_len as u16);
        }
        _ => {
            buf.put_u8(mask_bit | 127);
            buf.put_u64(payload_len as u64);
        }
    }
    if let Some(key) = mask {
        buf.put_slice(&key);
    }
}

/// Frames `payload` as one final, unmasked server frame.
pub fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(payload.len(), false) + payload.len());
    put_header(&mut buf, opcode, payload.len(), None);
    buf.put_slice(payload);
    buf.freeze()
}

/// Whether `bytes` is exactly one unmasked, final Pong frame (as a server sends it).
pub fn is_single_pong(bytes: &[u8]) -> bool {
    match bytes {
        [0x8a, len, payload @ ..] => usize::from(*len) == payload.len() && *len <= 125,
        _ => false,
    }
}

/// A close frame with `code` and a short `reason` (at most 123 bytes, as RFC 6455 requires of
/// a control frame's payload; longer reasons are cut at a character boundary).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Opcode::Close, &payload)
}

/// A final client frame, masked with `mask`.
pub fn masked(opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len(), true) + payload.len());
    put_header(&mut out, opcode, payload.len(), Some(mask));
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Calls `each(opcode, payload)` for every complete unmasked frame at the start of `buf`;
/// returns how many bytes those frames took (the rest is an incomplete frame).
pub fn split_frames(buf: &[u8], mut each: impl FnMut(u8, &[u8])) -> usize {
    let mut at = 0;
    while let Some(rest) = buf.get(at..) {
        let Some((header, len)) = payload_extent(rest) else {
            break;
        };
        let Some(payload) = rest.get(header..).and_then(|p| p.get(..len)) else {
            break;
        };
        each(rest[0] & 0x0f, payload);
        at += header + len;
    }
    at
}

/// The payload of the one complete unmasked frame at the start of `buf`.
pub fn first_payload(buf: &[u8]) -> Option<&[u8]> {
    let (header, len) = payload_extent(buf)?;
    buf.get(header..)?.get(..len)
}

/// Header length and payload length of an unmasked frame header at the start of `buf`.
fn payload_extent(buf: &[u8]) -> Option<(usize, usize)> {
    let second = *buf.get(1)?;
    Some(match second & 0x7f {
        126 => (
            4,
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
        ),
        127 => {
            let len = u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?);
            (10, usize::try_from(len).ok()?)
        }
        n => (2, usize::from(n)),
    })
}

/// Follows client frame boundaries in the raw input (headers only), so a session knows when
/// its frame decoder holds neither a partial frame nor a fragmented message. 16 bytes: a
/// header is collected only between payloads, so its bytes and a payload's count share room.
#[derive(Debug)]
pub struct FrameBoundary(Boundary);

#[derive(Debug)]
enum Boundary {
    /// Between frames or inside a header: the header so far, without its mask key (which
    /// only the decoder needs). `fragmented`: a fragmented message is under way.
    Header {
        bytes: [u8; 10],
        have: u8,
        fragmented: bool,
    },
    /// Inside a payload: the bytes still to come.
    Payload { left: u64, fragmented: bool },
}

impl Default for FrameBoundary {
    fn default() -> Self {
        FrameBoundary(Boundary::between(false))
    }
}

impl Boundary {
    fn between(fragmented: bool) -> Self {
        Boundary::Header {
            bytes: [0; 10],
            have: 0,
            fragmented,
        }
    }

    /// The state after the complete header `bytes` (control frames change nothing about a
    /// fragmented message; data frames open or close one).
    fn after_header(bytes: &[u8; 10], fragmented: bool) -> Self {
        let (first, second) = (bytes[0], bytes[1]);
        let fragmented = if first & 0x0f < 8 {
            first & 0x80 == 0
        } else {
            fragmented
        };
        let left = match second & 0x7f {
            126 => u64::from(u16::from_be_bytes([bytes[2], bytes[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&bytes[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        };
        if left == 0 {
            Boundary::between(fragmented)
        } else {
            Boundary::Payload { left, fragmented }
        }
    }
}

/// The bytes of a client frame header whose second byte is `second`.
fn client_header_len(second: u8) -> usize {
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + extended + if second & 0x80 != 0 { 4 } else { 0 }
}

impl FrameBoundary {
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() {
            match &mut self.0 {
                Boundary::Payload { left, fragmented } => {
                    let n = (*left).min(input.len() as u64);
                    *left -= n;
                    input = &input[n as usize..];
                    if *left == 0 {
                        self.0 = Boundary::between(*fragmented);
                    }
                }
                Boundary::Header {
                    bytes,
                    have,
                    fragmented,
                } => {
                    let Some((&byte, rest)) = input.split_first() else {
                        return;
                    };
                    if let Some(slot) = bytes.get_mut(usize::from(*have)) {
                        *slot = byte;
                    }
                    *have += 1;
                    input = rest;
                    if *have >= 2 && usize::from(*have) == client_header_len(bytes[1]) {
                        self.0 = Boundary::after_header(bytes, *fragmented);
                    }
                }
            }
        }
    }

    /// No partial frame and no fragmented message is under way.
    pub fn is_clean(&self) -> bool {
        matches!(
            self.0,
            Boundary::Header {
                have: 0,
                fragmented: false,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let opcode = match first & 0x0f {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            9 => Opcode::Ping,
            _ => Opcode::Close,
        };
        let mut f = masked(opcode, payload, [1, 2, 3, 4]);
        f[0] = first;
        f
    }

    #[test]
    fn frame_boundaries_byte_by_byte() {
        // text(FIN), then a fragmented text with a ping in between, then a 300-byte binary.
        let frames = [
            (client_frame(0x81, b"hello"), true),
            (client_frame(0x01, b"part"), false),
            (client_frame(0x89, b"ping"), false),
            (client_frame(0x80, b"end"), true),
            (client_frame(0x82, &[7u8; 300]), true),
            (client_frame(0x89, b""), true),
            (client_frame(0x02, b""), false),
            (client_frame(0x80, &[1u8; 70_000]), true),
        ];
        let mut b = FrameBoundary::default();
        for (bytes, clean_after) in &frames {
            for (i, byte) in bytes.iter().enumerate() {
                b.feed(&[*byte]);
                if i + 1 < bytes.len() {
                    assert!(!b.is_clean(), "clean in the middle of a frame");
                }
            }
            assert_eq!(b.is_clean(), *clean_after);
        }
        let all: Vec<u8> = frames.iter().flat_map(|(f, _)| f.clone()).collect();
        let mut whole = FrameBoundary::default();
        whole.feed(&all);
        assert!(whole.is_clean());
    }

    #[test]
    fn a_boundary_and_a_shared_frame_are_small() {
        assert_eq!(size_of::<FrameBoundary>(), 16);
        assert_eq!(size_of::<Shared>(), 16);
        let built = shared(5, |bytes| bytes.copy_from_slice(b"hello"));
        assert_eq!(&built[..], b"hello");
    }

    #[test]
    fn server_frames_split_back_at_every_length_boundary() {
        let mut stream = Vec::new();
        let sizes = [0usize, 125, 126, 65_535, 65_536];
        for &n in &sizes {
            stream.extend_from_slice(&frame(Opcode::Text, &vec![b'x'; n]));
        }
        for cut in [0, 1, 3, 200, stream.len() - 1, stream.len()] {
            let mut seen = Vec::new();
            let used = split_frames(&stream[..cut], |op, p| seen.push((op, p.len())));
            let whole: usize = seen.iter().map(|(_, n)| header_len(*n, false) + n).sum();
            assert_eq!(used, whole, "cut {cut}");
            assert!(seen.iter().all(|&(op, _)| op == 1));
        }
        let mut lens = Vec::new();
        split_frames(&stream, |_, p| lens.push(p.len()));
        assert_eq!(lens, sizes);
    }

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        let f = masked(Opcode::Text, b"hello", [9, 8, 7, 6]);
        assert_eq!(&f[..2], &[0x81, 0x85]);
        let unmasked: Vec<u8> = f[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ f[2 + i % 4])
            .collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn close_frames_fit_a_control_frame() {
        assert_eq!(&close_frame(1013, "full")[..], b"\x88\x06\x03\xf5full");
        // A long reason is cut to 123 bytes, never inside a character.
        let long = close_frame(1000, &"é".repeat(100));
        assert_eq!(long[1], 2 + 122);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }
}
