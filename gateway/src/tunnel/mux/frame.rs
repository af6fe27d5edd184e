//! The yamux frame codec: 12-byte headers and an incremental decoder that hands a data
//! frame's payload on as it arrives.

use bytes::{Buf as _, Bytes, BytesMut};

/// Length of a frame header.
pub const HEADER_LEN: usize = 12;
/// Largest data frame accepted.
pub const MAX_RECV_FRAME: u32 = 1024 * 1024;

/// Frame flags (yamux spec: "Flag Field").
pub mod flag {
    /// Opens a stream.
    pub const SYN: u16 = 0x1;
    /// Acknowledges a stream's opening.
    pub const ACK: u16 = 0x2;
    /// Half-closes a stream: the sender sends no more.
    pub const FIN: u16 = 0x4;
    /// Resets a stream at once.
    pub const RST: u16 = 0x8;
}

/// Frame types (yamux spec: "Type Field").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Stream data; the length is the payload's.
    Data = 0,
    /// Raises a stream's send window by the length.
    WindowUpdate = 1,
    /// Liveness; the length is an opaque value echoed back with ACK.
    Ping = 2,
    /// The session is ending; the length is an error code.
    GoAway = 3,
}

/// Go Away codes (yamux spec).
pub(super) const GO_AWAY_NORMAL: u32 = 0;
pub(super) const GO_AWAY_PROTOCOL: u32 = 1;

/// One frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame type.
    pub kind: Kind,
    /// [`flag`] bits.
    pub flags: u16,
    /// Stream id; 0 for Ping and Go Away.
    pub stream: u32,
    /// Payload length, window increment, ping value or error code, by type.
    pub length: u32,
}

/// A frame that breaks the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Only version 0 exists.
    #[error("yamux version {0} (only 0 is known)")]
    Version(u8),
    /// Not one of the four frame types.
    #[error("unknown yamux frame type {0}")]
    Type(u8),
    /// A data frame longer than [`MAX_RECV_FRAME`].
    #[error("yamux data frame of {0} bytes (at most {MAX_RECV_FRAME})")]
    TooLong(u32),
}

impl Header {
    /// The 12 bytes on the wire.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[1] = self.kind as u8;
        b[2..4].copy_from_slice(&self.flags.to_be_bytes());
        b[4..8].copy_from_slice(&self.stream.to_be_bytes());
        b[8..12].copy_from_slice(&self.length.to_be_bytes());
        b
    }

    /// Reads a header from the start of `b`: `Ok(None)` while fewer than 12 bytes are there.
    pub fn decode(b: &[u8]) -> Result<Option<Header>, FrameError> {
        let Some(b) = b.get(..HEADER_LEN) else {
            return Ok(None);
        };
        if b[0] != 0 {
            return Err(FrameError::Version(b[0]));
        }
        let kind = match b[1] {
            0 => Kind::Data,
            1 => Kind::WindowUpdate,
            2 => Kind::Ping,
            3 => Kind::GoAway,
            t => return Err(FrameError::Type(t)),
        };
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let header = Header {
            kind,
            flags: u16::from_be_bytes([b[2], b[3]]),
            stream: word(4),
            length: word(8),
        };
        if kind == Kind::Data && header.length > MAX_RECV_FRAME {
            return Err(FrameError::TooLong(header.length));
        }
        Ok(Some(header))
    }

    pub(super) fn new(kind: Kind, flags: u16, stream: u32, length: u32) -> Self {
        Header {
            kind,
            flags,
            stream,
            length,
        }
    }
}

/// What [`FrameReader::next`] takes off the front of the decrypted bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// A frame header. Window Update, Ping and Go Away frames are whole with it; a data
    /// frame's payload follows as [`Piece::Body`] pieces and ends with [`Piece::End`].
    Header(Header),
    /// The next part of the current data frame's payload on stream `.0` (never empty; split
    /// off the buffer without a copy).
    Body(u32, Bytes),
    /// The current data frame's payload is complete (also after an empty one); its flags
    /// (FIN, RST) take effect now.
    End(Header),
}

/// Incremental yamux frame decoder. A data frame's payload is handed on as it arrives, so a
/// frame that spans socket reads (a full [`MAX_FRAME`] does most of the time) is never held
/// back in the buffer, which would then have to be copied whenever the buffer grows.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The data frame whose payload is being read, and how many of its bytes are still due.
    body: Option<(Header, u32)>,
}

impl FrameReader {
    /// Takes the next piece off the front of `buf`: `Ok(None)` when `buf` holds less than a
    /// header (it is left in place) or is empty in the middle of a payload.
    ///
    /// # Errors
    ///
    /// A header that breaks the protocol ([`FrameError`]); the session ends there.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Piece>, FrameError> {
        if let Some((h, due)) = &mut self.body {
            if *due == 0 {
                let h = *h;
                self.body = None;
                return Ok(Some(Piece::End(h)));
            }
            if buf.is_empty() {
                return Ok(None);
            }
            // `due` ≤ MAX_RECV_FRAME, so both conversions are lossless
            let n = buf.len().min(*due as usize);
            *due -= n as u32;
            return Ok(Some(Piece::Body(h.stream, buf.split_to(n).freeze())));
        }
        let Some(h) = Header::decode(buf)? else {
            return Ok(None);
        };
        buf.advance(HEADER_LEN);
        if h.kind == Kind::Data {
            self.body = Some((h, h.length));
        }
        Ok(Some(Piece::Header(h)))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_bad_ones_are_refused() {
        let h = Header::new(Kind::WindowUpdate, flag::SYN | flag::FIN, 7, 65_536);
        let b = h.encode();
        assert_eq!(b, [0, 1, 0, 5, 0, 0, 0, 7, 0, 1, 0, 0]);
        assert_eq!(Header::decode(&b), Ok(Some(h)));
        assert_eq!(Header::decode(&b[..11]), Ok(None));
        let mut bad = b;
        bad[0] = 1;
        assert_eq!(Header::decode(&bad), Err(FrameError::Version(1)));
        bad = b;
        bad[1] = 4;
        assert_eq!(Header::decode(&bad), Err(FrameError::Type(4)));
        let long = Header::new(Kind::Data, 0, 1, MAX_RECV_FRAME + 1).encode();
        assert_eq!(
            Header::decode(&long),
            Err(FrameError::TooLong(MAX_RECV_FRAME + 1))
        );
    }

    /// The whole frames in `buf` (payload pieces joined), up to the first incomplete one.
    pub(in crate::tunnel::mux) fn whole_frames(buf: &mut BytesMut) -> Vec<(Header, Vec<u8>)> {
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        let mut body = Vec::new();
        while let Ok(Some(piece)) = reader.next(buf) {
            match piece {
                Piece::Header(h) if h.kind != Kind::Data => out.push((h, Vec::new())),
                Piece::Header(_) => {}
                Piece::Body(_, b) => body.extend_from_slice(&b),
                Piece::End(h) => out.push((h, std::mem::take(&mut body))),
            }
        }
        out
    }

    #[test]
    fn a_data_frame_is_handed_on_as_its_payload_arrives() {
        let mut reader = FrameReader::default();
        let mut buf = BytesMut::new();
        let data = Header::new(Kind::Data, flag::FIN, 3, 5);
        buf.extend_from_slice(&data.encode()[..7]);
        assert_eq!(reader.next(&mut buf), Ok(None));
        assert_eq!(buf.len(), 7, "a partial header stays put");
        buf.extend_from_slice(&data.encode()[7..]);
        buf.extend_from_slice(b"hel");
        assert_eq!(reader.next(&mut buf), Ok(Some(Piece::Header(data))));
        assert_eq!(
            reader.next(&mut buf),
            Ok(Some(Piece::Body(3, Bytes::from_static(b"hel"))))
        );
        assert_eq!(reader.next(&mut buf), Ok(None), "the rest has not arrived");
        buf.extend_from_slice(b"lo");
        buf.extend_from_slice(&Header::new(Kind::Ping, flag::SYN, 0, 9).encode());
        assert_eq!(
            reader.next(&mut buf),
            Ok(Some(Piece::Body(3, Bytes::from_static(b"lo")))),
            "a body piece stops at the frame's end"
        );
        assert_eq!(reader.next(&mut buf), Ok(Some(Piece::End(data))));
        assert_eq!(
            reader.next(&mut buf),
            Ok(Some(Piece::Header(Header::new(
                Kind::Ping,
                flag::SYN,
                0,
                9
            ))))
        );
        assert!(buf.is_empty());
        assert_eq!(reader.next(&mut buf), Ok(None));

        // an empty data frame still ends, and the next header follows it
        let empty = Header::new(Kind::Data, flag::RST, 5, 0);
        buf.extend_from_slice(&empty.encode());
        buf.extend_from_slice(&Header::new(Kind::GoAway, 0, 0, 0).encode());
        let frames = whole_frames(&mut buf);
        assert_eq!(
            frames,
            vec![
                (empty, Vec::new()),
                (Header::new(Kind::GoAway, 0, 0, 0), Vec::new())
            ]
        );
    }

    #[test]
    fn a_header_that_breaks_the_protocol_is_an_error_where_it_starts() {
        let mut reader = FrameReader::default();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&Header::new(Kind::Data, 0, 1, 2).encode());
        buf.extend_from_slice(b"ok");
        buf.extend_from_slice(&Header::new(Kind::Data, 0, 1, MAX_RECV_FRAME + 1).encode());
        assert!(matches!(reader.next(&mut buf), Ok(Some(Piece::Header(_)))));
        assert!(matches!(reader.next(&mut buf), Ok(Some(Piece::Body(1, _)))));
        assert!(matches!(reader.next(&mut buf), Ok(Some(Piece::End(_)))));
        assert_eq!(
            reader.next(&mut buf),
            Err(FrameError::TooLong(MAX_RECV_FRAME + 1))
        );
    }
}
