//! The static web server behind `--web DIR`: GET and HEAD of files under one directory.
//!
//! How a request becomes a response, and where each check sits:
//!
//! 1. Method: GET and HEAD are served; the other methods RFC 9110 defines get 405 with
//!    `Allow: GET, HEAD`, and anything else 501 (upstream's `Unsupported method ('X')`).
//! 2. Path: the query is dropped, the path is percent-decoded exactly once (so `%252e` stays
//!    the literal `%2e`) and split on `/`. A segment that starts with `.` (which covers `.`,
//!    `..` and hidden files such as `.git`), holds a backslash or NUL, or looks like a drive
//!    (`c:`) ends the request with 404 before the file system is touched. Empty segments
//!    (`//`) are dropped.
//! 3. Containment: the segments are joined under the canonical root and the result is
//!    canonicalized; it must still lie under the root, and no segment of its real path below
//!    the root may start with `.`. This stops symlinks whose target leaves DIR, which
//!    upstream follows out. Symlinks that stay inside are served. Only regular files and
//!    directories are served (never a FIFO, socket or device).
//! 4. A directory: without a trailing `/` it gets a 301 to the clean, re-encoded path plus
//!    `/` (never starting with `//`, which a browser would take for another host);
//!    otherwise `index.html`, then `index.htm`, then an HTML listing, or 404 with
//!    `--file-only`.
//! 5. A file: tower-http's `ServeFile`, pointed at the checked canonical path, streams it
//!    and handles `Last-Modified`/`If-Modified-Since` (304), `ETag` and byte ranges (206).
//!    We override its content type from our own table (module scripts need a JavaScript
//!    type), and every response gets `Cache-Control: no-cache` (noVNC's embedding guide asks
//!    for it) and our `Server`.
//!
//! Known limit: the check (step 3) and the open (step 5) are two system calls, so someone
//! who can write inside DIR could swap a directory for a symlink in between. Whoever can
//! write DIR already decides what is served.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, percent_encode};
use tower_http::services::ServeFile;

use crate::response::{Body, Reject, SERVER, empty_body, full_body, html_escape};

/// Bytes kept as they are when a name goes into a link or a `Location`: the RFC 3986
/// unreserved set. Everything else is encoded, so a name like `a:b` cannot read as a scheme.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Files served for a directory, in upstream's order (`SimpleHTTPRequestHandler`).
const INDEX_FILES: [&str; 2] = ["index.html", "index.htm"];

/// Methods RFC 9110 defines that we do not serve: 405 rather than 501.
const KNOWN_METHODS: [Method; 7] = [
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::CONNECT,
    Method::TRACE,
];

/// Settings of the web server.
#[derive(Debug, Clone)]
pub struct WebRoot {
    /// The canonical directory served.
    root: PathBuf,
    /// `--file-only`: no directory listings.
    file_only: bool,
}

impl WebRoot {
    /// Canonicalizes `dir`; error (naming the dir) if it is not a readable directory.
    pub fn new(dir: &Path, file_only: bool) -> anyhow::Result<WebRoot> {
        let root = std::fs::canonicalize(dir)
            .with_context(|| format!("cannot use web directory {}", dir.display()))?;
        // Fails for a file (not a directory) and for a directory we may not read.
        std::fs::read_dir(&root)
            .with_context(|| format!("cannot read web directory {}", dir.display()))?;
        Ok(WebRoot { root, file_only })
    }

    /// The canonical directory served.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Whether directory listings are off (`--file-only`).
    pub fn file_only(&self) -> bool {
        self.file_only
    }

    /// Answers one non-upgrade request (any method) for a file under the root.
    pub async fn serve(&self, request: &Request<impl Sized>) -> Response<Body> {
        let method = request.method();
        let uri = request.uri();
        let mut response = self.respond(method, uri, request.headers()).await;
        let headers = response.headers_mut();
        headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if method == Method::HEAD {
            strip_body(&mut response);
        }
        // The path only: a query may carry a token.
        tracing::debug!(%method, path = uri.path(), status = response.status().as_u16(), "web request");
        response
    }

    /// Chooses the response; `serve` adds the headers every response carries.
    async fn respond(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return if KNOWN_METHODS.contains(method) {
                Reject::MethodNotAllowed.response()
            } else {
                Reject::NotImplemented(method.clone()).response()
            };
        }
        let raw = uri.path();
        let path = match RequestPath::parse(raw) {
            Ok(path) => path,
            Err(reason) => {
                tracing::debug!(path = raw, "refused web path: {reason}");
                return Reject::FileNotFound.response();
            }
        };
        match self.resolve(path.join(&self.root)).await {
            Resolved::Missing => Reject::FileNotFound.response(),
            Resolved::File(file) => {
                // `/file.txt/` names a directory that does not exist (upstream: 404 too).
                if path.trailing_slash {
                    return Reject::FileNotFound.response();
                }
                let name = path
                    .segments
                    .last()
                    .map_or(OsStr::new(""), |s| OsStr::from_bytes(s));
                serve_file(&file, content_type(name), method, headers).await
            }
            Resolved::Dir(dir) => {
                // Relative links resolve against the URL the browser shows, so a listing
                // or index page must be reached through a path that ends with `/`.
                if !raw.ends_with('/') {
                    return redirect(&path, uri.query());
                }
                for index in INDEX_FILES {
                    if let Resolved::File(file) = self.resolve(dir.join(index)).await {
                        return serve_file(&file, content_type(OsStr::new(index)), method, headers)
                            .await;
                    }
                }
                if self.file_only {
                    return Reject::FileNotFound.response();
                }
                listing(&dir, &path).await
            }
        }
    }

    /// Follows `path` to its real location and says what is there, if it is inside the root.
    async fn resolve(&self, path: PathBuf) -> Resolved {
        let Ok(real) = tokio::fs::canonicalize(&path).await else {
            return Resolved::Missing;
        };
        let Ok(inside) = real.strip_prefix(&self.root) else {
            tracing::debug!(path = %path.display(), "refused web path: it resolves outside the web directory");
            return Resolved::Missing;
        };
        if inside.iter().any(|part| part.as_bytes().starts_with(b".")) {
            tracing::debug!(path = %path.display(), "refused web path: it resolves to a hidden file");
            return Resolved::Missing;
        }
        match tokio::fs::metadata(&real).await {
            Ok(meta) if meta.is_file() => Resolved::File(real),
            Ok(meta) if meta.is_dir() => Resolved::Dir(real),
            _ => Resolved::Missing,
        }
    }
}

/// What a request path names, after the containment checks.
enum Resolved {
    /// Nothing servable: missing, outside the root, hidden, or not a file or directory.
    Missing,
    /// A regular file (canonical path).
    File(PathBuf),
    /// A directory (canonical path).
    Dir(PathBuf),
}

/// A request path, decoded once and split into segments that are safe to join under the root.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RequestPath {
    /// Decoded, non-empty segments; none starts with `.` or holds `/`, `\` or NUL.
    pub(crate) segments: Vec<Vec<u8>>,
    /// The path ends with `/`, before or after decoding.
    pub(crate) trailing_slash: bool,
}

impl RequestPath {
    /// Decodes `raw` (the path of the request URI, without the query) and checks each segment.
    pub(crate) fn parse(raw: &str) -> Result<RequestPath, &'static str> {
        if !raw.starts_with('/') {
            return Err("not an absolute path");
        }
        let decoded: Vec<u8> = percent_decode_str(raw).collect();
        let mut segments = Vec::new();
        for segment in decoded.split(|&b| b == b'/') {
            if segment.is_empty() {
                continue;
            }
            if segment.starts_with(b".") {
                return Err("a segment starts with '.'");
            }
            if segment.contains(&b'\\') {
                return Err("a segment holds a backslash");
            }
            if segment.contains(&0) {
                return Err("a segment holds NUL");
            }
            if let [letter, b':', ..] = segment
                && letter.is_ascii_alphabetic()
            {
                return Err("a segment looks like a drive");
            }
            segments.push(segment.to_vec());
        }
        Ok(RequestPath {
            segments,
            trailing_slash: raw.ends_with('/') || decoded.ends_with(b"/"),
        })
    }

    /// The file-system path under `root` (each segment is a single normal component).
    pub(crate) fn join(&self, root: &Path) -> PathBuf {
        let mut path = root.to_path_buf();
        for segment in &self.segments {
            path.push(OsStr::from_bytes(segment));
        }
        path
    }

    /// The clean path re-encoded for a URL, ending with `/`: `/a%20b/c/`, or `/` for the root.
    pub(crate) fn url_dir(&self) -> String {
        let mut url = String::from("/");
        for segment in &self.segments {
            url.extend(percent_encode(segment, SEGMENT));
            url.push('/');
        }
        url
    }

    /// The clean path as text for a page title: `/a b/c/`.
    pub(crate) fn display_dir(&self) -> String {
        let mut text = String::from("/");
        for segment in &self.segments {
            text.push_str(&String::from_utf8_lossy(segment));
            text.push('/');
        }
        text
    }
}

/// Our content type for a file name: what noVNC and modern pages load, by extension.
fn content_type(name: &OsStr) -> &'static str {
    let extension = Path::new(name)
        .extension()
        .and_then(OsStr::to_str)
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        // Module scripts (noVNC's `<script type="module">`) need a JavaScript type.
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("svg") => "image/svg+xml",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        Some("ttf") => "font/ttf",
        Some("otf") => "font/otf",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        // noVNC's bell: app/sounds/bell.oga and bell.mp3.
        Some("oga" | "ogg") => "audio/ogg",
        Some("mp3") => "audio/mpeg",
        Some("txt") => "text/plain; charset=utf-8",
        Some("xml") => "application/xml",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// Streams a checked file with tower-http's `ServeFile`, then sets our content type.
async fn serve_file(
    file: &Path,
    content_type: &'static str,
    method: &Method,
    headers: &HeaderMap,
) -> Response<Body> {
    // `ServeFile` takes a request by value; it reads only the method and the headers
    // (Range, If-Modified-Since and the other preconditions).
    let mut request = Request::new(());
    *request.method_mut() = method.clone();
    *request.headers_mut() = headers.clone();
    let result = ServeFile::new(file)
        // Answer a multi-range request with the whole file (RFC 9110 allows ignoring
        // Range) instead of 416, as multipart responses are not supported.
        .ignore_multi_range_requests(true)
        .try_call(request)
        .await;
    match result {
        Ok(response) if response.status() == StatusCode::NOT_FOUND => {
            Reject::FileNotFound.response()
        }
        Ok(response) => {
            let mut response = response.map(|body| body.boxed_unsync());
            if matches!(
                response.status(),
                StatusCode::OK | StatusCode::PARTIAL_CONTENT
            ) {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            }
            response
        }
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotADirectory
            ) =>
        {
            Reject::FileNotFound.response()
        }
        Err(err) => {
            tracing::warn!(file = %file.display(), "cannot read web file: {err}");
            Reject::FileUnreadable.response()
        }
    }
}

/// An HTML listing of `dir` (hidden entries left out, names sorted, escaped and encoded).
async fn listing(dir: &Path, path: &RequestPath) -> Response<Body> {
    let mut entries: Vec<(String, Vec<u8>, bool)> = Vec::new();
    let mut reader = match tokio::fs::read_dir(dir).await {
        Ok(reader) => reader,
        Err(err) => {
            tracing::debug!(dir = %dir.display(), "cannot list web directory: {err}");
            return Reject::FileNotFound.response();
        }
    };
    loop {
        let entry = match reader.next_entry().await {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(dir = %dir.display(), "cannot list web directory: {err}");
                return Reject::FileNotFound.response();
            }
        };
        let name = entry.file_name().as_bytes().to_vec();
        if name.starts_with(b".") {
            continue;
        }
        // Follows symlinks, so a link to a directory is shown as one.
        let is_dir = tokio::fs::metadata(entry.path())
            .await
            .is_ok_and(|meta| meta.is_dir());
        entries.push((String::from_utf8_lossy(&name).to_lowercase(), name, is_dir));
    }
    // Case-insensitive like upstream, then by bytes so the order is total.
    entries.sort();
    let title = html_escape(&format!("Directory listing for {}", path.display_dir()));
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n<body><h1>{title}</h1>\n<hr>\n<ul>\n"
    );
    for (_, name, is_dir) in &entries {
        let slash = if *is_dir { "/" } else { "" };
        let href = percent_encode(name, SEGMENT).to_string();
        let text = html_escape(&String::from_utf8_lossy(name));
        page.push_str(&format!(
            "<li><a href=\"{href}{slash}\">{text}{slash}</a></li>\n"
        ));
    }
    page.push_str("</ul>\n<hr>\n</body></html>\n");
    let mut response = Response::new(full_body(page));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

/// 301 to the clean directory path with `/` (and the query, which the page may need).
fn redirect(path: &RequestPath, query: Option<&str>) -> Response<Body> {
    // Starts with exactly one `/`: segments are non-empty, so `//host` cannot appear.
    let location = path.url_dir();
    let with_query = query.map(|query| format!("{location}?{query}"));
    let value = with_query
        .and_then(|url| HeaderValue::from_str(&url).ok())
        .or_else(|| HeaderValue::from_str(&location).ok());
    let mut response = Response::new(empty_body());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Some(value) = value {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// For HEAD: keep the headers (with the length the body would have had), drop the body.
fn strip_body(response: &mut Response<Body>) {
    if response.status() != StatusCode::NOT_MODIFIED
        && !response.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(length) = response.body().size_hint().exact()
    {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    *response.body_mut() = empty_body();
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use bytes::Bytes;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tempfile::TempDir;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const OUTSIDE_SECRET: &str = "OUTSIDE-SECRET-3f9c";
    const HIDDEN_SECRET: &str = "HIDDEN-SECRET-7a21";

    /// Runs a test body with a time bound.
    async fn bounded<F: Future>(body: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), body)
            .await
            .expect("test timed out")
    }

    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        fn header(&self, name: header::HeaderName) -> &str {
            self.headers
                .get(&name)
                .map_or("", |value| value.to_str().expect("header is text"))
        }
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    async fn call(web: &WebRoot, method: Method, uri: &str, headers: &[(&str, &str)]) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(()).expect("valid request");
        reply(web.serve(&request).await).await
    }

    async fn reply(response: Response<Body>) -> Reply {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body reads").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(web: &WebRoot, uri: &str) -> Reply {
        call(web, Method::GET, uri, &[]).await
    }

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(path, text).expect("write file");
    }

    /// `tmp/root` (served) next to `tmp/outside` (secret), with symlinks both ways.
    struct Fixture {
        tmp: TempDir,
        web: WebRoot,
    }

    impl Fixture {
        fn root(&self) -> PathBuf {
            self.tmp.path().join("root")
        }
    }

    fn fixture(file_only: bool) -> Fixture {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        write(&outside.join("secret.txt"), OUTSIDE_SECRET);
        write(&outside.join("secretdir/inner.txt"), OUTSIDE_SECRET);
        write(&outside.join("secretdir/index.html"), OUTSIDE_SECRET);
        write(&tmp.path().join("secret.txt"), OUTSIDE_SECRET);
        write(&root.join("index.html"), "<h1>home</h1>");
        write(&root.join("sub/a.txt"), "a-content");
        write(&root.join("sub/deeper/b.txt"), "b-content");
        write(&root.join(".hidden"), HIDDEN_SECRET);
        write(&root.join(".git/config"), HIDDEN_SECRET);
        write(&root.join("sub/.env"), HIDDEN_SECRET);
        symlink("../outside/secret.txt", root.join("out_file")).expect("symlink");
        symlink(outside.join("secret.txt"), root.join("out_abs")).expect("symlink");
        symlink("../outside/secretdir", root.join("out_dir")).expect("symlink");
        symlink("../..", root.join("sub/upup")).expect("symlink");
        symlink("..", root.join("sub/up")).expect("symlink");
        symlink("sub/a.txt", root.join("in_file")).expect("symlink");
        symlink("sub", root.join("in_dir")).expect("symlink");
        symlink(".hidden", root.join("to_hidden")).expect("symlink");
        symlink("loop", root.join("loop")).expect("symlink");
        let web = WebRoot::new(&root, file_only).expect("web root");
        Fixture { tmp, web }
    }

    #[test]
    fn new_rejects_missing_directory_and_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("nope");
        let err = WebRoot::new(&missing, false).expect_err("missing dir");
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
        write(&tmp.path().join("file"), "x");
        let err = WebRoot::new(&tmp.path().join("file"), false).expect_err("file");
        assert!(format!("{err:#}").contains("file"), "{err:#}");
        let web = WebRoot::new(tmp.path(), true).expect("dir");
        assert!(web.dir().is_absolute());
        assert!(web.file_only());
    }

    #[test]
    fn parses_and_refuses_path_segments() {
        let ok = RequestPath::parse("//a//b%20c/").expect("clean");
        assert_eq!(ok.segments, vec![b"a".to_vec(), b"b c".to_vec()]);
        assert!(ok.trailing_slash);
        assert_eq!(ok.url_dir(), "/a/b%20c/");
        assert_eq!(RequestPath::parse("/").expect("root").url_dir(), "/");
        // Decoded once: `%252e` is the literal name `%2e`.
        let literal = RequestPath::parse("/%252e%252e").expect("literal");
        assert_eq!(literal.segments, vec![b"%2e%2e".to_vec()]);
        assert!(RequestPath::parse("/a%2fb").expect("split").segments.len() == 2);
        for bad in [
            "/..", "/.", "/a/../b", "/%2e%2e", "/.%2e", "/%2E%2e/", "/.git", "/a%5cb", "/a\\b",
            "/a%00", "/c:/x", "/C%3a", "*", "",
        ] {
            assert!(RequestPath::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[tokio::test]
    async fn serves_index_html_then_index_htm() {
        bounded(async {
            let fx = fixture(false);
            let home = get(&fx.web, "/").await;
            assert_eq!(home.status, StatusCode::OK);
            assert_eq!(home.text(), "<h1>home</h1>");
            assert_eq!(
                home.header(header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            write(&fx.root().join("only_htm/index.htm"), "htm page");
            write(&fx.root().join("both/index.htm"), "htm page");
            write(&fx.root().join("both/index.html"), "html page");
            assert_eq!(get(&fx.web, "/only_htm/").await.text(), "htm page");
            assert_eq!(get(&fx.web, "/both/?x=1").await.text(), "html page");
            let htm = get(&fx.web, "/only_htm/").await;
            assert_eq!(htm.header(header::CONTENT_TYPE), "text/html; charset=utf-8");
        })
        .await;
    }

    #[tokio::test]
    async fn index_symlink_leaving_the_root_is_not_served() {
        bounded(async {
            let fx = fixture(false);
            std::fs::create_dir(fx.root().join("trap")).expect("mkdir");
            std::os::unix::fs::symlink(
                fx.tmp.path().join("outside/secret.txt"),
                fx.root().join("trap/index.html"),
            )
            .expect("symlink");
            let reply = get(&fx.web, "/trap/").await;
            assert_eq!(reply.status, StatusCode::OK, "falls back to the listing");
            assert!(!reply.text().contains(OUTSIDE_SECRET));
        })
        .await;
    }

    #[tokio::test]
    async fn redirects_directory_without_trailing_slash_to_clean_path() {
        bounded(async {
            let fx = fixture(false);
            std::fs::create_dir_all(fx.root().join("evil.example/x")).expect("mkdir");
            std::fs::create_dir_all(fx.root().join("a b")).expect("mkdir");
            let cases = [
                ("/sub", "/sub/"),
                ("/sub?token=abc&x=1", "/sub/?token=abc&x=1"),
                ("//evil.example/x", "/evil.example/x/"),
                ("///evil.example//x", "/evil.example/x/"),
                ("/%2fevil.example/x", "/evil.example/x/"),
                ("/%2f", "/"),
                ("/a%20b", "/a%20b/"),
                ("/sub/deeper", "/sub/deeper/"),
                ("/sub%2f", "/sub/"),
                ("/in_dir", "/in_dir/"),
            ];
            for (uri, location) in cases {
                let reply = get(&fx.web, uri).await;
                assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY, "{uri}");
                assert_eq!(reply.header(header::LOCATION), location, "{uri}");
                assert!(!reply.header(header::LOCATION).starts_with("//"));
                assert!(reply.body.is_empty());
            }
        })
        .await;
    }

    #[tokio::test]
    async fn lists_directories_with_escaped_sorted_names() {
        bounded(async {
            let fx = fixture(false);
            let dir = fx.root().join("list");
            write(&dir.join("<script>alert(1)<\\script>.txt"), "x");
            write(&dir.join("<script>.txt"), "x");
            write(&dir.join("a b&c\"d'.txt"), "x");
            write(&dir.join("B.txt"), "x");
            write(&dir.join("été.txt"), "x");
            write(&dir.join(".secret"), "x");
            write(&dir.join("x:y"), "x");
            std::fs::create_dir(dir.join("child")).expect("mkdir");
            let reply = get(&fx.web, "/list/").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(
                reply.header(header::CONTENT_TYPE),
                "text/html; charset=utf-8"
            );
            let page = reply.text();
            assert!(page.contains("Directory listing for /list/"), "{page}");
            assert!(!page.contains("<script>"), "{page}");
            assert!(
                page.contains("&lt;script&gt;alert(1)&lt;\\script&gt;.txt"),
                "{page}"
            );
            assert!(page.contains("href=\"%3Cscript%3Ealert%281%29%3C%5Cscript%3E.txt\""));
            assert!(
                page.contains("href=\"%3Cscript%3E.txt\">&lt;script&gt;.txt<"),
                "{page}"
            );
            assert!(page.contains("href=\"a%20b%26c%22d%27.txt\">a b&amp;c&quot;d&#x27;.txt<"));
            assert!(
                page.contains("href=\"%C3%A9t%C3%A9.txt\">été.txt<"),
                "{page}"
            );
            assert!(page.contains("href=\"x%3Ay\""), "{page}");
            assert!(page.contains("href=\"child/\">child/<"), "{page}");
            assert!(!page.contains(".secret"));
            assert!(!page.contains(".."));
            let order: Vec<usize> = ["a b", "B.txt", "child", "x%3Ay", "%C3%A9t"]
                .iter()
                .map(|name| page.find(name).expect("listed"))
                .collect();
            // Case-insensitive, then by code point (like upstream's `sort(key=str.lower)`).
            assert!(order.windows(2).all(|w| w[0] < w[1]), "{page}");
            // Names are served back from their encoded links.
            // A backslash is refused even when a file has one in its name.
            let served = get(&fx.web, "/list/%3Cscript%3Ealert%281%29%3C%5Cscript%3E.txt").await;
            assert_eq!(served.status, StatusCode::NOT_FOUND);
            let served = get(&fx.web, "/list/%3Cscript%3E.txt").await;
            assert_eq!(served.status, StatusCode::OK);
            assert_eq!(
                get(&fx.web, "/list/%C3%A9t%C3%A9.txt").await.status,
                StatusCode::OK
            );
            // The root listing hides dot files and shows symlinks by name.
            std::fs::remove_file(fx.root().join("index.html")).expect("rm");
            let root = get(&fx.web, "/").await.text();
            assert!(root.contains("Directory listing for /<"), "{root}");
            assert!(
                !root.contains(".hidden") && !root.contains(".git"),
                "{root}"
            );
            assert!(root.contains("href=\"sub/\""), "{root}");
        })
        .await;
    }

    #[tokio::test]
    async fn file_only_answers_404_for_a_directory_without_index() {
        bounded(async {
            let fx = fixture(true);
            let reply = get(&fx.web, "/sub/").await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND);
            assert!(reply.text().contains("File not found"));
            assert_eq!(
                get(&fx.web, "/").await.status,
                StatusCode::OK,
                "index still served"
            );
            assert_eq!(get(&fx.web, "/sub/a.txt").await.status, StatusCode::OK);
        })
        .await;
    }

    #[tokio::test]
    async fn other_methods_get_405_with_allow_and_unknown_methods_501() {
        bounded(async {
            let fx = fixture(false);
            for method in KNOWN_METHODS {
                let reply = call(&fx.web, method.clone(), "/sub/a.txt", &[]).await;
                assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
                assert_eq!(reply.header(header::ALLOW), "GET, HEAD");
            }
            let brew = Method::from_bytes(b"BREW").expect("method");
            let reply = call(&fx.web, brew, "/sub/a.txt", &[]).await;
            assert_eq!(reply.status, StatusCode::NOT_IMPLEMENTED);
            assert!(
                reply
                    .text()
                    .contains("Unsupported method (&#x27;BREW&#x27;)")
            );
        })
        .await;
    }

    #[tokio::test]
    async fn head_has_headers_but_no_body() {
        bounded(async {
            let fx = fixture(false);
            let file = call(&fx.web, Method::HEAD, "/sub/a.txt", &[]).await;
            assert_eq!(file.status, StatusCode::OK);
            assert!(file.body.is_empty());
            assert_eq!(file.header(header::CONTENT_LENGTH), "9");
            assert_eq!(
                file.header(header::CONTENT_TYPE),
                "text/plain; charset=utf-8"
            );
            assert!(!file.header(header::LAST_MODIFIED).is_empty());
            let page = get(&fx.web, "/sub/").await;
            let head = call(&fx.web, Method::HEAD, "/sub/", &[]).await;
            assert_eq!(head.status, StatusCode::OK);
            assert!(head.body.is_empty());
            assert_eq!(
                head.header(header::CONTENT_LENGTH),
                page.body.len().to_string()
            );
            let missing = call(&fx.web, Method::HEAD, "/nope", &[]).await;
            assert_eq!(missing.status, StatusCode::NOT_FOUND);
            assert!(missing.body.is_empty());
            assert_ne!(missing.header(header::CONTENT_LENGTH), "");
        })
        .await;
    }

    #[tokio::test]
    async fn content_types_follow_our_table() {
        bounded(async {
            let fx = fixture(false);
            let table = [
                ("vnc.html", "text/html; charset=utf-8"),
                ("old.HTM", "text/html; charset=utf-8"),
                ("app.js", "text/javascript; charset=utf-8"),
                ("module.mjs", "text/javascript; charset=utf-8"),
                ("base.css", "text/css; charset=utf-8"),
                ("defaults.json", "application/json"),
                ("app.js.map", "application/json"),
                ("icon.svg", "image/svg+xml"),
                ("code.wasm", "application/wasm"),
                ("font.woff2", "font/woff2"),
                ("font.woff", "font/woff"),
                ("logo.png", "image/png"),
                ("favicon.ico", "image/x-icon"),
                ("bell.oga", "audio/ogg"),
                ("bell.mp3", "audio/mpeg"),
                ("notes.txt", "text/plain; charset=utf-8"),
                ("blob.bin", "application/octet-stream"),
                ("Makefile", "application/octet-stream"),
            ];
            for (name, _) in table {
                write(&fx.root().join("types").join(name), "data");
            }
            for (name, expected) in table {
                let reply = get(&fx.web, &format!("/types/{name}")).await;
                assert_eq!(reply.status, StatusCode::OK, "{name}");
                assert_eq!(reply.header(header::CONTENT_TYPE), expected, "{name}");
                assert_eq!(reply.header(header::CACHE_CONTROL), "no-cache", "{name}");
                assert_eq!(reply.header(header::SERVER), SERVER, "{name}");
                assert_eq!(reply.text(), "data");
            }
            // Named by the URL, not by a symlink's target.
            assert_eq!(
                get(&fx.web, "/in_file").await.header(header::CONTENT_TYPE),
                "application/octet-stream"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn if_modified_since_gives_304() {
        bounded(async {
            let fx = fixture(false);
            let first = get(&fx.web, "/sub/a.txt").await;
            let stamp = first.header(header::LAST_MODIFIED).to_owned();
            assert!(!stamp.is_empty());
            let again = call(
                &fx.web,
                Method::GET,
                "/sub/a.txt",
                &[("if-modified-since", &stamp)],
            )
            .await;
            assert_eq!(again.status, StatusCode::NOT_MODIFIED);
            assert!(again.body.is_empty());
            assert_eq!(again.header(header::CACHE_CONTROL), "no-cache");
            let old = "Thu, 01 Jan 1970 00:00:01 GMT";
            let stale = call(
                &fx.web,
                Method::GET,
                "/sub/a.txt",
                &[("if-modified-since", old)],
            )
            .await;
            assert_eq!(stale.status, StatusCode::OK);
            assert_eq!(stale.text(), "a-content");
        })
        .await;
    }

    #[tokio::test]
    async fn range_request_gives_206() {
        bounded(async {
            let fx = fixture(false);
            let reply = call(
                &fx.web,
                Method::GET,
                "/sub/a.txt",
                &[("range", "bytes=2-4")],
            )
            .await;
            assert_eq!(reply.status, StatusCode::PARTIAL_CONTENT);
            assert_eq!(reply.text(), "con");
            assert_eq!(reply.header(header::CONTENT_RANGE), "bytes 2-4/9");
            assert_eq!(
                reply.header(header::CONTENT_TYPE),
                "text/plain; charset=utf-8"
            );
            let multi = call(
                &fx.web,
                Method::GET,
                "/sub/a.txt",
                &[("range", "bytes=0-1,4-5")],
            )
            .await;
            assert_eq!(
                multi.status,
                StatusCode::OK,
                "multi-range falls back to the whole file"
            );
            assert_eq!(multi.text(), "a-content");
        })
        .await;
    }

    #[tokio::test]
    async fn missing_files_and_odd_entries_get_404() {
        bounded(async {
            let fx = fixture(false);
            let _socket = std::os::unix::net::UnixListener::bind(fx.root().join("sock"))
                .expect("bind unix socket");
            for uri in [
                "/nope.js",
                "/sub/a.txt/",
                "/sub/a.txt%2f",
                "/sock",
                "/loop",
                "/sub/nope/",
            ] {
                let reply = get(&fx.web, uri).await;
                assert_eq!(reply.status, StatusCode::NOT_FOUND, "{uri}");
                assert!(reply.text().contains("File not found"), "{uri}");
                assert_eq!(
                    reply.header(header::CONNECTION),
                    "",
                    "404 keeps the connection"
                );
            }
        })
        .await;
    }

    #[tokio::test]
    async fn symlinks_inside_the_root_are_served() {
        bounded(async {
            let fx = fixture(false);
            assert_eq!(get(&fx.web, "/in_file").await.text(), "a-content");
            assert_eq!(get(&fx.web, "/in_dir/a.txt").await.text(), "a-content");
            assert_eq!(get(&fx.web, "/sub/up/sub/a.txt").await.text(), "a-content");
            assert_eq!(get(&fx.web, "/sub/up/").await.text(), "<h1>home</h1>");
            assert_eq!(
                get(&fx.web, "/to_hidden").await.status,
                StatusCode::NOT_FOUND
            );
        })
        .await;
    }

    /// Request paths that aim outside the root or at hidden files.
    fn traversal_corpus() -> Vec<String> {
        let prefixes = [
            "/",
            "//",
            "/./",
            "/sub/",
            "/sub/deeper/",
            "/sub//",
            "/in_dir/",
            "/%2f",
            "/sub/./",
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
            "..%5C",
            "..%00",
            "%2e%2e%00",
            ".%00.",
            "%252e%252e",
            "%c0%ae%c0%ae",
            "%EF%BC%8E%EF%BC%8E",
            "..;",
            "...",
            "%2e%2e%2f%2e%2e",
        ];
        let targets = [
            "outside/secret.txt",
            "outside/secretdir/inner.txt",
            "outside/secretdir/",
            "secret.txt",
        ];
        let mut corpus = Vec::new();
        for prefix in prefixes {
            for up in ups {
                for depth in 1..=3 {
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
            "/%2fetc%2fpasswd",
            "/%2Fetc/passwd",
            "///etc/passwd",
            "/..\\..\\outside\\secret.txt",
            "/..%5c..%5coutside%5csecret.txt",
            "/c:/windows/win.ini",
            "/C:%5cwindows%5cwin.ini",
            "/c%3a/outside/secret.txt",
            "/%5c%5cserver%5cshare%5csecret.txt",
            "/out_file",
            "/out_abs",
            "/out_dir",
            "/out_dir/",
            "/out_dir/inner.txt",
            "/out_dir/index.html",
            "/sub/upup/outside/secret.txt",
            "/sub/upup/secret.txt",
            "/sub/upup/",
            "/sub/upup",
            "/sub/up/../outside/secret.txt",
            "/sub/../../outside/secret.txt",
            "/sub/../../secret.txt",
            "/./.hidden",
            "/.hidden",
            "/%2ehidden",
            "/%2Ehidden",
            "/.git/config",
            "/.git/",
            "/%2egit/config",
            "/sub/.env",
            "/sub/%2eenv",
            "/in_dir/.env",
            "/to_hidden",
            "/sub/up/.hidden",
            "/index.html%00.txt",
            "/out_file%00",
            "/out_file?x=/index.html",
            "/out_file#frag",
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
            "/%u002e%u002e/outside/secret.txt",
            "/%C3%A9t%C3%A9/../../outside/secret.txt",
            "/%E2%80%A5/outside/secret.txt",
            "/%E2%80%AE../outside/secret.txt",
            "/\u{2025}/outside/secret.txt",
            "/sub/%EF%BC%8F..%EF%BC%8F..%EF%BC%8Foutside/secret.txt",
        ];
        corpus.extend(specials.iter().map(|s| (*s).to_owned()));
        corpus.push(format!("/{}outside/secret.txt", "../".repeat(200)));
        corpus.push(format!("/sub/{}outside/secret.txt", "%2e%2e/".repeat(100)));
        corpus.push(format!("/{}x", "a/".repeat(2000)));
        corpus.push(format!("/{}", "x".repeat(300)));
        corpus.push(format!("/{}/../outside/secret.txt", "y".repeat(5000)));
        corpus
    }

    #[tokio::test]
    async fn traversal_corpus_never_escapes_the_root() {
        bounded(async {
            let fx = fixture(false);
            let corpus = traversal_corpus();
            let mut tried = 0;
            for uri in &corpus {
                for method in [Method::GET, Method::HEAD] {
                    let Ok(request) = Request::builder()
                        .method(method.clone())
                        .uri(uri.as_str())
                        .body(())
                    else {
                        continue; // hyper would answer 400 before we are called
                    };
                    tried += 1;
                    let reply = reply(fx.web.serve(&request).await).await;
                    let text = reply.text();
                    assert!(
                        !text.contains(OUTSIDE_SECRET),
                        "{method} {uri} leaked an outside file"
                    );
                    assert!(
                        !text.contains(HIDDEN_SECRET),
                        "{method} {uri} leaked a hidden file"
                    );
                    assert!(
                        !matches!(reply.status, StatusCode::OK | StatusCode::PARTIAL_CONTENT),
                        "{method} {uri} answered {}",
                        reply.status
                    );
                    if reply.status == StatusCode::MOVED_PERMANENTLY {
                        let location = reply.header(header::LOCATION);
                        assert!(
                            !location.starts_with("//") && !location.contains(".."),
                            "{uri} -> {location}"
                        );
                    }
                }
            }
            assert!(tried >= 400, "only {tried} requests of the corpus parsed");
        })
        .await;
    }

    #[tokio::test]
    async fn keeps_the_connection_open_after_404_and_head_keeps_its_length() {
        bounded(async {
            let fx = fixture(false);
            let (client, server) = tokio::io::duplex(64 * 1024);
            let web = fx.web.clone();
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let web = web.clone();
                async move { Ok::<_, std::convert::Infallible>(web.serve(&request).await) }
            });
            let conn =
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(server), service));
            let (mut read, mut write) = tokio::io::split(client);
            write
                .write_all(
                    b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n\
                      HEAD /sub/a.txt HTTP/1.1\r\nHost: x\r\n\r\n\
                      GET /sub/a.txt?token=secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await
                .expect("write requests");
            let mut text = String::new();
            read.read_to_string(&mut text)
                .await
                .expect("read responses");
            conn.await.expect("join").expect("connection ends cleanly");
            let heads: Vec<&str> = text
                .match_indices("HTTP/1.1 ")
                .map(|(i, _)| &text[i..])
                .collect();
            assert_eq!(heads.len(), 3, "{text}");
            assert!(
                heads[0].starts_with("HTTP/1.1 404 File not found"),
                "{text}"
            );
            assert!(heads[1].starts_with("HTTP/1.1 200 OK"), "{text}");
            let head_reply = &heads[1][..heads[1].len() - heads[2].len()];
            assert!(
                head_reply
                    .to_ascii_lowercase()
                    .contains("content-length: 9\r\n"),
                "{text}"
            );
            assert!(head_reply.ends_with("\r\n\r\n"), "HEAD has no body: {text}");
            assert!(
                heads[2].starts_with("HTTP/1.1 200 OK") && heads[2].ends_with("a-content"),
                "{text}"
            );
        })
        .await;
    }

    /// The future `request.rs` awaits inside hyper's service must be `Send`.
    #[allow(dead_code)]
    fn serve_future_is_send(web: &WebRoot, request: &Request<hyper::body::Incoming>) {
        fn is_send<T: Send>(_: &T) {}
        is_send(&web.serve(request));
    }
}
