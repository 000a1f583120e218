//! websockify: a WebSocket-to-TCP bridge, a drop-in replacement for the Python websockify of
//! the noVNC project.
//!
//! # One connection, from accept to close
//!
//! ```text
//! server::run        accept a TcpStream (TCP_NODELAY), spawn connection::handle in a span
//! connection::handle
//!   sniff::sniff     peek the first byte within 3 s: 0x16/0x80 -> TLS, else plain
//!   tls              TlsServer::acceptor() -> TlsStream (cert reloaded when the file changes)
//!                    => stream::ClientStream { Plain | Tls }
//!   request::serve   hyper reads heads (16 KiB, 100 fields, deadline); plain HTTP -> 405;
//!                    a valid upgrade (handshake::accept) -> 101 and the stream taken back
//!                    => request::Upgraded { stream, leftover bytes, relay::Mode }
//!   target::connect  TCP (each address in turn) | unix | TLS, under a deadline
//!                    => stream::TargetStream; failure -> close 1011
//!   relay::run       frame::Decoder streams client frames to the target; target reads
//!                    become frames; one poll loop, one 64 KiB buffer per direction at most
//!                    => relay::Outcome { close reason, bytes each way }, logged once
//! ```
//!
//! `main` parses the command line (`cli`, optparse-compatible), binds the listener (`listen`)
//! and calls [`run`], which tests call directly with a listener on port 0.

#![deny(unsafe_code)]

pub mod auth;
pub mod buffer;
pub mod cli;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod frame;
pub mod handshake;
pub mod listen;
pub mod logging;
pub mod process;
pub mod record;
pub mod relay;
pub mod request;
pub mod response;
pub mod server;
pub mod sniff;
pub mod state;
pub mod stream;
pub mod target;
pub mod tls;
pub mod token;
pub mod web;
pub mod wrap;

pub use config::{Config, Target};
pub use server::run;
