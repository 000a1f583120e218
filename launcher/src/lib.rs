//! websockify: a WebSocket-to-TCP bridge, a drop-in replacement for the Python websockify of
//! the noVNC project.
//!
//! # One connection, from accept to close
//!
//! ```text
//! server::run            accept (TCP_NODELAY); one task per connection in a span
//!   state::Shared        what all connections share: config, TLS, web root, auth, tokens,
//!                        recorder; read-only after start
//! connection::handle     open (boxed, freed once connected) then Session::relay
//!   sniff::sniff         peek the first byte within 3 s: 0x16/0x80 -> TLS, '<' -> Flash
//!                        policy answer, else plain HTTP (refused under --ssl-only)
//!   tls                  TlsServer::acceptor() -> TlsStream (cert re-read when the file changes)
//!                        => stream::ClientStream { Tcp | Unix | Tls }
//!   request::serve       hyper reads heads (16 KiB, 100 fields, deadline), then per request:
//!     not an upgrade     --web: [--web-auth: auth] -> web::WebRoot::serve (file, listing,
//!                        redirect); no --web: 405. The connection stays for more requests.
//!     upgrade            handshake::accept (version, key, subprotocol -> relay::Mode), or
//!                        with --hixie hixie::accept (Hixie-75/76 keys; -76's 8 key bytes
//!                        are read after the checks, before the 101)
//!                        -> auth::Auth::check (--allowed-origin, --auth-plugin)
//!                        -> token::Tokens::lookup (--token-plugin) or the fixed target
//!                        -> 101; hyper hands the raw stream back
//!     refused            response::Reject: its variant picks the status; logged once
//!                        => request::Upgraded { stream, leftover bytes, mode, target }
//!   record::Recorder     --record: this session's file, opened before connecting
//!   target::connect      TCP (each address in turn) | unix | TLS, under a deadline
//!                        => stream::TargetStream; failure -> close 1011
//!                        => connection::Session { client, target, what the log needs }
//!   relay::run           frame::Decoder streams client frames to the target; target reads
//!                        become frames; one poll loop, at most one 64 KiB buffer per
//!                        direction (buffer::Buf, pooled, none while idle); hooks: the
//!                        recording and --traffic tokens per frame, the --heartbeat ping
//!                        timer, the shutdown token (close 1001), the close linger
//!                        => relay::Outcome { close reason, bytes each way }, logged once
//! ```
//!
//! Around the server: `main` parses the command line (`cli` -> `config::Settings`), detaches
//! (`daemon`) and sets up `logging`; `process::run` binds the listener (`listen`), handles
//! signals, supervises a wrapped program (`wrap`) and calls [`run`], which tests call
//! directly with a listener on port 0.

#![deny(unsafe_code)]

pub mod auth;
pub mod buffer;
pub mod cli;
pub mod client;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod entry;
pub mod frame;
pub mod handshake;
pub mod hixie;
pub mod http;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod manual;
pub mod memory;
pub mod metrics;
pub mod privileges;
pub mod process;
pub mod proxy_header;
pub mod record;
pub mod relay;
pub mod request;
pub mod response;
pub mod secrets;
pub mod server;
pub mod sniff;
pub mod state;
pub mod stream;
pub mod target;
pub mod tls;
pub mod token;
pub mod web;
pub mod wrap;
pub mod wswrap;

pub use config::{Config, Target};
pub use server::run;

/// Entry points for the fuzz targets (`fuzz/`) into parsers that are private to their
/// modules. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::{Path, PathBuf};

    pub use crate::token::fuzzing::*;

    /// A web request path, resolved as the web server resolves it before touching the disk.
    #[derive(Debug)]
    pub struct WebPath {
        /// Decoded segments, each one normal path component.
        pub segments: Vec<Vec<u8>>,
        pub trailing_slash: bool,
        /// The file-system path under the root.
        pub joined: PathBuf,
        /// The clean path for a URL (`/a%20b/`).
        pub url_dir: String,
        /// The clean path as page text (`/a b/`).
        pub display_dir: String,
    }

    /// Parses a request path (the URI's path) and joins it under `root`.
    pub fn web_path(raw: &str, root: &Path) -> Result<WebPath, &'static str> {
        let path = crate::web::RequestPath::parse(raw)?;
        Ok(WebPath {
            joined: path.join(root),
            url_dir: path.url_dir(),
            display_dir: path.display_dir(),
            trailing_slash: path.trailing_slash,
            segments: path.segments,
        })
    }
}
