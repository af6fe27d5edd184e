//! The tunnel stream header: the first bytes of every proxied connection on a tunnel stream,
//! and the far gateway's one-byte answer. The codec is IO-free: it works on byte slices, so it
//! can be fuzzed and reused by every transport; [`read_request`] and [`refuse`] are its thin
//! async edge at the far end, over any byte stream.
//!
//! Request (caller → far gateway), [`MAX_REQUEST_LEN`] bytes at most:
//!
//! ```text
//! +---------+---------+-----------+----------+-----------+----------+-------------+
//! | version | org len | org bytes | node len | node bytes| port len | port bytes  |
//! |  u8 = 1 |   u8    |  1..=63   |    u8    |  1..=63   |    u8    |  1..=16     |
//! +---------+---------+-----------+----------+-----------+----------+-------------+
//! ```
//!
//! `org` and `node` are DNS labels (lower-case letters, digits, `-`, not starting or ending
//! with `-`), as in `node1.org2.<domain>`; `port` is a port name (`p2p`, `raft`, `tessera` or
//! a node's named service such as `peer` or `cluster`).
//! The header names a node, never an address: the far gateway maps the name to an address its
//! own operator registered, so a caller cannot make it dial anything else.
//!
//! Answer (far gateway → caller): two bytes, `version` then a [`Answer`] code. Bytes of the
//! proxied connection follow an `Accepted` answer; any other answer is followed by the end of
//! the stream. A caller may send connection bytes right after its request, before the answer
//! (they are forwarded if the stream is accepted and dropped otherwise), and must not wait
//! for an `Accepted` answer before sending more: fedgw sends it with the node's first bytes,
//! or with the end of the stream if the node sends none. A refusal comes at once.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The header version this build speaks.
pub const VERSION: u8 = 1;
/// Longest org or node name (one DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Longest port name.
pub const MAX_PORT_LEN: usize = 16;
/// Longest valid request: version, three length bytes and the three fields at their maximum.
pub const MAX_REQUEST_LEN: usize = 4 + 2 * MAX_NAME_LEN + MAX_PORT_LEN;
/// Length of an answer.
pub const ANSWER_LEN: usize = 2;

/// A stream request: which node, and which of its ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Request {
    /// The org that announced the node (the far gateway's own org).
    pub org: String,
    /// The node's name within its org.
    pub node: String,
    /// The port name: `p2p`, `raft` or `tessera`.
    pub port: String,
}

/// Why bytes are not a valid request or answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The first byte is a version this build does not speak.
    #[error("unsupported tunnel header version {0}")]
    Version(u8),
    /// A field is empty, too long, or not a DNS label / port name.
    #[error("invalid {0} in tunnel header")]
    Field(&'static str),
    /// The answer code is unknown.
    #[error("unknown tunnel answer code {0}")]
    AnswerCode(u8),
}

/// The far gateway's answer to a [`Request`]. The code values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Answer {
    /// The stream is connected to the node; connection bytes follow.
    Accepted = 0,
    /// The request header could not be read (garbage, truncated, oversized, or a version the
    /// far gateway does not speak).
    BadHeader = 1,
    /// The caller's org is not an admitted, unrevoked member.
    NotMember = 2,
    /// No such node announced by the far gateway's own org at its site.
    UnknownNode = 3,
    /// The node has no port by that name.
    UnknownPort = 4,
    /// The node's access policy does not list the caller's org.
    PolicyDenied = 5,
    /// The node's registered address is one the gateway never dials (loopback unless allowed,
    /// the gateway's own listeners, unspecified, multicast).
    ForbiddenTarget = 6,
    /// The node did not accept the connection.
    Unreachable = 7,
    /// The far gateway is at its limit of proxied connections.
    Overloaded = 8,
}

impl Answer {
    /// Every answer, in code order.
    pub const ALL: [Answer; 9] = [
        Answer::Accepted,
        Answer::BadHeader,
        Answer::NotMember,
        Answer::UnknownNode,
        Answer::UnknownPort,
        Answer::PolicyDenied,
        Answer::ForbiddenTarget,
        Answer::Unreachable,
        Answer::Overloaded,
    ];

    /// A stable, low-cardinality label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Answer::Accepted => "accepted",
            Answer::BadHeader => "bad_header",
            Answer::NotMember => "not_member",
            Answer::UnknownNode => "unknown_node",
            Answer::UnknownPort => "unknown_port",
            Answer::PolicyDenied => "policy_denied",
            Answer::ForbiddenTarget => "forbidden_target",
            Answer::Unreachable => "unreachable",
            Answer::Overloaded => "overloaded",
        }
    }

    /// Encodes the answer: `[VERSION, code]`.
    pub fn encode(self) -> [u8; ANSWER_LEN] {
        [VERSION, self as u8]
    }

    /// Decodes a two-byte answer.
    pub fn decode(bytes: [u8; ANSWER_LEN]) -> Result<Answer, HeaderError> {
        if bytes[0] != VERSION {
            return Err(HeaderError::Version(bytes[0]));
        }
        Answer::ALL
            .get(usize::from(bytes[1]))
            .copied()
            .ok_or(HeaderError::AnswerCode(bytes[1]))
    }
}

impl crate::metrics::Label for Answer {
    fn label(self) -> &'static str {
        Answer::label(self)
    }
}

/// The outcome of decoding a request from the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// More bytes are needed; at most `MAX_REQUEST_LEN` in all.
    Incomplete,
    /// A request, and how many bytes of the input it used (the rest is connection data).
    Complete(Request, usize),
}

/// True for a DNS label: 1..=63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A port name: `p2p`, `raft`, `tessera` or a named service (lowercase letters and digits,
/// inner hyphens as in SRV service names, starting with a letter).
fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PORT_LEN
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl Request {
    /// Builds a request, checking every field.
    pub fn new(org: &str, node: &str, port: &str) -> Result<Request, HeaderError> {
        if !is_label(org) {
            return Err(HeaderError::Field("org"));
        }
        if !is_label(node) {
            return Err(HeaderError::Field("node"));
        }
        if !is_port_name(port) {
            return Err(HeaderError::Field("port"));
        }
        Ok(Request {
            org: org.to_owned(),
            node: node.to_owned(),
            port: port.to_owned(),
        })
    }

    /// Encodes the request (fields were checked by [`Request::new`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.org.len() + self.node.len() + self.port.len());
        out.push(VERSION);
        for field in [&self.org, &self.node, &self.port] {
            // lengths fit: fields are checked on construction and decode
            out.push(u8::try_from(field.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(field.as_bytes());
        }
        out
    }

    /// Decodes a request from the start of `buf`. Errors as soon as the bytes cannot become a
    /// valid request (so a caller never needs to buffer more than [`MAX_REQUEST_LEN`]).
    pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
        let Some(&version) = buf.first() else {
            return Ok(Decoded::Incomplete);
        };
        if version != VERSION {
            return Err(HeaderError::Version(version));
        }
        let mut at = 1;
        let mut fields = [""; 3];
        for (i, (name, max)) in [
            ("org", MAX_NAME_LEN),
            ("node", MAX_NAME_LEN),
            ("port", MAX_PORT_LEN),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(&len) = buf.get(at) else {
                return Ok(Decoded::Incomplete);
            };
            let len = usize::from(len);
            if len == 0 || len > max {
                return Err(HeaderError::Field(name));
            }
            let Some(bytes) = buf.get(at + 1..at + 1 + len) else {
                // check what has arrived so far, so garbage fails early
                let partial = &buf[at + 1..];
                if !partial
                    .iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                {
                    return Err(HeaderError::Field(name));
                }
                return Ok(Decoded::Incomplete);
            };
            fields[i] = std::str::from_utf8(bytes).map_err(|_| HeaderError::Field(name))?;
            at += 1 + len;
        }
        let request = Request::new(fields[0], fields[1], fields[2])?;
        Ok(Decoded::Complete(request, at))
    }
}

/// Most bytes a new connection's first read takes to send along with the tunnel header.
pub const EARLY_READ: usize = 16 * 1024;

/// Writes the answer to a stream the far gateway refuses, then ends it (FIN). A stream that
/// fails meanwhile is gone already: there is nobody left to tell.
pub async fn refuse<W>(w: &mut W, answer: Answer)
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let _ = w.write_all(&answer.encode()).await;
    let _ = w.shutdown().await;
}

/// Reads a request header from the start of a stream: returns the request and the connection
/// bytes that came with it (what the caller sent along, up to [`EARLY_READ`]), or the answer
/// to refuse with. The buffer is not zeroed first, and the bytes come back in a buffer of
/// their own size, so a burst of new streams waiting on their dials does not hold (and touch)
/// a header buffer of 20 KiB each.
pub async fn read_request<R>(r: &mut R) -> Result<(Request, Vec<u8>), Answer>
where
    R: AsyncRead + Unpin + ?Sized,
{
    use bytes::BufMut as _;
    let room = MAX_REQUEST_LEN + EARLY_READ;
    let mut buf = Vec::with_capacity(room);
    loop {
        let left = room - buf.len();
        let n = r
            .read_buf(&mut (&mut buf).limit(left))
            .await
            .map_err(|_| Answer::BadHeader)?;
        if n == 0 {
            return Err(Answer::BadHeader);
        }
        match Request::decode(&buf) {
            Ok(Decoded::Complete(req, used)) => {
                buf.drain(..used);
                buf.shrink_to_fit();
                return Ok((req, buf));
            }
            Ok(Decoded::Incomplete) if buf.len() < MAX_REQUEST_LEN => continue,
            Ok(Decoded::Incomplete) | Err(_) => return Err(Answer::BadHeader),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_reports_its_length() {
        let r = Request::new("org2", "node1", "p2p").expect("valid");
        let mut bytes = r.encode();
        assert_eq!(bytes.len(), 1 + 1 + 4 + 1 + 5 + 1 + 3);
        let used = bytes.len();
        bytes.extend_from_slice(b"connection data");
        assert_eq!(Request::decode(&bytes), Ok(Decoded::Complete(r, used)));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let bytes = Request::new("org-2", "n", "tessera")
            .expect("valid")
            .encode();
        for end in 0..bytes.len() {
            assert_eq!(
                Request::decode(&bytes[..end]),
                Ok(Decoded::Incomplete),
                "{end}"
            );
        }
    }

    #[test]
    fn longest_request_fits_the_bound() {
        let long = "a".repeat(MAX_NAME_LEN);
        let r = Request::new(&long, &long, &"p".repeat(MAX_PORT_LEN)).expect("valid");
        assert_eq!(r.encode().len(), MAX_REQUEST_LEN);
    }

    #[test]
    fn garbage_is_refused_early() {
        assert_eq!(
            Request::decode(b"GET / HTTP/1.1"),
            Err(HeaderError::Version(b'G'))
        );
        assert_eq!(Request::decode(&[1, 0]), Err(HeaderError::Field("org")));
        assert_eq!(Request::decode(&[1, 64]), Err(HeaderError::Field("org")));
        assert_eq!(
            Request::decode(&[1, 4, b'O']),
            Err(HeaderError::Field("org"))
        );
        assert_eq!(
            Request::decode(&[1, 1, b'a', 1, b'b', 17]),
            Err(HeaderError::Field("port"))
        );
        assert_eq!(
            Request::decode(&[1, 1, b'-', 1, b'b', 1, b'p']),
            Err(HeaderError::Field("org"))
        );
        assert_eq!(
            Request::decode(&[1, 1, b'a', 1, b'b', 1, b'9']),
            Err(HeaderError::Field("port"))
        );
        assert_eq!(
            Request::decode(&[1, 1, b'a', 1, b'b', 1, b'-']),
            Err(HeaderError::Field("port"))
        );
        assert_eq!(Request::decode(&[2]), Err(HeaderError::Version(2)));
    }

    #[test]
    fn constructor_checks_fields() {
        assert!(Request::new("Org2", "node1", "p2p").is_err());
        assert!(Request::new("org2", "node.1", "p2p").is_err());
        assert!(Request::new("org2", "node1", "").is_err());
        assert!(Request::new("org2", "node1", "2p").is_err());
        assert!(Request::new("org2", "node1", "p2p").is_ok());
    }

    #[test]
    fn answers_round_trip() {
        for a in Answer::ALL {
            assert_eq!(Answer::decode(a.encode()), Ok(a));
        }
        assert_eq!(
            Answer::decode([VERSION, 200]),
            Err(HeaderError::AnswerCode(200))
        );
        assert_eq!(Answer::decode([9, 0]), Err(HeaderError::Version(9)));
    }

    #[tokio::test]
    async fn a_request_comes_back_with_its_early_bytes_in_a_buffer_of_their_size() {
        let req = Request::new("org1", "node1", "p2p").expect("request");
        let mut stream = req.encode();
        stream.extend_from_slice(b"hello");
        let (got, early) = read_request(&mut &stream[..]).await.expect("a request");
        assert_eq!(got, req);
        assert_eq!(early, b"hello");
        // not the header buffer's 16 KiB of room for early bytes
        assert_eq!(early.capacity(), early.len());
    }
}
