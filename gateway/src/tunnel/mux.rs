//! yamux over one TLS connection: the stream multiplexer of TCP+TLS tunnels.
//!
//! Wire format: the yamux specification (`spec.md` of hashicorp/yamux). Every frame starts with
//! a 12-byte big-endian header, `version (u8, 0) | type (u8) | flags (u16) | stream id (u32) |
//! length (u32)`; types are Data (length = payload bytes that follow), Window Update (length =
//! window increment), Ping (length = opaque value) and Go Away (length = error code); flags
//! are SYN, ACK, FIN and RST. The dialling side opens odd stream ids, the accepting side even
//! ones. Each direction of a stream starts with a 256 KiB window; both ends raise it to
//! [`STREAM_WINDOW`] with the first frame they send on a stream.
//!
//! One addition to the specification, as HTTP/2's connection window (RFC 9113 §6.9): a
//! **session window** of [`SESSION_WINDOW`] bytes in each direction. Every data frame counts
//! against it as well as against its stream's window, and a Window Update on stream 0 (no
//! flags) raises it once the receiving end's readers have taken (or it has discarded) half of
//! it. What a peer can make this end buffer is bounded per session, however many streams it
//! opens, as a QUIC connection's receive window bounds it there.
//! One stream moves at most [`STREAM_WINDOW`] per round trip (8 MiB: about 670 Mbit/s at
//! 100 ms); data for a stream whose reader is gone is discarded and its windows given back.
//!
//! Built for the tunnel's traffic rather than as a general library:
//!
//! - **No session task in the write path.** A stream writes its frame into the TLS connection
//!   (one copy, encrypted in place) and on to the socket itself, under the session's lock. The
//!   session's driver only reads, and writes what the socket refused earlier once it is
//!   writable again.
//! - **Turns while the link is busy.** A writer goes at once while the bytes queued for the
//!   socket stay under [`QUEUE_LIMIT`] and no stream of its priority class or above waits;
//!   otherwise it waits for a turn ([`sched`]): one frame of at most [`SHARED_FRAME`] bytes
//!   per turn, highest class first, round-robin within a class, and lower classes are never
//!   starved. The socket itself holds at most [`NOTSENT_LOWAT`] unsent bytes.
//! - **A new stream costs one frame each way.** Opening sends nothing; the first write carries
//!   the SYN with the window update and the data in one TLS record (the tunnel header), and
//!   the far end's first write carries the ACK with its answer and the node's first bytes (a
//!   stream that only reads sends it once it has taken half the initial window). A stream's
//!   last bytes can carry its FIN ([`MuxWriter::poll_write_fin`]).
//! - **Big reads.** The driver reads 256 KiB from the socket at a time and feeds rustls from
//!   memory (rustls alone reads 4 KiB per system call); received data is copied once out of
//!   rustls and then handed on in slices of that buffer until the reader takes it
//!   ([`MuxReader::poll_chunks`]).
//!
//! Layout, as quinn-proto beside quinn: [`frame`] is the codec; `session` the state machine,
//! which takes the peer's frames and the streams' calls and returns the frames to send, with no
//! socket or TLS (unit tested so); `io` the shell that owns rustls and the socket, and the
//! [`Driver`]; [`sched`] the turns.
//!
//! Limits: a data frame over [`MAX_RECV_FRAME`] bytes, data beyond a stream's window or the
//! session's, a SYN for a stream id in use or of the wrong parity, a stream frame on stream 0
//! other than a session window update, and an unknown version or frame type are protocol
//! errors that end the session, as does a peer that keeps sending while it reads nothing
//! ([`MAX_QUEUED`] bytes queued for it). Inbound streams beyond `max_streams`, or beyond
//! [`ACCEPT_BACKLOG`] not yet accepted, are refused with RST. A session that receives nothing
//! for [`Config::idle_timeout`] ends; it sends a ping every [`Config::keep_alive`].

mod config;
pub mod frame;
mod io;
pub mod sched;
mod session;

pub use config::{
    ACCEPT_BACKLOG, Config, INITIAL_WINDOW, MAX_FRAME, MAX_QUEUED, NOTSENT_LOWAT, QUEUE_LIMIT,
    Role, SESSION_WINDOW, SHARED_FRAME, STREAM_WINDOW,
};
pub use frame::{FrameError, FrameReader, HEADER_LEN, Header, Kind, MAX_RECV_FRAME, Piece, flag};
pub use io::{Driver, Mux, MuxReader, MuxWriter, session};

pub use crate::listener::EndWhen;

#[cfg(test)]
pub(super) mod tests;
