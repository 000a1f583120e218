//! The web server, token routing and authentication end to end (issue 4; upstream 1.3, 1.4,
//! 1.13, 4.2): files and WebSockets on one port, a traversal corpus over real HTTP, the real
//! noVNC files, every token backend (real Redis, a real HTTP token service, JWTs signed here)
//! and every auth plugin, all through real sockets on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use rcgen::{ExtendedKeyUsagePurpose, KeyPair};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use websockify::config::{TokenSettings, WebSettings};
use websockify::{Config, Target};

use crate::util::*;

// ---- a small HTTP/WebSocket client over any stream ------------------------------------------

/// One HTTP response as it came over the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The reason phrase of the status line (we put short error reasons there).
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type without parameters (`text/javascript`).
    fn media_type(&self) -> &str {
        let value = self.header("content-type").unwrap_or("");
        value.split(';').next().unwrap_or("").trim()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connection with a read buffer, so responses, bodies and frames can follow each other.
struct Conn<S> {
    stream: S,
    buf: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        within("send", self.stream.write_all(bytes))
            .await
            .expect("send");
    }

    /// Reads more bytes into the buffer; false at EOF (a reset counts as EOF).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Exactly `n` bytes; panics at EOF.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await,
                "connection closed with {} of {n} bytes read",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).collect();
                return String::from_utf8_lossy(&line[..end]).into_owned();
            }
            assert!(
                self.fill().await,
                "connection closed in the middle of a line"
            );
        }
    }

    /// A message head (request or response); `None` if the peer closed before sending a byte.
    /// Unbounded: callers bound it.
    async fn head(&mut self) -> Option<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(String::from_utf8_lossy(&head).into_owned());
            }
            if !self.fill().await {
                assert!(
                    self.buf.is_empty(),
                    "connection closed in the middle of a head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        }
    }

    /// The next response; `None` if the server closed without answering. `head_only` for HEAD.
    async fn reply(&mut self, head_only: bool) -> Option<Reply> {
        within("an HTTP response", async {
            let head = self.head().await?;
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default().to_owned();
            let mut parts = status_line.splitn(3, ' ');
            assert!(
                parts.next().is_some_and(|v| v.starts_with("HTTP/1.")),
                "not an HTTP response: {head:?}"
            );
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let reason = parts.next().unwrap_or_default().to_owned();
            let headers: Vec<(String, String)> = lines
                .filter(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let mut reply = Reply {
                status,
                reason,
                headers,
                body: Vec::new(),
            };
            if head_only || status < 200 || status == 204 || status == 304 {
                return Some(reply);
            }
            if reply
                .header("transfer-encoding")
                .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
            {
                loop {
                    let size_line = self.line().await;
                    let size =
                        usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                            .expect("chunk size");
                    if size == 0 {
                        while !self.line().await.is_empty() {}
                        break;
                    }
                    let chunk = self.take(size).await;
                    reply.body.extend_from_slice(&chunk);
                    self.take(2).await;
                }
            } else if let Some(length) = reply.header("content-length") {
                let length: usize = length.parse().expect("content-length");
                reply.body = self.take(length).await;
            } else {
                while self.fill().await {}
                reply.body = std::mem::take(&mut self.buf);
            }
            Some(reply)
        })
        .await
    }

    /// Sends `raw` and reads the answer, which must come (never a silent close).
    async fn request(&mut self, raw: &str) -> Reply {
        let head_only = raw.starts_with("HEAD ");
        self.send(raw.as_bytes()).await;
        self.reply(head_only)
            .await
            .unwrap_or_else(|| panic!("no response (silent close) to {raw:?}"))
    }

    // WebSocket, client side (after a 101).

    async fn ws_send(&mut self, payload: &[u8]) {
        self.send(&client_frame(0x82, payload)).await;
    }

    /// One server frame: (first byte, payload).
    async fn ws_frame(&mut self) -> (u8, Vec<u8>) {
        within("a WebSocket frame", async {
            let head = self.take(2).await;
            assert_eq!(head[1] & 0x80, 0, "server frames are never masked");
            let len = match head[1] & 0x7f {
                126 => u16::from_be_bytes(self.take(2).await.try_into().unwrap()) as usize,
                127 => u64::from_be_bytes(self.take(8).await.try_into().unwrap()) as usize,
                n => n as usize,
            };
            (head[0], self.take(len).await)
        })
        .await
    }

    /// Data bytes until `done` says the collected bytes are complete.
    async fn ws_data_until(&mut self, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        while !done(&got) {
            let (b0, payload) = self.ws_frame().await;
            match b0 & 0x0f {
                0x0..=0x2 => got.extend_from_slice(&payload),
                0x9 | 0xa => {}
                0x8 => panic!(
                    "session closed ({}) after {:?}",
                    String::from_utf8_lossy(&payload),
                    String::from_utf8_lossy(&got)
                ),
                op => panic!("unexpected opcode {op:#x}"),
            }
        }
        got
    }

    /// The first line the target sent (named targets send their name and `\n`).
    async fn ws_line(&mut self) -> String {
        let got = self.ws_data_until(|got| got.contains(&b'\n')).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        let (line, rest) = text.split_once('\n').unwrap();
        assert!(rest.is_empty(), "more than a name: {text:?}");
        line.to_owned()
    }

    /// Sends `payload` and expects it back (the target echoes).
    async fn ws_echo(&mut self, payload: &[u8]) {
        self.ws_send(payload).await;
        let got = self.ws_data_until(|got| got.len() >= payload.len()).await;
        assert_eq!(got, payload, "echo through the session");
    }
}

async fn connect(addr: SocketAddr) -> Conn<TcpStream> {
    let stream = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    Conn::new(stream)
}

/// `METHOD path` on a fresh connection, with extra header lines (each ending in CRLF).
async fn fetch(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    connect(addr)
        .await
        .request(&format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n"
        ))
        .await
}

/// An upgrade request for `path` on a fresh connection; returns the connection and the answer.
async fn upgrade(addr: SocketAddr, path: &str, extra: &str) -> (Conn<TcpStream>, Reply) {
    let mut conn = connect(addr).await;
    let reply = conn
        .request(&upgrade_request_for(path, &addr.to_string(), extra))
        .await;
    (conn, reply)
}

fn assert_switched(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 101, "{what}: {reply:?}");
    assert_eq!(
        reply.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{what}"
    );
}

/// An error answer with `status` and `reason` in the status line and in the page.
fn assert_refused(reply: &Reply, status: u16, reason: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(reply.reason, reason, "{what}: reason phrase");
    assert!(
        reply.text().contains(reason),
        "{what}: page {:?}",
        reply.text()
    );
}

// ---- targets --------------------------------------------------------------------------------

/// Sends `name` and a newline, then echoes until EOF.
async fn name_then_echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S, name: Arc<str>) {
    let (mut r, mut w) = tokio::io::split(stream);
    if w.write_all(format!("{name}\n").as_bytes()).await.is_ok() {
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }
}

async fn serve_named(listener: TcpListener, name: &str) {
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(name_then_echo(stream, Arc::clone(&name)));
        }
    });
}

/// A TCP target on 127.0.0.1 that greets each connection with its name, then echoes.
async fn named_target(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("addr");
    serve_named(listener, name).await;
    addr
}

/// `count` named targets: (address, name).
async fn named_targets(count: usize) -> Vec<(SocketAddr, String)> {
    let mut targets = Vec::new();
    for i in 0..count {
        let name = format!("target-{i}");
        targets.push((named_target(&name).await, name));
    }
    targets
}

/// A unix-socket target at `path`, like [`named_target`].
fn named_unix_target(path: &Path, name: &str) {
    let listener = UnixListener::bind(path).expect("bind unix target");
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(name_then_echo(stream, Arc::clone(&name)));
        }
    });
}

/// A config whose targets come from `plugin` with `source` (the fixed target is never used).
fn token_config(plugin: &str, source: &str) -> Config {
    let mut config = Config::new(Target::Tcp {
        host: "127.0.0.1".into(),
        port: 9,
    });
    config.token = Some(TokenSettings {
        plugin: plugin.into(),
        source: Some(source.into()),
        host_token: false,
    });
    config
}

fn query(token: &str) -> String {
    format!(
        "/websockify?token={}",
        utf8_percent_encode(token, NON_ALPHANUMERIC)
    )
}

/// The token's upgrade reaches the target called `name`, and the session echoes.
async fn assert_routes(addr: SocketAddr, token: &str, name: &str) {
    let (mut conn, reply) = upgrade(addr, &query(token), "").await;
    assert_switched(&reply, &format!("token {token:?}"));
    assert_eq!(conn.ws_line().await, name, "token {token:?}");
    conn.ws_echo(format!("hello {name}").as_bytes()).await;
}

async fn assert_unknown(addr: SocketAddr, token: &str) {
    let (_conn, reply) = upgrade(addr, &query(token), "").await;
    assert_refused(&reply, 404, "Token not found", &format!("token {token:?}"));
}

async fn assert_missing(addr: SocketAddr) {
    for path in ["/websockify", "/websockify?tok=x", "/websockify?token="] {
        let (_conn, reply) = upgrade(addr, path, "").await;
        assert_refused(&reply, 400, "Token not present", path);
    }
}

/// `sessions` sessions at once over `routes` (token, target name): each reaches its own
/// target, all are open together, and each echoes its own text.
async fn assert_concurrent_routing(addr: SocketAddr, routes: &[(String, String)], sessions: usize) {
    let barrier = Arc::new(tokio::sync::Barrier::new(sessions));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..sessions {
        let (token, name) = routes[i % routes.len()].clone();
        let barrier = Arc::clone(&barrier);
        set.spawn(async move {
            let (mut conn, reply) = upgrade(addr, &query(&token), "").await;
            assert_switched(&reply, &format!("session {i}"));
            assert_eq!(
                conn.ws_line().await,
                name,
                "session {i} reached another target"
            );
            within("all sessions open at once", barrier.wait()).await;
            conn.ws_echo(format!("session {i} to {name}").as_bytes())
                .await;
        });
    }
    while let Some(joined) = set.join_next().await {
        if let Err(err) = joined {
            std::panic::resume_unwind(err.into_panic());
        }
    }
}

fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).expect("write test file");
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

// ---- the web root ---------------------------------------------------------------------------

const OUTSIDE_SECRET: &str = "OUTSIDE-SECRET-7f3a9c";
const HIDDEN_SECRET: &str = "HIDDEN-SECRET-2b8d41";

/// `tmp/root` (served) next to `tmp/outside` and `tmp/secret.txt` (never served).
struct Site {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

/// (file name, contents, expected media type)
const TYPED_FILES: &[(&str, &[u8], &str)] = &[
    ("app.js", b"export const answer = 42;\n", "text/javascript"),
    ("mod.mjs", b"export default 1;\n", "text/javascript"),
    ("data.json", b"{\"a\": 1}\n", "application/json"),
    (
        "pic.svg",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>\n",
        "image/svg+xml",
    ),
    ("bin.wasm", b"\0asm\x01\0\0\0", "application/wasm"),
    ("font.woff2", b"wOF2\0\x01\0\0fake", "font/woff2"),
    ("style.css", b"body { color: red }\n", "text/css"),
    ("page.html", b"<!DOCTYPE html><p>page</p>\n", "text/html"),
];

fn site() -> Site {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path();
    let root = base.join("root");
    let outside = base.join("outside");
    for dir in [
        root.join("sub/deeper"),
        root.join("withindex"),
        root.join("evil.example"),
        root.join("my dir"),
        root.join("q?x"),
        root.join(".git"),
        outside.join("secretdir"),
    ] {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    write(&base.join("secret.txt"), OUTSIDE_SECRET);
    write(&outside.join("secret.txt"), OUTSIDE_SECRET);
    write(&outside.join("secretdir/inner.txt"), OUTSIDE_SECRET);
    write(&outside.join("secretdir/index.html"), OUTSIDE_SECRET);
    write(
        &root.join("index.html"),
        "<!DOCTYPE html><p>root index</p>\n",
    );
    for (name, contents, _) in TYPED_FILES {
        write(&root.join(name), contents);
    }
    write(&root.join("range.txt"), "0123456789abcdef");
    write(&root.join("sub/a.txt"), "in sub\n");
    write(&root.join("sub/a<b>&c.txt"), "odd name\n");
    write(&root.join("sub/deeper/b.txt"), "deeper\n");
    write(&root.join("sub/.env"), HIDDEN_SECRET);
    write(&root.join("withindex/index.html"), "<p>with index</p>\n");
    std::fs::create_dir(root.join("htm")).expect("mkdir");
    write(&root.join("htm/index.htm"), "<p>htm index</p>");
    write(&root.join(".hidden"), HIDDEN_SECRET);
    write(&root.join(".git/config"), HIDDEN_SECRET);
    symlink("app.js", root.join("in_link")).expect("symlink");
    symlink(outside.join("secret.txt"), root.join("out_file")).expect("symlink");
    symlink("../outside/secret.txt", root.join("out_rel")).expect("symlink");
    symlink(outside.join("secretdir"), root.join("out_dir")).expect("symlink");
    symlink("../..", root.join("sub/upup")).expect("symlink");
    symlink("..", root.join("sub/up")).expect("symlink");
    symlink(".hidden", root.join("to_hidden")).expect("symlink");
    Site { _tmp: tmp, root }
}

fn web_config(target: SocketAddr, dir: &Path, file_only: bool) -> Config {
    let mut config = config_to(target);
    config.web = Some(WebSettings {
        dir: dir.to_path_buf(),
        file_only,
    });
    config
}

// ---- web: files, directories, methods -------------------------------------------------------

#[tokio::test]
async fn files_have_types_no_cache_conditionals_and_ranges() {
    let site = site();
    let server = TestServer::start(web_config(echo_server().await, &site.root, false)).await;
    let addr = server.addr;
    let mut conn = connect(addr).await;
    for (name, contents, media_type) in TYPED_FILES {
        let get = conn
            .request(&format!("GET /{name} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await;
        assert_eq!(get.status, 200, "GET {name}: {get:?}");
        assert_eq!(get.media_type(), *media_type, "GET {name}");
        assert_eq!(get.body, *contents, "GET {name}");
        assert_eq!(get.header("cache-control"), Some("no-cache"), "GET {name}");
        assert!(get.header("last-modified").is_some(), "GET {name}");
        // HEAD on the same connection: the same headers and no body (the next request on
        // this connection would fail to parse if a body followed).
        let head = conn
            .request(&format!("HEAD /{name} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await;
        assert_eq!(head.status, 200, "HEAD {name}");
        assert_eq!(head.media_type(), *media_type, "HEAD {name}");
        assert_eq!(
            head.header("content-length"),
            Some(contents.len().to_string().as_str()),
            "HEAD {name}"
        );
        assert_eq!(
            head.header("cache-control"),
            Some("no-cache"),
            "HEAD {name}"
        );
    }

    // Last-Modified / If-Modified-Since.
    let first = fetch(addr, "GET", "/app.js", "").await;
    let stamp = first
        .header("last-modified")
        .expect("Last-Modified")
        .to_owned();
    let again = fetch(
        addr,
        "GET",
        "/app.js",
        &format!("If-Modified-Since: {stamp}\r\n"),
    )
    .await;
    assert_eq!(again.status, 304, "{again:?}");
    assert!(again.body.is_empty());
    assert_eq!(again.header("cache-control"), Some("no-cache"));
    let old = fetch(
        addr,
        "GET",
        "/app.js",
        "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n",
    )
    .await;
    assert_eq!(old.status, 200, "{old:?}");

    // Byte ranges.
    let range = fetch(addr, "GET", "/range.txt", "Range: bytes=2-5\r\n").await;
    assert_eq!(range.status, 206, "{range:?}");
    assert_eq!(range.text(), "2345");
    assert_eq!(range.header("content-range"), Some("bytes 2-5/16"));
    let suffix = fetch(addr, "GET", "/range.txt", "Range: bytes=-3\r\n").await;
    assert_eq!(suffix.status, 206, "{suffix:?}");
    assert_eq!(suffix.text(), "def");

    // A symlink that stays inside the root is served, with the type of its own name.
    let link = fetch(addr, "GET", "/in_link", "").await;
    assert_eq!(link.status, 200, "{link:?}");
    assert_eq!(link.body, TYPED_FILES[0].1);

    let missing = fetch(addr, "GET", "/nope.js", "").await;
    assert_refused(&missing, 404, "File not found", "missing file");
}

#[tokio::test]
async fn directories_index_redirect_listing_and_file_only() {
    let site = site();
    let echo = echo_server().await;
    let server = TestServer::start(web_config(echo, &site.root, false)).await;
    let addr = server.addr;

    let root = fetch(addr, "GET", "/", "").await;
    assert_eq!(root.status, 200, "{root:?}");
    assert!(root.text().contains("root index"));
    assert_eq!(root.media_type(), "text/html");
    let index = fetch(addr, "GET", "/withindex/", "").await;
    assert_eq!(index.status, 200, "{index:?}");
    assert!(index.text().contains("with index"));

    // Without the trailing slash: 301 to the clean path, never `//host`.
    for (path, location) in [
        ("/sub", "/sub/"),
        ("/my%20dir", "/my%20dir/"),
        ("/q%3Fx", "/q%3Fx/"),
        ("/sub/deeper", "/sub/deeper/"),
        ("/withindex?x=1&y=2", "/withindex/?x=1&y=2"),
        ("//evil.example", "/evil.example/"),
        ("///evil.example", "/evil.example/"),
        ("/%2F%2Fevil.example", "/evil.example/"),
        ("/%2fevil.example", "/evil.example/"),
        ("//sub//deeper", "/sub/deeper/"),
    ] {
        let reply = fetch(addr, "GET", path, "").await;
        assert_eq!(reply.status, 301, "{path}: {reply:?}");
        let got = reply.header("location").expect("Location");
        assert_eq!(got, location, "{path}");
        assert!(!got.starts_with("//"), "{path} -> {got}");
    }

    // A listing: names escaped, hidden entries left out.
    let listing = fetch(addr, "GET", "/sub/", "").await;
    assert_eq!(listing.status, 200, "{listing:?}");
    assert_eq!(listing.media_type(), "text/html");
    let text = listing.text();
    assert!(text.contains("Directory listing for /sub/"), "{text}");
    assert!(text.contains("a.txt") && text.contains("deeper/"), "{text}");
    assert!(text.contains("a&lt;b&gt;&amp;c.txt"), "{text}");
    assert!(!text.contains("a<b>"), "unescaped name in {text}");
    assert!(!text.contains(".env"), "hidden entry listed: {text}");
    let htm = fetch(addr, "GET", "/htm/", "").await;
    assert_eq!((htm.status, htm.text().as_str()), (200, "<p>htm index</p>"));
    assert_eq!(htm.media_type(), "text/html");
    let slash = fetch(addr, "GET", "/sub/a.txt/", "").await;
    assert_eq!(slash.status, 404, "a file with a trailing slash: {slash:?}");
    let file = fetch(addr, "GET", "/sub/deeper/b.txt", "").await;
    assert_eq!((file.status, file.text().as_str()), (200, "deeper\n"));
    drop(server);

    // --file-only: no listings, but files and index pages still.
    let server = TestServer::start(web_config(echo, &site.root, true)).await;
    let addr = server.addr;
    let listing = fetch(addr, "GET", "/sub/", "").await;
    assert_refused(&listing, 404, "File not found", "listing with --file-only");
    assert!(!listing.text().contains("a.txt"));
    let index = fetch(addr, "GET", "/withindex/", "").await;
    assert_eq!(index.status, 200, "{index:?}");
    let file = fetch(addr, "GET", "/sub/a.txt", "").await;
    assert_eq!(file.status, 200, "{file:?}");
}

#[tokio::test]
async fn methods_keep_alive_and_upgrade_after_file_requests_on_one_connection() {
    let site = site();
    let server = TestServer::start(web_config(echo_server().await, &site.root, false)).await;
    let addr = server.addr;

    let post = connect(addr)
        .await
        .request("POST /app.js HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    assert_eq!(post.status, 405, "{post:?}");
    let allow = post.header("allow").expect("Allow");
    assert!(allow.contains("GET") && allow.contains("HEAD"), "{allow}");
    for method in ["PUT", "DELETE", "OPTIONS", "PATCH"] {
        let reply = fetch(addr, method, "/app.js", "Content-Length: 0\r\n").await;
        assert_eq!(reply.status, 405, "{method}: {reply:?}");
        assert!(reply.header("allow").is_some(), "{method}");
    }
    let brew = fetch(addr, "BREW", "/app.js", "").await;
    assert_eq!(brew.status, 501, "{brew:?}");
    assert_eq!(brew.reason, "Unsupported method ('BREW')");

    // Keep-alive: several file requests (a 404 among them), then an upgrade, one connection.
    let mut conn = connect(addr).await;
    for (path, status) in [
        ("/app.js", 200),
        ("/data.json", 200),
        ("/missing", 404),
        ("/sub/", 200),
    ] {
        let reply = conn
            .request(&format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await;
        assert_eq!(reply.status, status, "{path} on the kept-alive connection");
    }
    let reply = conn.request(&upgrade_request("x", "")).await;
    assert_switched(&reply, "upgrade after file requests on the same connection");
    conn.ws_echo(b"same port, same connection").await;

    // Pipelined: two file requests, an upgrade and the first frame in a single write.
    let mut conn = connect(addr).await;
    let mut burst =
        b"GET /app.js HTTP/1.1\r\nHost: x\r\n\r\nHEAD /data.json HTTP/1.1\r\nHost: x\r\n\r\n"
            .to_vec();
    burst.extend_from_slice(upgrade_request("x", "").as_bytes());
    burst.extend_from_slice(&client_frame(0x82, b"pipelined frame"));
    conn.send(&burst).await;
    let first = conn.reply(false).await.expect("first response");
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, TYPED_FILES[0].1)
    );
    let second = conn.reply(true).await.expect("second response");
    assert_eq!(second.status, 200, "{second:?}");
    let third = conn.reply(false).await.expect("third response");
    assert_switched(&third, "pipelined upgrade");
    let echoed = conn
        .ws_data_until(|got| got.len() >= b"pipelined frame".len())
        .await;
    assert_eq!(echoed, b"pipelined frame");

    // HTTP/1.0 and a cache-busting query.
    let old = connect(addr)
        .await
        .request("GET /app.js?v=1.2.3 HTTP/1.0\r\n\r\n")
        .await;
    assert_eq!(old.status, 200, "{old:?}");
    assert_eq!(old.body, TYPED_FILES[0].1);

    // And a fresh upgrade on the same port.
    let (mut ws, reply) = upgrade(addr, "/websockify", "").await;
    assert_switched(&reply, "upgrade on a fresh connection");
    ws.ws_echo(b"fresh").await;
}

#[tokio::test]
async fn without_web_dir_plain_http_gets_405() {
    let server = TestServer::start(config_to(echo_server().await)).await;
    let reply = fetch(server.addr, "GET", "/vnc.html", "").await;
    assert_eq!(reply.status, 405, "{reply:?}");
    assert!(reply.header("allow").is_some());
}

// ---- web: traversal corpus ------------------------------------------------------------------

/// Request targets that aim at files outside the root, at hidden files, or through symlinks
/// leaving the root. None of them may be answered with 200/206 or any secret's content.
fn traversal_corpus() -> Vec<String> {
    let prefixes = [
        "/",
        "//",
        "/./",
        "/sub/",
        "/sub/deeper/",
        "/%2f",
        "/sub//",
        "/withindex/",
    ];
    let ups = [
        "..",
        "%2e%2e",
        "%2E%2e",
        "%2e%2E",
        ".%2e",
        "%2e.",
        "..%2f",
        "%2f..",
        "..%5c",
        "%5c..",
        "..%00",
        "%2e%2e%00",
        "%252e%252e",
        "%c0%ae%c0%ae",
        "..;",
        "..\\",
    ];
    let targets = ["outside/secret.txt", "secret.txt", "outside/secretdir/"];
    let mut corpus = Vec::new();
    for prefix in prefixes {
        for up in ups {
            for depth in 1..=2 {
                for target in targets {
                    corpus.push(format!(
                        "{prefix}{}{target}",
                        format!("{up}/").repeat(depth)
                    ));
                }
            }
        }
    }
    let specials = [
        "/etc/passwd",
        "//etc/passwd",
        "///etc/passwd",
        "/%2fetc%2fpasswd",
        "/%2Fetc/passwd",
        "/..\\..\\outside\\secret.txt",
        "/..%5c..%5coutside%5csecret.txt",
        "/%5c%5cserver%5cshare%5csecret.txt",
        "/c:/outside/secret.txt",
        "/C:%5coutside%5csecret.txt",
        "/out_file",
        "/out_rel",
        "/out_dir",
        "/out_dir/",
        "/out_dir/inner.txt",
        "/out_dir/index.html",
        "/sub/upup/outside/secret.txt",
        "/sub/upup/secret.txt",
        "/sub/upup/",
        "/sub/upup",
        "/sub/up/sub/upup/outside/secret.txt",
        "/sub/up/../outside/secret.txt",
        "/sub/up/out_file",
        "/sub/up/out_dir/inner.txt",
        "/sub/../../outside/secret.txt",
        "/sub/../../secret.txt",
        "/sub/../../secret",
        "/./.hidden",
        "/.hidden",
        "/%2ehidden",
        "/%2Ehidden",
        "/.git/config",
        "/.git/",
        "/%2egit/config",
        "/sub/.env",
        "/sub/%2eenv",
        "/to_hidden",
        "/sub/up/.hidden",
        "/sub/up/to_hidden",
        "/out_file%00",
        "/out_file%00.txt",
        "/index.html%00/../outside/secret.txt",
        "/out_file?x=/index.html",
        "/%2e/out_file",
        "/outside/secret.txt",
        "/..",
        "/../",
        "/%2e%2e",
        "/%2e%2e/",
        "/%2e%2e%2f",
        "/.%2e/",
        "/%252e%252e/outside/secret.txt",
        "/%25%32%65%25%32%65/outside/secret.txt",
        "/%C3%A9t%C3%A9/../../outside/secret.txt",
        "/%E2%80%A5/outside/secret.txt",
        "/%EF%BC%8E%EF%BC%8E/outside/secret.txt",
        "/sub/%EF%BC%8F..%EF%BC%8F..%EF%BC%8Foutside/secret.txt",
        "http://localhost/../outside/secret.txt",
        "http://localhost//etc/passwd",
        "http://localhost/out_file",
        "*",
        "../outside/secret.txt",
        "%2e%2e/outside/secret.txt",
    ];
    corpus.extend(specials.iter().map(|s| (*s).to_owned()));
    corpus.push(format!("/{}outside/secret.txt", "../".repeat(50)));
    corpus.push(format!("/sub/{}outside/secret.txt", "%2e%2e/".repeat(50)));
    corpus.push(format!("/{}etc/passwd", "%2e%2e%2f".repeat(20)));
    corpus
}

#[tokio::test]
async fn traversal_corpus_never_leaves_the_web_root() {
    let site = site();
    let server = TestServer::start(web_config(echo_server().await, &site.root, false)).await;
    let addr = server.addr;
    let corpus = Arc::new(traversal_corpus());
    assert!(corpus.len() >= 200, "only {} paths", corpus.len());
    const WORKERS: usize = 8;
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let corpus = Arc::clone(&corpus);
        set.spawn(async move {
            let mut failures = Vec::new();
            for path in corpus.iter().skip(worker).step_by(WORKERS) {
                for method in ["GET", "HEAD"] {
                    let reply = fetch(addr, method, path, "").await;
                    let text = reply.text();
                    if matches!(reply.status, 200 | 206)
                        || text.contains(OUTSIDE_SECRET)
                        || text.contains(HIDDEN_SECRET)
                        || text.contains("root:x:0:0")
                    {
                        failures.push(format!("{method} {path} -> {} {text:?}", reply.status));
                    }
                    if let Some(location) = reply.header("location")
                        && (location.starts_with("//") || location.contains(".."))
                    {
                        failures.push(format!("{method} {path} -> Location {location}"));
                    }
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        failures.extend(joined.expect("corpus worker"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests escaped the root:\n{}",
        failures.len(),
        corpus.len() * 2,
        failures.join("\n")
    );
    // The fixture serves what is inside, so the refusals above are not an empty server.
    assert_eq!(fetch(addr, "GET", "/sub/a.txt", "").await.status, 200);
    assert_eq!(fetch(addr, "GET", "/sub/up/app.js", "").await.status, 200);
}

// ---- web: the real noVNC files --------------------------------------------------------------

const NOVNC: &str = "/usr/share/novnc";

#[tokio::test]
async fn serves_the_real_novnc_files_with_their_types() {
    let dir = Path::new(NOVNC);
    if !dir.join("vnc.html").is_file() {
        skip_or_fail(&format!("{NOVNC} not installed (apt-get install novnc)"));
        return;
    }
    let server = TestServer::start(web_config(echo_server().await, dir, false)).await;
    let mut conn = connect(server.addr).await;
    let mut expect = vec![
        ("vnc.html".to_owned(), "text/html"),
        ("vnc_lite.html".to_owned(), "text/html"),
        ("app/ui.js".to_owned(), "text/javascript"),
        ("core/rfb.js".to_owned(), "text/javascript"),
        ("core/websock.js".to_owned(), "text/javascript"),
    ];
    let mut svgs: Vec<String> = std::fs::read_dir(dir.join("app/images"))
        .expect("app/images")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".svg"))
        .collect();
    svgs.sort();
    assert!(!svgs.is_empty(), "no svg in app/images");
    expect.extend(
        svgs.iter()
            .map(|n| (format!("app/images/{n}"), "image/svg+xml")),
    );
    let jsons = [
        "defaults.json",
        "mandatory.json",
        "package.json",
        "app/locale/de.json",
    ];
    match jsons.iter().find(|j| dir.join(j).is_file()) {
        Some(json) => expect.push(((*json).to_owned(), "application/json")),
        None => eprintln!("no .json file in {NOVNC}; json type not checked here"),
    }
    if dir.join("app/styles/base.css").is_file() {
        expect.push(("app/styles/base.css".to_owned(), "text/css"));
    }
    for (path, media_type) in &expect {
        let reply = conn
            .request(&format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n"))
            .await;
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        assert_eq!(reply.media_type(), *media_type, "{path}");
        assert_eq!(reply.header("cache-control"), Some("no-cache"), "{path}");
        let on_disk = std::fs::read(dir.join(path)).expect("read noVNC file");
        assert!(reply.body == on_disk, "{path}: body differs from the file");
    }
    // Debian links vnc_auto.html -> vnc.html inside the directory: served.
    if dir.join("vnc_auto.html").exists() {
        let reply = conn
            .request("GET /vnc_auto.html HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // The page's WebSocket, on the same connection, with noVNC's path.
    let reply = conn.request(&upgrade_request("x", "")).await;
    assert_switched(&reply, "noVNC's /websockify after its files");
    conn.ws_echo(b"RFB 003.008\n").await;
}

// ---- tokens: files --------------------------------------------------------------------------

#[tokio::test]
async fn token_file_routes_reloads_and_keeps_sessions_apart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(4).await;
    let file = tmp.path().join("tokens.cfg");
    let mut lines = String::from("# token file\n\n");
    for (i, (addr, _)) in targets.iter().enumerate() {
        lines.push_str(&format!("tok{i}: {addr}\n"));
    }
    let socket = tmp.path().join("vnc.sock");
    named_unix_target(&socket, "unix-target");
    lines.push_str(&format!("sock: unix_socket:{}\n", socket.display()));
    lines.push_str(&format!("two words: {}\n", targets[0].0));
    let v6 = match TcpListener::bind("[::1]:0").await {
        Ok(listener) => {
            let port = listener.local_addr().expect("addr").port();
            serve_named(listener, "v6-target").await;
            lines.push_str(&format!("six: [::1]:{port}\nsix2: ::1:{port}\n"));
            true
        }
        Err(err) => {
            eprintln!("::1 not available ({err}); the [::1] target is not checked");
            false
        }
    };
    write(&file, &lines);
    let server = TestServer::start(token_config("TokenFile", path_str(&file))).await;
    let addr = server.addr;

    let routes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("tok{i}"), targets[i].1.clone()))
        .collect();
    assert_concurrent_routing(addr, &routes, 20).await;
    assert_routes(addr, "sock", "unix-target").await;
    if v6 {
        assert_routes(addr, "six", "v6-target").await;
        assert_routes(addr, "six2", "v6-target").await;
    }
    assert_unknown(addr, "tok9").await;
    assert_unknown(addr, "TOK0").await;
    assert_missing(addr).await;
    // Any path works, as noVNC's `path` setting may be anything.
    let (mut conn, reply) = upgrade(addr, "/some/other/path?a=1&token=tok2&b=2", "").await;
    assert_switched(&reply, "token on another path");
    assert_eq!(conn.ws_line().await, "target-2");
    // parse_qs rules: blank values are skipped, `+` is a space.
    for (path, name) in [
        ("/websockify?token=&token=tok1", "target-1"),
        ("/websockify?token=two+words", "target-0"),
        ("/websockify?token=two%20words", "target-0"),
    ] {
        let (mut conn, reply) = upgrade(addr, path, "").await;
        assert_switched(&reply, path);
        assert_eq!(conn.ws_line().await, name, "{path}");
    }

    // Edit the file while the server runs: a new token works, a removed one is gone.
    let fresh = named_target("target-new").await;
    let edited = lines.replace("tok3:", "# removed tok3:") + &format!("newtok: {fresh}\n");
    write(&file, &edited);
    assert_routes(addr, "newtok", "target-new").await;
    assert_unknown(addr, "tok3").await;
    assert_routes(addr, "tok1", "target-1").await;

    // Replaced the way editors and config tools do it: write a new file, rename it over.
    let staged = tmp.path().join("tokens.cfg.new");
    write(&staged, format!("renamed: {}\n", targets[3].0));
    std::fs::rename(&staged, &file).expect("rename");
    assert_routes(addr, "renamed", "target-3").await;
    assert_unknown(addr, "tok1").await;
    drop(server);

    // A source that does not exist yet: lookups fail (503) until it appears, then work.
    let later = tmp.path().join("later.cfg");
    let server = TestServer::start(token_config("TokenFile", path_str(&later))).await;
    let (_conn, reply) = upgrade(server.addr, &query("tok0"), "").await;
    assert_refused(&reply, 503, "Token lookup failed", "token file missing");
    write(&later, format!("tok0: {}\n", targets[0].0));
    assert_routes(server.addr, "tok0", "target-0").await;
}

#[tokio::test]
async fn token_file_directory_and_read_only_token_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(4).await;
    let dir = tmp.path().join("tokens.d");
    std::fs::create_dir(&dir).expect("mkdir");
    write(
        &dir.join("a.conf"),
        format!("tok0: {}\ntok1: {}\n", targets[0].0, targets[1].0),
    );
    write(
        &dir.join("b.conf"),
        format!("tok2: {}\ntok3: {}\n", targets[2].0, targets[3].0),
    );
    let routes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("tok{i}"), targets[i].1.clone()))
        .collect();

    let server = TestServer::start(token_config("TokenFile", path_str(&dir))).await;
    assert_concurrent_routing(server.addr, &routes, 20).await;
    assert_unknown(server.addr, "tok4").await;
    // A new file in the directory is picked up without a restart.
    let fresh = named_target("target-new").await;
    write(&dir.join("c.conf"), format!("tok4: {fresh}\n"));
    assert_routes(server.addr, "tok4", "target-new").await;
    std::fs::remove_file(dir.join("c.conf")).expect("rm");
    assert_unknown(server.addr, "tok4").await;
    drop(server);

    // ReadOnlyTokenFile: the same files, read once and kept (upstream never reloads).
    let server = TestServer::start(token_config("ReadOnlyTokenFile", path_str(&dir))).await;
    assert_concurrent_routing(server.addr, &routes, 8).await;
    write(&dir.join("c.conf"), format!("tok4: {fresh}\n"));
    assert_unknown(server.addr, "tok4").await;
    assert_missing(server.addr).await;
    drop(server);

    let file = dir.join("a.conf");
    let server = TestServer::start(token_config(
        "websockify.token_plugins.ReadOnlyTokenFile",
        path_str(&file),
    ))
    .await;
    assert_routes(server.addr, "tok1", "target-1").await;
    assert_unknown(server.addr, "tok2").await;
}

#[tokio::test]
async fn token_file_name_reads_one_file_per_token() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(4).await;
    let dir = tmp.path().join("tokens");
    std::fs::create_dir(&dir).expect("mkdir");
    for (i, (addr, _)) in targets.iter().enumerate() {
        write(&dir.join(format!("vm{i}")), format!("{addr}\n"));
    }
    // A file outside the directory that `..` would reach.
    write(&tmp.path().join("escape"), format!("{}\n", targets[0].0));
    let server = TestServer::start(token_config("TokenFileName", path_str(&dir))).await;
    let addr = server.addr;
    let routes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("vm{i}"), targets[i].1.clone()))
        .collect();
    assert_concurrent_routing(addr, &routes, 20).await;
    for token in ["vm9", "../escape", "..", ".", "sub/vm0", "/etc/hostname"] {
        assert_unknown(addr, token).await;
    }
    assert_missing(addr).await;
    // A file added later is a new token at once (files are read per lookup).
    let fresh = named_target("target-new").await;
    write(&dir.join("later"), fresh.to_string());
    assert_routes(addr, "later", "target-new").await;
}

#[tokio::test]
async fn target_config_is_token_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(2).await;
    let file = tmp.path().join("targets.cfg");
    write(
        &file,
        format!("alpha: {}\nbeta: {}\n", targets[0].0, targets[1].0),
    );
    // The dotted class name, in-process.
    let server = TestServer::start(token_config(
        "websockify.token_plugins.TokenFile",
        path_str(&file),
    ))
    .await;
    assert_routes(server.addr, "alpha", "target-0").await;
    assert_unknown(server.addr, "gamma").await;
    drop(server);

    // `--target-config FILE` on the real command line.
    let child = spawn_websockify(&["--target-config", path_str(&file), "127.0.0.1:0"]);
    let line = tokio::task::spawn_blocking(move || {
        let line = child.wait_for_line("listening on");
        (child, line)
    });
    let (child, line) = within("banner", line).await.expect("banner");
    let addr = listening_addr(&line);
    assert_routes(addr, "beta", "target-1").await;
    assert_unknown(addr, "gamma").await;
    assert_missing(addr).await;
    drop(child);

    // An unknown plugin is a clear start-up error.
    let (code, _out, err) = run_websockify(&[
        "--token-plugin",
        "NoSuchPlugin",
        "--token-source",
        path_str(&file),
        "127.0.0.1:0",
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("NoSuchPlugin") && err.contains("TokenFile"),
        "unclear error: {err}"
    );
}

// ---- tokens: HTTP APIs ----------------------------------------------------------------------

/// A token service on 127.0.0.1: `GET /lookup/<url-encoded token>` answers the body mapped to
/// the decoded token, else 404. Reports each raw request target.
struct TokenService {
    addr: SocketAddr,
    requests: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl TokenService {
    async fn start(answers: HashMap<String, String>) -> TokenService {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
        let answers = Arc::new(answers);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, answers) = (tx.clone(), Arc::clone(&answers));
                tokio::spawn(async move {
                    let mut conn = Conn::new(stream);
                    // Keep-alive: the backend pools its connections.
                    while let Some(head) = conn.head().await {
                        let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                        let _ = tx.send(target.clone());
                        let answer = target
                            .strip_prefix("/lookup/")
                            .map(|t| percent_decode_str(t).decode_utf8_lossy().into_owned())
                            .and_then(|token| answers.get(&token).cloned());
                        let (status, body) = match answer {
                            Some(body) => ("200 OK", body),
                            None => ("404 Not Found", "no such token".to_owned()),
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.stream.write_all(response.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        TokenService { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/lookup/%s", self.addr)
    }

    /// The request targets received so far.
    fn received(&mut self) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(target) = self.requests.try_recv() {
            got.push(target);
        }
        got
    }
}

/// A token that needs percent-encoding in a URL (space, `/`, `?`, `&`, `=`, `+`, `%`, `#`,
/// non-ASCII).
const AWKWARD_TOKEN: &str = "vm 1/ä?&x=y+z%#";

#[tokio::test]
async fn base_token_api_asks_a_real_http_service() {
    let targets = named_targets(4).await;
    let mut answers: HashMap<String, String> = (0..4)
        .map(|i| (format!("api{i}"), targets[i].0.to_string()))
        .collect();
    answers.insert(AWKWARD_TOKEN.into(), targets[3].0.to_string());
    answers.insert("garbage".into(), "this is not host:port".into());
    let mut service = TokenService::start(answers).await;
    let server = TestServer::start(token_config("BaseTokenAPI", &service.url())).await;
    let addr = server.addr;
    let routes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("api{i}"), targets[i].1.clone()))
        .collect();
    assert_concurrent_routing(addr, &routes, 20).await;
    assert_eq!(service.received().len(), 20, "one lookup per session");

    assert_routes(addr, AWKWARD_TOKEN, "target-3").await;
    let asked = service.received();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let encoded = asked[0].strip_prefix("/lookup/").expect("path");
    assert!(
        !encoded.contains([' ', '/', '?', '&', '#', '+']),
        "token not URL-encoded: {encoded}"
    );
    assert_eq!(
        percent_decode_str(encoded).decode_utf8_lossy(),
        AWKWARD_TOKEN
    );

    assert_unknown(addr, "api9").await;
    assert_missing(addr).await;
    let (_conn, reply) = upgrade(addr, &query("garbage"), "").await;
    assert_refused(
        &reply,
        503,
        "Token lookup failed",
        "answer that is not a target",
    );
    drop(server);

    // The service is down.
    let closed = closed_port();
    let down = format!("http://{}/lookup/%s", closed.addr);
    let server = TestServer::start(token_config("BaseTokenAPI", &down)).await;
    let (_conn, reply) = upgrade(server.addr, &query("api0"), "").await;
    assert_refused(&reply, 503, "Token lookup failed", "token service down");
}

#[tokio::test]
async fn json_token_api_asks_a_real_http_service() {
    let targets = named_targets(4).await;
    let mut answers: HashMap<String, String> = (0..4)
        .map(|i| {
            let (addr, _) = &targets[i];
            let body = json!({"host": addr.ip().to_string(), "port": addr.port()});
            (format!("json{i}"), body.to_string())
        })
        .collect();
    let (addr3, _) = targets[3];
    answers.insert(
        AWKWARD_TOKEN.into(),
        json!({"host": "127.0.0.1", "port": addr3.port().to_string()}).to_string(),
    );
    answers.insert("notjson".into(), format!("{addr3}"));
    let mut service = TokenService::start(answers).await;
    let server = TestServer::start(token_config("JSONTokenApi", &service.url())).await;
    let addr = server.addr;
    let routes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("json{i}"), targets[i].1.clone()))
        .collect();
    assert_concurrent_routing(addr, &routes, 20).await;
    assert_routes(addr, AWKWARD_TOKEN, "target-3").await;
    let asked = service.received();
    let last = asked.last().expect("lookups");
    assert_eq!(
        percent_decode_str(last.strip_prefix("/lookup/").unwrap()).decode_utf8_lossy(),
        AWKWARD_TOKEN
    );
    assert_unknown(addr, "json9").await;
    let (_conn, reply) = upgrade(addr, &query("notjson"), "").await;
    assert_refused(
        &reply,
        503,
        "Token lookup failed",
        "answer that is not JSON",
    );
    drop(server);

    let closed = closed_port();
    let down = format!("http://{}/lookup/%s", closed.addr);
    let server = TestServer::start(token_config("JSONTokenApi", &down)).await;
    let (_conn, reply) = upgrade(server.addr, &query("json0"), "").await;
    assert_refused(&reply, 503, "Token lookup failed", "token service down");
}

#[tokio::test]
async fn token_api_that_never_answers_times_out_with_503() {
    // Accepts connections and reads, but never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let url = format!("http://{silent}/lookup/%s");
    let server = TestServer::start(token_config("JSONTokenApi", &url)).await;
    let started = std::time::Instant::now();
    let (_conn, reply) = upgrade(server.addr, &query("t"), "").await;
    assert_refused(&reply, 503, "Token lookup failed", "silent token service");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(3),
        "gave up after {waited:?}, before the lookup deadline"
    );
}

// ---- tokens: JWT ----------------------------------------------------------------------------

/// A 2048-bit RSA key made for these tests (PKCS#8), and its public key.
const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCifb9mha7jfUb7
yvyqqFOPBHsxnL78qZl/grjdHPFG8SEdEhZwi4HI7kz2zSvTAkt4k/o0pAjVOJuS
6Og1Gs58mXFfMpAe5jSnLeJAGobj6lMlR8Ps0XfeNPPVtH/LppuCYZv04GbDAYNS
nDs3IcdrprgqbFd2X83R5JQqcOJFJNGvYXzGq8GRw2lvJC6bEmOeZm23+yqpOf9j
D4ovXKyXJ/zEe3R1Blv43TRc7Rqig5cS53P+USz8+mwP4oX2OQAm7NbmHUqQBQdL
jPUjh8mTaWAcTZFmTPFwEJjYH3XbGxxMFE3MbVShxzVHf8UTFJYkIIsxrdi00/du
nUiwvM/HAgMBAAECggEAJ2LemY2u2iJ8Kb1GqGEbu+9kox5w5tJ/S/qWL7Z7v2vk
UGUZflc6csdcbXhG9qM4QvZvcAIQyAosH5yH6JNiWK5i3iXl7C91tM446LvlVWpv
k/pEwer2KKziK7tQPL9aM2zQfjdEgWElAUmwSslLysrDGjlfq+hF/envhigNmJ+U
KzvFOyXO6Q8/PJqKowoCgGT/Ex9PowYsT4Kgg+J1R+RigYOl7Co0Dc4zbZDAYX5p
QnwS2yjyuz8nzdjYUtdz72Wxbvt3bQjeW8KU4K8z9wB5SY6NCwoRc6tJPZYbWPKL
YSJBZimq2ngw1VlDibDb4VcbTk2SaNWQUrb+hMYozQKBgQDizCYrAnIkfRxDmLbZ
3QwRc27bPIqoVc9DwPqtVIKZw+fyDAbfFXyJd20QnBjtcyJG6rwvJ5s20/sFiMF3
nr2mk4oL5m+UKjsWQBncWW0SbAldYMwcAI8OtvIr026viY8A5YwpU94j2Fgf6THj
cwcmC3iK/1YaTaJLpt1Z5ztuawKBgQC3aeRxN4WB/jGU7EZkfFQFNezvw4qSSm15
p27LO4tSxfG9OTsBI68cEFpKpK41rITcA/PXwiSJ4t2W+HEOzEoQlXJUs40nKBIJ
A6J3MmKkz686nKGfh4zGOjcC4HUqR/G9ujE9c3UwMDmNMXhGSEIDUp1/0Lv0F8MT
uknPzRSDFQKBgQCC92rPCWGKiqjIrCZjFs/CQAtzFLnpTWwb7xOTBitIyiVl0+Yf
6tN4untDzTBj5kmT9Ddpb5ClD7J0Vq2J+yP/TlG4X4Btahmm1qtYYFeo/LRHtP8I
6JWz5JdiEX1oZqIq3WOb9e9gea0h+FKzypgFMziP47UACXbAAwLtyKa8MwKBgBaX
LFPlisQgEutMzr7BsXeS1MQTSZYLJMC/Jp5Rjy96wfOUgPf69S53tSdMcUibHyIa
OoZwmx+Amdpmb0ZrUxQH1DUqiFAyV0ZU9EXKJuw1yFdnw2BqyaQAt5XbH5M9mUDN
FhODjQOKbQw+85l0fOz71/pOM1g1NQnRABZgJA6hAoGALRFg0DcZJA9xQk5Dt+d6
TgTXnb5YIfV+w3AkZdTeKLYM3VWkFoNORrw8JD6Ig4nisVdqqdRAmC991jvA2Y9W
1k0+kAIGgzxtHsKaRlFFyaRANxj6rHs0wftThP1iVVD/4AR4FfNZw7ddAfbNEGmJ
WMoy+SageM+CTm4F8XFLjtE=
-----END PRIVATE KEY-----
";

const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAon2/ZoWu431G+8r8qqhT
jwR7MZy+/KmZf4K43RzxRvEhHRIWcIuByO5M9s0r0wJLeJP6NKQI1TibkujoNRrO
fJlxXzKQHuY0py3iQBqG4+pTJUfD7NF33jTz1bR/y6abgmGb9OBmwwGDUpw7NyHH
a6a4KmxXdl/N0eSUKnDiRSTRr2F8xqvBkcNpbyQumxJjnmZtt/sqqTn/Yw+KL1ys
lyf8xHt0dQZb+N00XO0aooOXEudz/lEs/PpsD+KF9jkAJuzW5h1KkAUHS4z1I4fJ
k2lgHE2RZkzxcBCY2B912xscTBRNzG1Uocc1R3/FExSWJCCLMa3YtNP3bp1IsLzP
xwIDAQAB
-----END PUBLIC KEY-----
";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// A JWT for `target`, valid for ten minutes unless `claims` says otherwise.
fn jwt(
    algorithm: Algorithm,
    key: &EncodingKey,
    target: SocketAddr,
    extra: serde_json::Value,
) -> String {
    let mut claims = json!({
        "host": target.ip().to_string(),
        "port": target.port(),
        "exp": now() + 600,
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            claims.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(&Header::new(algorithm), &claims, key).expect("sign JWT")
}

#[tokio::test]
async fn jwt_tokens_signed_here_route_and_bad_ones_are_unknown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(4).await;
    let none = json!({});

    // HS256: the key file holds the secret base64url-encoded (upstream reads it as a JWK
    // `k`); its raw text works too.
    let secret = b"a test secret of thirty-two bytes";
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let secret_file = tmp.path().join("hmac.key");
    write(&secret_file, format!("{text}\n"));
    let server = TestServer::start(token_config("JWTTokenApi", path_str(&secret_file))).await;
    let addr = server.addr;
    let key = EncodingKey::from_secret(secret);
    let routes: Vec<(String, String)> = targets
        .iter()
        .map(|(target, name)| {
            (
                jwt(Algorithm::HS256, &key, *target, none.clone()),
                name.clone(),
            )
        })
        .collect();
    assert_concurrent_routing(addr, &routes, 20).await;
    let raw_text_key = EncodingKey::from_secret(text.as_bytes());
    assert_routes(
        addr,
        &jwt(Algorithm::HS384, &raw_text_key, targets[1].0, none.clone()),
        "target-1",
    )
    .await;
    let string_port = json!({"port": targets[2].0.port().to_string()});
    assert_routes(
        addr,
        &jwt(Algorithm::HS512, &key, targets[0].0, string_port),
        "target-2",
    )
    .await;
    let expired = jwt(
        Algorithm::HS256,
        &key,
        targets[0].0,
        json!({"exp": now() - 600}),
    );
    assert_unknown(addr, &expired).await;
    let early = jwt(
        Algorithm::HS256,
        &key,
        targets[0].0,
        json!({"nbf": now() + 600}),
    );
    assert_unknown(addr, &early).await;
    let wrong_key = EncodingKey::from_secret(b"another secret entirely, not ours");
    assert_unknown(
        addr,
        &jwt(Algorithm::HS256, &wrong_key, targets[0].0, none.clone()),
    )
    .await;
    // A valid signature over other claims: swap the payload of a good token.
    let good = &routes[0].0;
    let other = jwt(Algorithm::HS256, &wrong_key, targets[2].0, none.clone());
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_unknown(addr, &forged).await;
    assert_unknown(addr, "not.a.jwt").await;
    assert_missing(addr).await;
    drop(server);

    // RS256 with a public key file; a token signed by HMAC with that public key is refused.
    let public_file = tmp.path().join("rsa_pub.pem");
    write(&public_file, RSA_PUBLIC);
    let server = TestServer::start(token_config("JWTTokenApi", path_str(&public_file))).await;
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa key");
    let routes: Vec<(String, String)> = targets
        .iter()
        .map(|(target, name)| {
            (
                jwt(Algorithm::RS256, &rsa, *target, none.clone()),
                name.clone(),
            )
        })
        .collect();
    assert_concurrent_routing(server.addr, &routes, 8).await;
    let expired = jwt(
        Algorithm::RS256,
        &rsa,
        targets[0].0,
        json!({"exp": now() - 1}),
    );
    assert_unknown(server.addr, &expired).await;
    let confused = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
    assert_unknown(
        server.addr,
        &jwt(Algorithm::HS256, &confused, targets[0].0, none.clone()),
    )
    .await;
    drop(server);

    // ES256 with a key pair made by rcgen.
    let pair = KeyPair::generate().expect("P-256 key");
    let public_file = tmp.path().join("ec_pub.pem");
    write(&public_file, pair.public_key_pem());
    let server = TestServer::start(token_config("JWTTokenApi", path_str(&public_file))).await;
    let ec = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("ec key");
    assert_routes(
        server.addr,
        &jwt(Algorithm::ES256, &ec, targets[2].0, none.clone()),
        "target-2",
    )
    .await;
    let stranger = KeyPair::generate().expect("P-256 key");
    let stranger = EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).expect("ec");
    assert_unknown(
        server.addr,
        &jwt(Algorithm::ES256, &stranger, targets[2].0, none),
    )
    .await;
}

// ---- tokens: Redis --------------------------------------------------------------------------

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A redis-server child, killed and reaped on drop.
struct Redis {
    child: std::process::Child,
    port: u16,
    password: Option<String>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    /// Starts redis-server on `port` (a free one if 0), with `password` if given; returns once
    /// it logs that it accepts connections. redis-server cannot be handed a listening socket,
    /// so a free port comes from `on_free_port`, which starts it again on another port if the
    /// port was taken meanwhile.
    async fn start(port: u16, password: Option<&str>) -> Redis {
        block(|| match port {
            0 => on_free_port(|port| Redis::spawn(port, password)),
            port => Redis::spawn(port, password)
                .unwrap_or_else(|why| panic!("redis-server on port {port}: {why}")),
        })
    }

    /// Spawns redis-server on `port` and waits (bounded) until it accepts connections; `Err`
    /// when the port was taken.
    fn spawn(port: u16, password: Option<&str>) -> Result<Redis, String> {
        let mut command = Command::new(REDIS_SERVER);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""]);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        // The reader keeps draining until EOF, so the server never blocks on a full pipe.
        let lines = lines_of(child.stdout.take().expect("stdout"));
        let redis = Redis {
            child,
            port,
            password: password.map(str::to_owned),
        };
        let deadline = std::time::Instant::now() + STEP;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("Ready to accept connections") => return Ok(redis),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        let seen = seen.join("\n");
        if seen.contains("in use") {
            return Err(seen);
        }
        panic!("redis-server on port {port} did not get ready within {STEP:?}:\n{seen}");
    }

    async fn set(&self, db: i64, pairs: &[(&str, String)]) {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        let url = format!("redis://{auth}127.0.0.1:{}/{db}", self.port);
        let client = redis::Client::open(url).expect("redis client");
        let mut connection = within("redis connect", client.get_multiplexed_async_connection())
            .await
            .expect("redis connect");
        for (key, value) in pairs {
            within(
                "redis SET",
                redis::cmd("SET")
                    .arg(*key)
                    .arg(value)
                    .query_async::<()>(&mut connection),
            )
            .await
            .expect("SET");
        }
    }
}

fn redis_missing() -> bool {
    let missing = !Path::new(REDIS_SERVER).exists();
    if missing {
        skip_or_fail(&format!(
            "{REDIS_SERVER} not installed (apt-get install redis-server)"
        ));
    }
    missing
}

#[tokio::test]
async fn redis_tokens_against_a_real_redis_server() {
    if redis_missing() {
        return;
    }
    let redis = Redis::start(0, None).await;
    let port = redis.port;
    let targets = named_targets(4).await;
    let t = |i: usize| targets[i].0;
    let db0 = [
        ("r0", json!({"host": t(0).to_string()}).to_string()),
        ("r1", t(1).to_string()),
        ("r2", format!("  {}\n", t(2))),
        ("r3", json!({"host": t(3).to_string()}).to_string()),
        ("bad", "no target here".into()),
    ];
    redis.set(0, &db0).await;
    // db 3 with a namespace holding ':' (upstream's quoting rule).
    redis
        .set(
            3,
            &[("ns:inner:r0", t(3).to_string()), ("r1", t(0).to_string())],
        )
        .await;

    let plain = format!("127.0.0.1:{port}");
    let server = TestServer::start(token_config("TokenRedis", &plain)).await;
    let addr = server.addr;
    let routes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("r{i}"), targets[i].1.clone()))
        .collect();
    assert_concurrent_routing(addr, &routes, 20).await;
    assert_unknown(addr, "r9").await;
    assert_unknown(addr, "ns:inner:r0").await; // lives in db 3 only
    assert_missing(addr).await;
    let (_conn, reply) = upgrade(addr, &query("bad"), "").await;
    assert_refused(
        &reply,
        503,
        "Token lookup failed",
        "a value that is no target",
    );

    let namespaced = format!("127.0.0.1:{port}:3::\"ns:inner\"");
    let ns_server = TestServer::start(token_config("TokenRedis", &namespaced)).await;
    assert_routes(ns_server.addr, "r0", "target-3").await;
    assert_unknown(ns_server.addr, "r1").await; // not under the namespace
    assert_unknown(ns_server.addr, "r2").await;

    // Redis goes away: lookups fail with 503, not 404 and not a silent close.
    drop(redis);
    let (_conn, reply) = upgrade(addr, &query("r0"), "").await;
    assert_refused(&reply, 503, "Token lookup failed", "Redis down");
    // Redis comes back on the same port: the same websockify reconnects, no restart.
    let redis = Redis::start(port, None).await;
    redis.set(0, &db0).await;
    assert_routes(addr, "r1", "target-1").await;
    assert_routes(addr, "r0", "target-0").await;
}

#[tokio::test]
async fn redis_tokens_with_a_password() {
    if redis_missing() {
        return;
    }
    let redis = Redis::start(0, Some("s3cr:et")).await;
    let target = named_target("target-0").await;
    redis.set(1, &[("ns:tok", target.to_string())]).await;
    // Upstream's quoting lets the password hold ':'.
    let good = format!("127.0.0.1:{}:1:\"s3cr:et\":ns", redis.port);
    let server = TestServer::start(token_config("TokenRedis", &good)).await;
    assert_routes(server.addr, "tok", "target-0").await;
    assert_unknown(server.addr, "ns:tok").await;
    drop(server);
    for source in [
        format!("127.0.0.1:{}:1:wrong:ns", redis.port),
        format!("127.0.0.1:{}:1", redis.port),
    ] {
        let server = TestServer::start(token_config("TokenRedis", &source)).await;
        let (_conn, reply) = upgrade(server.addr, &query("tok"), "").await;
        assert_refused(&reply, 503, "Token lookup failed", &source);
    }
}

// ---- tokens: unix socket directory, Host header ---------------------------------------------

#[tokio::test]
async fn unix_domain_socket_directory_stays_inside_its_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("socks");
    let sibling = tmp.path().join("socks2");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::create_dir(&sibling).expect("mkdir");
    for i in 0..4 {
        named_unix_target(&dir.join(format!("vm{i}.sock")), &format!("target-{i}"));
    }
    named_unix_target(&sibling.join("x.sock"), "escaped");
    named_unix_target(&tmp.path().join("top.sock"), "escaped");
    std::os::unix::fs::symlink(sibling.join("x.sock"), dir.join("link.sock")).expect("symlink");
    write(&dir.join("plain"), "not a socket");

    let absolute = sibling.join("x.sock").display().to_string();
    let server = TestServer::start(token_config("UnixDomainSocketDirectory", path_str(&dir))).await;
    let addr = server.addr;
    let routes: Vec<(String, String)> = (0..4)
        .map(|i| (format!("vm{i}.sock"), format!("target-{i}")))
        .collect();
    assert_concurrent_routing(addr, &routes, 20).await;
    for token in [
        "../socks2/x.sock",
        "../top.sock",
        "..",
        ".",
        "link.sock",
        "plain",
        "missing.sock",
        "/etc/../tmp/x.sock",
        absolute.as_str(),
        "..\\socks2\\x.sock",
    ] {
        assert_unknown(addr, token).await;
    }
    assert_missing(addr).await;
}

#[tokio::test]
async fn host_token_takes_the_token_from_the_host_header() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(2).await;
    let file = tmp.path().join("hosts.cfg");
    write(
        &file,
        format!(
            "vnc1.example: {}\nvnc2.example: {}\n::1: {}\n",
            targets[0].0, targets[1].0, targets[1].0
        ),
    );
    let mut config = token_config("TokenFile", path_str(&file));
    if let Some(token) = config.token.as_mut() {
        token.host_token = true;
    }
    let server = TestServer::start(config).await;
    let addr = server.addr;
    for (host, name) in [
        ("vnc1.example:6080", "target-0"),
        ("vnc2.example", "target-1"),
        ("vnc1.example:443", "target-0"),
        // An IPv6 literal: the token is the address without brackets and port (upstream cuts
        // at the first ':').
        ("[::1]:6080", "target-1"),
    ] {
        let mut conn = connect(addr).await;
        let reply = conn.request(&upgrade_request(host, "")).await;
        assert_switched(&reply, host);
        assert_eq!(conn.ws_line().await, name, "Host: {host}");
        conn.ws_echo(b"by host").await;
    }
    // The Host header wins over a query token.
    let mut conn = connect(addr).await;
    let reply = conn
        .request(&upgrade_request_for(
            "/websockify?token=vnc1.example",
            "other.example",
            "",
        ))
        .await;
    assert_refused(&reply, 404, "Token not found", "unknown Host");
    // No Host header at all: a 400, never a silent close.
    let mut conn = connect(addr).await;
    let reply = conn
        .request(
            "GET /websockify HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await;
    assert_eq!(reply.status, 400, "no Host header: {reply:?}");
}

#[tokio::test]
async fn token_cookie_takes_the_token_from_a_cookie() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(2).await;
    let file = tmp.path().join("tokens.cfg");
    write(
        &file,
        format!("vm1: {}\nvm two: {}\n", targets[0].0, targets[1].0),
    );
    let mut config = token_config("TokenFile", path_str(&file));
    config.token_cookie = Some("vnc_token".into());
    let server = TestServer::start(config).await;
    let addr = server.addr;
    for (cookies, name) in [
        ("Cookie: vnc_token=vm1\r\n", "target-0"),
        // Among other cookies, with spaces, quoted, percent-encoded (encodeURIComponent).
        (
            "Cookie: session=abc;  vnc_token=vm1 ; theme=dark\r\n",
            "target-0",
        ),
        ("Cookie: vnc_token=\"vm1\"\r\n", "target-0"),
        ("Cookie: vnc_token=vm%20two\r\n", "target-1"),
        ("Cookie: a=b\r\nCookie: vnc_token=vm1\r\n", "target-0"),
    ] {
        let (mut conn, reply) = upgrade(addr, "/websockify", cookies).await;
        assert_switched(&reply, cookies);
        assert_eq!(conn.ws_line().await, name, "{cookies}");
        conn.ws_echo(b"by cookie").await;
    }
    // Only the cookie counts: the cookie wins over ?token=, and ?token= alone is no token.
    let (mut conn, reply) = upgrade(
        addr,
        "/websockify?token=vm%20two",
        "Cookie: vnc_token=vm1\r\n",
    )
    .await;
    assert_switched(&reply, "cookie and query");
    assert_eq!(conn.ws_line().await, "target-0");
    for (path, cookies) in [
        ("/websockify", ""),
        ("/websockify?token=vm1", ""),
        ("/websockify", "Cookie: other=vm1; VNC_TOKEN=vm1\r\n"),
        ("/websockify", "Cookie: vnc_token=\r\n"),
    ] {
        let (_conn, reply) = upgrade(addr, path, cookies).await;
        assert_refused(
            &reply,
            400,
            "Token not present",
            &format!("{path} {cookies}"),
        );
        assert!(reply.text().contains("cookie vnc_token"), "{reply:?}");
    }
    let (_conn, reply) = upgrade(addr, "/websockify", "Cookie: vnc_token=vm3\r\n").await;
    assert_refused(&reply, 404, "Token not found", "unknown cookie token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_path_takes_the_token_from_the_last_path_segment_and_never_logs_it() {
    const TOKEN: &str = "pAtHtOkEn-5e1d";
    let tmp = tempfile::tempdir().expect("tempdir");
    let targets = named_targets(2).await;
    let file = tmp.path().join("tokens.cfg");
    write(
        &file,
        format!("{TOKEN}: {}\nvm two: {}\n", targets[0].0, targets[1].0),
    );
    let (child, addr) = start_websockify(&[
        "--verbose",
        "--token-plugin",
        "TokenFile",
        "--token-source",
        path_str(&file),
        "--token-path",
        "127.0.0.1:0",
    ]);
    for (path, name) in [
        (format!("/websockify/{TOKEN}"), "target-0"),
        (format!("/{TOKEN}"), "target-0"),
        (format!("/proxy/vnc/{TOKEN}?token=vm%20two&x=1"), "target-0"),
        ("/websockify/vm%20two".to_owned(), "target-1"),
    ] {
        let (mut conn, reply) = upgrade(addr, &path, "").await;
        assert_switched(&reply, &path);
        assert_eq!(conn.ws_line().await, name, "{path}");
        conn.ws_echo(b"by path").await;
    }
    for path in ["/websockify/", "/websockify/?token=vm1", "/"] {
        let (_conn, reply) = upgrade(addr, path, "").await;
        assert_refused(&reply, 400, "Token not present", path);
    }
    let (_conn, reply) = upgrade(addr, "/websockify/uNkNoWn-77a1", "").await;
    assert_refused(&reply, 404, "Token not found", "unknown path token");

    let lines = stop_and_collect(child).await;
    let log = lines.join("\n");
    assert!(
        log.contains("/websockify/<token>"),
        "no path logged:\n{log}"
    );
    assert!(log.contains("session closed"), "no session logged:\n{log}");
    assert_no_token(&lines, &[TOKEN, "uNkNoWn-77a1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_never_contains_the_token() {
    const GOOD: &str = "gOoDtOkEn-71c2e9";
    const UNKNOWN: &str = "uNkNoWnToKeN-9f3e5a";
    let tmp = tempfile::tempdir().expect("tempdir");
    let echo = echo_server().await;
    // Line 2 is a syntax error whose text holds a token: reported by file and line only.
    const BAD_LINE: &str = "bAdLiNeToKeN-44d1 127.0.0.1:5900";
    let file = tmp.path().join("tokens.cfg");
    write(&file, format!("{GOOD}: {echo}\n{BAD_LINE}\n"));
    let web = tmp.path().join("www");
    std::fs::create_dir(&web).expect("mkdir");
    write(&web.join("vnc.html"), "<p>vnc</p>");
    let (child, addr) = start_websockify(&[
        "--verbose",
        "--web",
        path_str(&web),
        "--token-plugin",
        "TokenFile",
        "--token-source",
        path_str(&file),
        "127.0.0.1:0",
    ]);

    let (_conn, reply) = upgrade(addr, &query(UNKNOWN), "").await;
    assert_refused(&reply, 404, "Token not found", "unknown token");
    let (_conn, reply) = upgrade(addr, &format!("/websockify?token={UNKNOWN}&x=1"), "").await;
    assert_eq!(reply.status, 404);
    let (mut conn, reply) = upgrade(addr, &query(GOOD), "").await;
    assert_switched(&reply, "good token");
    conn.ws_echo(b"secret-free log").await;
    drop(conn);
    // File requests with the token in the query (as noVNC's page URL may carry it).
    let reply = fetch(addr, "GET", &format!("/vnc.html?token={GOOD}"), "").await;
    assert_eq!(reply.status, 200);
    let reply = fetch(addr, "GET", &format!("/missing?token={GOOD}"), "").await;
    assert_eq!(reply.status, 404);

    let lines = stop_and_collect(child).await;
    let log = lines.join("\n");
    assert!(log.contains("Token not found"), "no refusal logged:\n{log}");
    assert!(log.contains("session closed"), "no session logged:\n{log}");
    assert!(
        lines.iter().any(|l| l.contains("syntax error")
            && l.contains(path_str(&file))
            && l.contains("line=2")),
        "the syntax error is not reported with its file and line:\n{log}"
    );
    assert_no_token(&lines, &[GOOD, UNKNOWN, "bAdLiNeToKeN"]);
}

/// SIGTERM, wait for the exit, and return every stderr line after the banner.
async fn stop_and_collect(child: ChildGuard) -> Vec<String> {
    child.signal(Signal::SIGTERM);
    let (child, _status) = within("websockify exit", watch_exit(child))
        .await
        .expect("exit");
    let mut lines = Vec::new();
    block(|| {
        // Ends when the process's stderr closes (it has exited).
        while let Ok(line) = child.stderr_lines.recv_timeout(STEP) {
            lines.push(line);
        }
    });
    lines
}

fn assert_no_token(lines: &[String], tokens: &[&str]) {
    for token in tokens {
        assert!(
            !lines.iter().any(|l| l.contains(token)),
            "the log shows token {token}:\n{}",
            lines.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_and_jwt_backends_do_not_log_tokens_either() {
    const TOKEN: &str = "aPiToKeN-5e7b10";
    let tmp = tempfile::tempdir().expect("tempdir");
    // BaseTokenAPI: a service that is down, then one that answers garbage.
    let closed = closed_port();
    let down = format!("http://{}/lookup/%s", closed.addr);
    let (child, addr) = start_websockify(&[
        "-v",
        "--token-plugin",
        "BaseTokenAPI",
        "--token-source",
        &down,
        "127.0.0.1:0",
    ]);
    let (_conn, reply) = upgrade(addr, &query(TOKEN), "").await;
    assert_refused(&reply, 503, "Token lookup failed", "service down");
    let lines = stop_and_collect(child).await;
    assert!(
        lines.iter().any(|l| l.contains("token lookup failed")),
        "{lines:#?}"
    );
    assert_no_token(&lines, &[TOKEN]);

    let service = TokenService::start(HashMap::from([(
        TOKEN.to_owned(),
        "not a target".to_owned(),
    )]))
    .await;
    let (child, addr) = start_websockify(&[
        "-v",
        "--token-plugin",
        "JSONTokenApi",
        "--token-source",
        &service.url(),
        "127.0.0.1:0",
    ]);
    let (_conn, reply) = upgrade(addr, &query(TOKEN), "").await;
    assert_refused(
        &reply,
        503,
        "Token lookup failed",
        "answer that is no target",
    );
    let (_conn, reply) = upgrade(addr, &query("aPiToKeN-unknown"), "").await;
    assert_eq!(reply.status, 404);
    assert_no_token(&stop_and_collect(child).await, &[TOKEN, "aPiToKeN-unknown"]);

    // JWTTokenApi: refused tokens (bad signature, expired) are logged by reason and tag.
    let secret_file = tmp.path().join("hmac.key");
    write(&secret_file, "the-secret");
    let (child, addr) = start_websockify(&[
        "-v",
        "--token-plugin",
        "JWTTokenApi",
        "--token-source",
        path_str(&secret_file),
        "127.0.0.1:0",
    ]);
    let closed = closed_port();
    let target = closed.addr;
    let wrong = jwt(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret"),
        target,
        json!({}),
    );
    let expired = jwt(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"the-secret"),
        target,
        json!({"exp": now() - 60}),
    );
    for token in [&wrong, &expired] {
        assert_unknown(addr, token).await;
    }
    let lines = stop_and_collect(child).await;
    assert!(
        lines.iter().any(|l| l.contains("JWT rejected")),
        "{lines:#?}"
    );
    // Each JWT's signature part is unique to it; its payload and header are not secret-free
    // either, so none of the three parts may appear.
    let parts: Vec<&str> = [&wrong, &expired]
        .iter()
        .flat_map(|t| t.split('.'))
        .collect();
    assert_no_token(&lines, &parts);
}

// ---- authentication -------------------------------------------------------------------------

fn basic(credentials: &str) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

fn auth_config(target: SocketAddr, plugin: &str, source: &str) -> Config {
    let mut config = config_to(target);
    config.auth.plugin = Some(plugin.into());
    config.auth.source = Some(source.into());
    config
}

#[tokio::test]
async fn basic_http_auth_answers_every_case() {
    let config = auth_config(echo_server().await, "BasicHTTPAuth", "alice:pa:ss word");
    let server = TestServer::start(config).await;
    let addr = server.addr;

    let (_conn, reply) = upgrade(addr, "/websockify", "").await;
    assert_eq!(reply.status, 401, "no credentials: {reply:?}");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Basic realm=\"Websockify\"")
    );
    for (extra, status, what) in [
        (basic("alice:wrong"), 401, "wrong password"),
        (basic("bob:pa:ss word"), 401, "wrong user"),
        (basic("alice:pa:ss wor"), 401, "password prefix"),
        (
            "Authorization: Bearer abc.def\r\n".to_owned(),
            401,
            "not Basic",
        ),
        (
            "Authorization: Basic !!!not base64!!!\r\n".to_owned(),
            400,
            "bad base64",
        ),
        (
            "Authorization: Basic YWxpY2U=\r\n".to_owned(),
            400,
            "no colon",
        ),
        (
            format!("{}{}", basic("alice:pa:ss word"), basic("alice:pa:ss word")),
            400,
            "two Authorization headers",
        ),
    ] {
        let (_conn, reply) = upgrade(addr, "/websockify", &extra).await;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        if status == 401 {
            assert!(reply.header("www-authenticate").is_some(), "{what}");
        }
    }
    let (mut conn, reply) = upgrade(addr, "/websockify", &basic("alice:pa:ss word")).await;
    assert_switched(&reply, "good credentials");
    conn.ws_echo(b"authenticated").await;
    // Non-ASCII credentials, as browsers send them (UTF-8).
    let server2 = TestServer::start(auth_config(
        echo_server().await,
        "BasicHTTPAuth",
        "jürgen:pässwörd",
    ))
    .await;
    let (_conn, reply) = upgrade(server2.addr, "/websockify", &basic("jürgen:pässwörd")).await;
    assert_switched(&reply, "UTF-8 credentials");
    let (_conn, reply) = upgrade(server2.addr, "/websockify", &basic("jürgen:passwort")).await;
    assert_eq!(reply.status, 401);
    // The scheme name is case-insensitive.
    let lower = basic("alice:pa:ss word").replace("Basic", "basic");
    let (_conn, reply) = upgrade(addr, "/websockify", &lower).await;
    assert_switched(&reply, "lower-case scheme");
}

#[tokio::test]
async fn expect_origin_checks_the_origin_exactly() {
    let config = auth_config(
        echo_server().await,
        "ExpectOrigin",
        "https://vnc.example.org http://localhost:6080",
    );
    let server = TestServer::start(config).await;
    let addr = server.addr;
    for (extra, what) in [
        ("", "no Origin"),
        ("Origin: https://evil.example\r\n", "other origin"),
        ("Origin: https://vnc.example.org.evil.example\r\n", "suffix"),
        ("Origin: HTTPS://VNC.EXAMPLE.ORG\r\n", "other case"),
        ("Origin: null\r\n", "null"),
        (
            "Origin: https://evil.example\r\nOrigin: https://vnc.example.org\r\n",
            "two origins",
        ),
    ] {
        let (_conn, reply) = upgrade(addr, "/websockify", extra).await;
        assert_refused(&reply, 403, "Invalid Origin", what);
    }
    for origin in ["https://vnc.example.org", "http://localhost:6080"] {
        let (mut conn, reply) =
            upgrade(addr, "/websockify", &format!("Origin: {origin}\r\n")).await;
        assert_switched(&reply, origin);
        conn.ws_echo(origin.as_bytes()).await;
    }
}

/// A TLS connection trusting `ca` (SNI `localhost`), presenting `client` if given.
async fn tls_connect(
    addr: SocketAddr,
    ca: &Ca,
    client: Option<&Identity>,
) -> Conn<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match client {
        Some(client) => builder
            .with_client_auth_cert(vec![client.cert_der.clone()], client.key_der())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let tcp = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = within(
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("TLS handshake");
    Conn::new(tls)
}

/// A wss:// upgrade presenting `client`.
async fn tls_upgrade(
    addr: SocketAddr,
    ca: &Ca,
    client: &Identity,
) -> (Conn<tokio_rustls::client::TlsStream<TcpStream>>, Reply) {
    let mut conn = tls_connect(addr, ca, Some(client)).await;
    let reply = conn.request(&upgrade_request("localhost", "")).await;
    (conn, reply)
}

/// A server certificate file for `localhost` issued by `ca` (certificate and key in one file).
fn server_cert_file(ca: &Ca, dir: &Path) -> PathBuf {
    let server_id = ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let cert_file = dir.join("self.pem");
    write(&cert_file, server_id.combined_pem());
    cert_file
}

#[tokio::test]
async fn files_and_websocket_over_tls_on_one_port() {
    let site = site();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let mut config = web_config(echo_server().await, &site.root, false);
    config.tls.cert = server_cert_file(&ca, tmp.path());
    let server = TestServer::start(config).await;
    let addr = server.addr;
    // https:// file requests, then wss:// on the same TLS connection.
    let mut conn = tls_connect(addr, &ca, None).await;
    for (name, contents, media_type) in &TYPED_FILES[..3] {
        let reply = conn
            .request(&format!("GET /{name} HTTP/1.1\r\nHost: localhost\r\n\r\n"))
            .await;
        assert_eq!(reply.status, 200, "https {name}: {reply:?}");
        assert_eq!(reply.media_type(), *media_type);
        assert_eq!(reply.body, *contents);
    }
    let reply = conn.request(&upgrade_request("localhost", "")).await;
    assert_switched(&reply, "wss after https file requests");
    conn.ws_echo(b"over TLS").await;
    // Plain http:// on the same port still serves files and WebSockets.
    let reply = fetch(addr, "GET", "/app.js", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (mut ws, reply) = upgrade(addr, "/websockify", "").await;
    assert_switched(&reply, "ws on the TLS port");
    ws.ws_echo(b"plain").await;
}

#[tokio::test]
async fn client_cert_cn_auth_uses_the_verified_certificate_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let cert_file = server_cert_file(&ca, tmp.path());
    let ca_file = tmp.path().join("ca.pem");
    write(&ca_file, ca.pem());
    let mut config = auth_config(echo_server().await, "ClientCertCNAuth", "alice bob");
    config.tls.cert = cert_file;
    config.tls.verify_client = true;
    config.tls.cafile = Some(ca_file);
    let site = site();
    config.web = Some(WebSettings {
        dir: site.root.clone(),
        file_only: false,
    });
    config.web_auth = true;
    let server = TestServer::start(config).await;
    let addr = server.addr;

    // --web-auth: files need the certificate too.
    let alice = ca.issue("alice", ExtendedKeyUsagePurpose::ClientAuth);
    let mut conn = tls_connect(addr, &ca, Some(&alice)).await;
    let reply = conn
        .request("GET /app.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(reply.status, 200, "file over TLS with CN alice: {reply:?}");
    let mallory = ca.issue("mallory", ExtendedKeyUsagePurpose::ClientAuth);
    let mut conn = tls_connect(addr, &ca, Some(&mallory)).await;
    let reply = conn
        .request("GET /app.js HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(
        reply.status, 403,
        "file over TLS with CN mallory: {reply:?}"
    );
    let reply = fetch(addr, "GET", "/app.js", "SSL_CLIENT_S_DN_CN: alice\r\n").await;
    assert_eq!(
        reply.status, 403,
        "plain file request with a CN header: {reply:?}"
    );

    for cn in ["alice", "bob"] {
        let id = ca.issue(cn, ExtendedKeyUsagePurpose::ClientAuth);
        let (mut conn, reply) = tls_upgrade(addr, &ca, &id).await;
        assert_switched(&reply, cn);
        conn.ws_echo(cn.as_bytes()).await;
    }
    for cn in ["mallory", "Alice", "alice bob"] {
        let id = ca.issue(cn, ExtendedKeyUsagePurpose::ClientAuth);
        let (_conn, reply) = tls_upgrade(addr, &ca, &id).await;
        assert_eq!(reply.status, 403, "CN {cn:?}: {reply:?}");
    }
    // Plain ws:// on the same port: no header stands in for the certificate.
    for header in [
        "ssl_client_s_dn_cn: alice\r\n",
        "SSL_CLIENT_S_DN_CN: alice\r\n",
        "Ssl_Client_S_Dn_Cn: alice\r\n",
        "X-SSL-Client-S-DN-CN: alice\r\n",
    ] {
        let (_conn, reply) = upgrade(addr, "/websockify", header).await;
        assert_eq!(reply.status, 403, "{header:?}: {reply:?}");
    }
    let (_conn, reply) = upgrade(addr, "/websockify", "").await;
    assert_eq!(reply.status, 403, "plain client: {reply:?}");
}

#[tokio::test]
async fn web_auth_protects_files_too() {
    let site = site();
    let echo = echo_server().await;
    let good = basic("alice:secret");
    let mut config = web_config(echo, &site.root, false);
    config.auth.plugin = Some("BasicHTTPAuth".into());
    config.auth.source = Some("alice:secret".into());
    config.web_auth = true;
    let server = TestServer::start(config.clone()).await;
    let addr = server.addr;
    for path in ["/app.js", "/", "/sub/", "/sub", "/missing"] {
        let reply = fetch(addr, "GET", path, "").await;
        assert_eq!(reply.status, 401, "{path} without credentials: {reply:?}");
        assert!(reply.header("www-authenticate").is_some(), "{path}");
        assert!(!reply.text().contains("export const"), "{path}");
        let head = fetch(addr, "HEAD", path, "").await;
        assert_eq!(head.status, 401, "HEAD {path}");
    }
    let wrong = fetch(addr, "GET", "/app.js", &basic("alice:nope")).await;
    assert_eq!(wrong.status, 401);
    let reply = fetch(addr, "GET", "/app.js", &good).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, TYPED_FILES[0].1);
    let listing = fetch(addr, "GET", "/sub/", &good).await;
    assert_eq!(listing.status, 200);
    let (_conn, reply) = upgrade(addr, "/websockify", "").await;
    assert_eq!(reply.status, 401);
    let (mut conn, reply) = upgrade(addr, "/websockify", &good).await;
    assert_switched(&reply, "upgrade with credentials");
    conn.ws_echo(b"x").await;
    drop(server);

    // Without --web-auth the files are public, the WebSocket is not.
    config.web_auth = false;
    let server = TestServer::start(config).await;
    let reply = fetch(server.addr, "GET", "/app.js", "").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let (_conn, reply) = upgrade(server.addr, "/websockify", "").await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn auth_runs_before_the_token_lookup() {
    let good = basic("alice:secret");
    // A backend that would fail: 401 wins over 503.
    let closed = closed_port();
    let down = format!("http://{}/lookup/%s", closed.addr);
    let mut config = token_config("BaseTokenAPI", &down);
    config.auth.plugin = Some("BasicHTTPAuth".into());
    config.auth.source = Some("alice:secret".into());
    let server = TestServer::start(config).await;
    let (_conn, reply) = upgrade(server.addr, &query("t"), "").await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let (_conn, reply) = upgrade(server.addr, &query("t"), &basic("alice:wrong")).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    let (_conn, reply) = upgrade(server.addr, &query("t"), &good).await;
    assert_refused(
        &reply,
        503,
        "Token lookup failed",
        "authenticated, backend down",
    );
    drop(server);

    // A working backend sees no request from unauthenticated clients.
    let target = named_target("target-0").await;
    let answers = HashMap::from([("t".to_owned(), target.to_string())]);
    let mut service = TokenService::start(answers).await;
    let mut config = token_config("BaseTokenAPI", &service.url());
    config.auth.plugin = Some("BasicHTTPAuth".into());
    config.auth.source = Some("alice:secret".into());
    config.auth.allowed_origins = vec!["https://vnc.example.org".into()];
    let server = TestServer::start(config).await;
    let addr = server.addr;
    for (extra, status) in [
        (String::new(), 401),
        (basic("alice:wrong"), 401),
        ("Authorization: Basic %%%\r\n".to_owned(), 400),
        (format!("Origin: https://evil.example\r\n{good}"), 403),
    ] {
        for token in ["t", "unknown"] {
            let (_conn, reply) = upgrade(addr, &query(token), &extra).await;
            assert_eq!(reply.status, status, "{extra:?} token {token}: {reply:?}");
        }
    }
    let (_conn, reply) = upgrade(addr, "/websockify", "").await;
    assert_eq!(reply.status, 401, "no token, no credentials: {reply:?}");
    // Every refusal above was answered before this request was sent, so a lookup made for
    // one of them would already be in the channel.
    assert_eq!(service.received(), Vec::<String>::new());
    let (mut conn, reply) = upgrade(addr, &query("t"), &good).await;
    assert_switched(&reply, "authenticated");
    assert_eq!(conn.ws_line().await, "target-0");
    assert_eq!(service.received(), vec!["/lookup/t".to_owned()]);
}

#[tokio::test]
async fn allowed_origins_combine_with_basic_auth() {
    let good = basic("alice:secret");
    let mut config = auth_config(echo_server().await, "BasicHTTPAuth", "alice:secret");
    config.auth.allowed_origins = vec!["https://vnc.example.org".into()];
    let server = TestServer::start(config).await;
    let addr = server.addr;
    for origin in ["https://evil.example", "null", "http://vnc.example.org"] {
        let extra = format!("Origin: {origin}\r\n{good}");
        let (_conn, reply) = upgrade(addr, "/websockify", &extra).await;
        assert_refused(&reply, 403, "Origin not allowed", origin);
    }
    let (mut conn, reply) = upgrade(addr, "/websockify", &good).await;
    assert_switched(&reply, "no Origin, good credentials");
    conn.ws_echo(b"native client").await;
    for origin in ["https://vnc.example.org", "https://VNC.example.org"] {
        let extra = format!("Origin: {origin}\r\n{good}");
        let (mut conn, reply) = upgrade(addr, "/websockify", &extra).await;
        assert_switched(&reply, origin);
        conn.ws_echo(b"browser").await;
    }
    let (_conn, reply) = upgrade(addr, "/websockify", "Origin: https://vnc.example.org\r\n").await;
    assert_eq!(reply.status, 401, "right origin, no credentials: {reply:?}");
}
