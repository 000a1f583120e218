//! The file back-ends: `TokenFile` and `ReadOnlyTokenFile` (a file of `token: host:port`
//! lines, or a directory of such files, parsed and cached) and `TokenFileName` (one file per
//! token, `<dir>/<token>` holding the target). File syntax as upstream's `token_plugins.py`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{anyhow, bail};
use tracing::{debug, info, warn};

use super::error::{TokenError, one_line, token_tag};
use super::read::{MAX_TOKEN_FILE_BYTES, ReadError, check_regular, read_regular_file};
use super::value::{is_plain_file_name, parse_target};
use crate::config::Target;

/// Largest `TokenFileName` file read; a target is a few dozen bytes.
const MAX_TARGET_FILE_BYTES: u64 = 64 * 1024;

/// A token file, or a directory of them, parsed once and cached. With `reload` (TokenFile) the
/// files are stat'ed on each lookup and re-parsed when one changed, appeared or went away;
/// without it (ReadOnlyTokenFile) the first successful parse is kept for good.
pub(super) struct TokenFiles {
    source: PathBuf,
    reload: bool,
    cache: Mutex<Option<Parsed>>,
}

#[derive(Clone)]
struct Parsed {
    stamps: Vec<FileStamp>,
    targets: Arc<HashMap<String, Target>>,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn new(path: PathBuf, meta: &fs::Metadata) -> Self {
        FileStamp {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl TokenFiles {
    /// Parses right away so syntax errors show at start; a missing source is only a warning
    /// (upstream reads it on the first lookup, and lookups fail until it exists). A source that
    /// exists but is neither a regular file nor a directory (a FIFO, `/dev/zero`), or a file over
    /// the size cap, is an error: reading it would block or never end.
    pub(super) fn new(plugin: &str, source: &str, reload: bool) -> anyhow::Result<Self> {
        match fs::metadata(source) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => bail!("--token-source={source}: {e}"),
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) => check_regular(&meta, MAX_TOKEN_FILE_BYTES).map_err(|e| {
                anyhow!(
                    "--token-source={source}: {} (the {plugin} plugin reads a regular file or a \
                     directory of regular files)",
                    e.about(Path::new(source))
                )
            })?,
        }
        let files = TokenFiles {
            source: PathBuf::from(source),
            reload,
            cache: Mutex::new(None),
        };
        match files.targets() {
            Ok(targets) => debug!(source, tokens = targets.len(), "token file loaded"),
            Err(TokenError::Source { reason, .. }) if files.source.exists() => {
                bail!("--token-source={source}: {reason}")
            }
            Err(e) => {
                warn!(error = %e, "token source is not readable yet; lookups fail until it is")
            }
        }
        Ok(files)
    }

    /// Looks `token` up in the current map, re-read on a blocking thread if needed.
    pub(super) async fn lookup(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<Option<Target>, TokenError> {
        let files = Arc::clone(self);
        let targets = tokio::task::spawn_blocking(move || files.targets())
            .await
            .map_err(|e| TokenError::Task(one_line(&e)))??;
        Ok(targets.get(token).cloned())
    }

    /// The current token map, re-parsed if needed. Blocking: runs on a blocking thread. The
    /// cache lock is only taken to copy or replace the map, never across file I/O.
    pub(super) fn targets(&self) -> Result<Arc<HashMap<String, Target>>, TokenError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(parsed) = cached.as_ref().filter(|_| !self.reload) {
            return Ok(Arc::clone(&parsed.targets));
        }
        let stamps = self.stamps()?;
        if let Some(parsed) = cached.as_ref().filter(|parsed| parsed.stamps == stamps) {
            return Ok(Arc::clone(&parsed.targets));
        }
        let (targets, errors) = self.parse(&stamps)?;
        for error in &errors {
            warn!(
                file = %error.file.display(),
                line = error.line,
                reason = %error.reason,
                "syntax error in token file; line skipped"
            );
        }
        if cached.is_some() {
            info!(source = %self.source.display(), tokens = targets.len(), "token files changed; reloaded");
        }
        let targets = Arc::new(targets);
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = Some(Parsed {
            stamps,
            targets: Arc::clone(&targets),
        });
        Ok(targets)
    }

    /// The files that make up the source: the file itself, or the entries of the directory
    /// that are not directories (not recursive; names starting with `.`, such as editor swap
    /// files, skipped), in name order so that later duplicates win predictably.
    fn stamps(&self) -> Result<Vec<FileStamp>, TokenError> {
        let meta = fs::metadata(&self.source).map_err(|e| self.source_error(&e))?;
        if !meta.is_dir() {
            return Ok(vec![FileStamp::new(self.source.clone(), &meta)]);
        }
        let mut stamps = Vec::new();
        for entry in fs::read_dir(&self.source).map_err(|e| self.source_error(&e))? {
            let entry = entry.map_err(|e| self.source_error(&e))?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            // FIFOs and devices are kept here so that parse() names them in a warning.
            if let Some(meta) = fs::metadata(&path).ok().filter(|m| !m.is_dir()) {
                stamps.push(FileStamp::new(path, &meta));
            }
        }
        stamps.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(stamps)
    }

    /// Reads and parses the files of `stamps`, in order. In a directory, a file that cannot
    /// be used (not a regular file, over the cap, unreadable) is skipped with a warning.
    fn parse(
        &self,
        stamps: &[FileStamp],
    ) -> Result<(HashMap<String, Target>, Vec<SyntaxError>), TokenError> {
        let single_file = !fs::metadata(&self.source).is_ok_and(|m| m.is_dir());
        let mut targets = HashMap::new();
        let mut errors = Vec::new();
        for stamp in stamps {
            let bytes = match read_regular_file(&stamp.path, MAX_TOKEN_FILE_BYTES) {
                Ok(bytes) => bytes,
                Err(e) if single_file => {
                    return Err(TokenError::Source {
                        path: self.source.clone(),
                        reason: e.about(&self.source),
                    });
                }
                Err(e) => {
                    // Also when removed or replaced between the listing and the read: the next
                    // lookup sees a different listing and parses again.
                    warn!("token file skipped: {}", e.about(&stamp.path));
                    continue;
                }
            };
            let text = String::from_utf8_lossy(&bytes);
            errors.extend(parse_token_file(&stamp.path, &text, &mut targets));
        }
        Ok((targets, errors))
    }

    fn source_error(&self, e: &io::Error) -> TokenError {
        TokenError::Source {
            path: self.source.clone(),
            reason: e.to_string(),
        }
    }
}

/// A bad line of a token file: where it is and what is wrong (never its content, which holds
/// the token).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SyntaxError {
    file: PathBuf,
    /// 1-based, counted within `file` (upstream counts across all files of a directory).
    line: usize,
    reason: String,
}

/// Adds the entries of one token file to `targets` (later lines win) and returns its bad lines.
fn parse_token_file(
    path: &Path,
    text: &str,
    targets: &mut HashMap<String, Target>,
) -> Vec<SyntaxError> {
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_token_line(line) {
            Ok(Some((token, target))) => {
                targets.insert(token, target);
            }
            Ok(None) => {}
            Err(reason) => errors.push(SyntaxError {
                file: path.to_path_buf(),
                line: index + 1,
                reason,
            }),
        }
    }
    errors
}

/// One `token: target` line. Blank lines and `#` comments are `Ok(None)`. Like upstream's
/// `re.split(r':\s', line)`, the line must contain exactly one `:` followed by whitespace.
fn parse_token_line(line: &str) -> Result<Option<(String, Target)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let mut separators = line.char_indices().filter(|&(i, c)| {
        c == ':'
            && line[i + 1..]
                .chars()
                .next()
                .is_some_and(char::is_whitespace)
    });
    let Some((split, _)) = separators.next() else {
        return Err("expected 'token: host:port' (a ':' followed by a space)".into());
    };
    if separators.next().is_some() {
        return Err("more than one ': ' on the line".into());
    }
    let token = line[..split].trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    let target = parse_target(&line[split + 1..])?;
    Ok(Some((token.to_owned(), target)))
}

// ---------------------------------------------------------------------------------------------
// TokenFileName

/// `<dir>/<token>` holds the target. Upstream takes the basename of the token; tokens with a
/// path separator are unknown here instead.
pub(super) async fn lookup_file_name(
    dir: &Path,
    token: &str,
) -> Result<Option<Target>, TokenError> {
    if !is_plain_file_name(token) {
        debug!(token = %token_tag(token), "token is not a plain file name");
        return Ok(None);
    }
    let path = dir.join(token);
    let read = tokio::task::spawn_blocking(move || read_regular_file(&path, MAX_TARGET_FILE_BYTES))
        .await
        .map_err(|e| TokenError::Task(one_line(&e)))?;
    let bytes = match read {
        Ok(bytes) => bytes,
        // Only a regular file can be a token: a FIFO or device there is an unknown token.
        Err(ReadError::NotRegular(_)) => return Ok(None),
        Err(e) if e.is_not_found() => return Ok(None),
        Err(ReadError::TooLarge(_)) => {
            return Err(TokenError::BadTarget {
                backend: "TokenFileName",
                reason: "the token's file is larger than 64 KiB".into(),
            });
        }
        // Errors name the directory only: the file name is the token.
        Err(e) => {
            return Err(TokenError::Source {
                path: dir.to_path_buf(),
                reason: format!("the token's file: {e}"),
            });
        }
    };
    let bad = |reason: String| TokenError::BadTarget {
        backend: "TokenFileName",
        reason,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("the file is not UTF-8".into()))?;
    parse_target(text).map(Some).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::token::testing::{bounded, tcp};
    use crate::token::{TokenError, Tokens};

    #[test]
    fn token_lines_parse_like_upstream() {
        let line = |l: &str| parse_token_line(l).expect("valid line");
        assert_eq!(
            line("vm1: 10.0.0.1:5900"),
            Some(("vm1".into(), tcp("10.0.0.1", 5900)))
        );
        assert_eq!(
            line("  vm1:\thost.example:5901  "),
            Some(("vm1".into(), tcp("host.example", 5901)))
        );
        assert_eq!(line("a:b: h:1"), Some(("a:b".into(), tcp("h", 1))));
        assert_eq!(line("v6: ::1:5900"), Some(("v6".into(), tcp("::1", 5900))));
        assert_eq!(
            line("v6b: [::1]:5900"),
            Some(("v6b".into(), tcp("::1", 5900)))
        );
        assert_eq!(
            line("v6c: [fe80::1%eth0]:5900"),
            Some(("v6c".into(), tcp("fe80::1%eth0", 5900)))
        );
        assert_eq!(
            line("sock: unix_socket:/run/vnc/a:b.sock"),
            Some((
                "sock".into(),
                Target::Unix(PathBuf::from("/run/vnc/a:b.sock"))
            ))
        );
        assert_eq!(line(""), None);
        assert_eq!(line("   "), None);
        assert_eq!(line("# vm1: 10.0.0.1:5900"), None);
        assert_eq!(line("  # indented comment"), None);
    }

    #[test]
    fn bad_token_lines_are_errors() {
        for bad in [
            "vm1:10.0.0.1:5900",
            "vm1 10.0.0.1:5900",
            "vm1: host: 5900",
            "vm1: host",
            "vm1: host:notaport",
            "vm1: host:0",
            "vm1: host:70000",
            "vm1: :5900",
            ": host:5900",
            "vm1: [::1:5900",
            "vm1: fe80::1::5900",
            "vm1: unix_socket:",
            "vm1: a b:5900",
        ] {
            assert!(
                parse_token_line(bad).is_err(),
                "{bad:?} should be a syntax error"
            );
        }
    }

    // ---- TokenFile / ReadOnlyTokenFile ----

    #[test]
    fn syntax_errors_name_the_file_and_its_own_line_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join("a.conf"),
            "# first\nvm1: 10.0.0.1:5900\n\nvm2: 10.0.0.2:5900\n",
        )
        .expect("write");
        fs::write(
            dir.path().join("b.conf"),
            "vm3: 10.0.0.3:5900\nbroken line\n# c\nvm4 10.0.0.4:1\n",
        )
        .expect("write");
        let files =
            TokenFiles::new("TokenFile", dir.path().to_str().expect("utf-8"), true).expect("files");
        let stamps = files.stamps().expect("stamps");
        let (targets, errors) = files.parse(&stamps).expect("parse");
        assert_eq!(targets.len(), 3);
        let where_: Vec<_> = errors
            .iter()
            .map(|e| {
                (
                    e.file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(str::to_owned),
                    e.line,
                )
            })
            .collect();
        assert_eq!(
            where_,
            [(Some("b.conf".into()), 2), (Some("b.conf".into()), 4)]
        );
        // The reason never repeats the line (which holds the token).
        assert!(
            errors
                .iter()
                .all(|e| !e.reason.contains("broken") && !e.reason.contains("vm4"))
        );
    }

    #[tokio::test]
    async fn directory_source_reads_regular_files_and_later_duplicates_win() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::write(
                dir.path().join("10-first"),
                "dup: 10.0.0.1:1\nonly1: 10.0.0.1:2\n",
            )
            .expect("write");
            fs::write(dir.path().join("20-second"), "dup: 10.0.0.2:1\n").expect("write");
            fs::write(dir.path().join(".hidden.swp"), "hidden: 10.0.0.9:9\n").expect("write");
            fs::create_dir(dir.path().join("sub")).expect("mkdir");
            fs::write(dir.path().join("sub/inner"), "inner: 10.0.0.8:8\n").expect("write");
            let tokens = Tokens::new("TokenFile", dir.path().to_str()).expect("tokens");
            assert_eq!(
                tokens.lookup("dup").await.expect("lookup"),
                Some(tcp("10.0.0.2", 1))
            );
            assert_eq!(
                tokens.lookup("only1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 2))
            );
            assert_eq!(tokens.lookup("hidden").await.expect("lookup"), None);
            assert_eq!(tokens.lookup("inner").await.expect("lookup"), None);
            assert_eq!(tokens.lookup("nope").await.expect("lookup"), None);
        })
        .await;
    }

    #[tokio::test]
    async fn token_file_reloads_when_a_file_changes() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            let tokens =
                Tokens::new("websockify.token_plugins.TokenFile", file.to_str()).expect("tokens");
            assert_eq!(tokens.name(), "TokenFile");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            fs::write(&file, "vm1: 10.0.0.11:5911\nvm2: 10.0.0.2:5900\n").expect("rewrite");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.11", 5911))
            );
            assert_eq!(
                tokens.lookup("vm2").await.expect("lookup"),
                Some(tcp("10.0.0.2", 5900))
            );
            // An atomic replace (new inode, same length) is seen too.
            let tmp = dir.path().join("tokens.new");
            fs::write(&tmp, "vm1: 10.0.0.12:5912\nvm3: 10.0.0.3:5900\n").expect("write");
            fs::rename(&tmp, &file).expect("rename");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.12", 5912))
            );
            assert_eq!(tokens.lookup("vm2").await.expect("lookup"), None);
            // Removing the file revokes every token: lookups fail instead of serving stale data.
            fs::remove_file(&file).expect("remove");
            let err = tokens.lookup("vm1").await.expect_err("missing source");
            assert!(matches!(err, TokenError::Source { .. }), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn token_directory_sees_new_files() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let tokens = Tokens::new("TokenFile", dir.path().to_str()).expect("tokens");
            assert_eq!(tokens.lookup("vm1").await.expect("lookup"), None);
            fs::write(dir.path().join("new"), "vm1: 10.0.0.1:5900\n").expect("write");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn read_only_token_file_never_reloads() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            let tokens = Tokens::new("ReadOnlyTokenFile", file.to_str()).expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            fs::write(&file, "vm1: 10.0.0.11:5911\nvm2: 10.0.0.2:5900\n").expect("rewrite");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            assert_eq!(tokens.lookup("vm2").await.expect("lookup"), None);
        })
        .await;
    }

    #[tokio::test]
    async fn missing_token_file_fails_lookups_until_it_exists() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("later");
            let tokens = Tokens::new("ReadOnlyTokenFile", file.to_str()).expect("start anyway");
            let err = tokens.lookup("vm1").await.expect_err("no file yet");
            assert!(err.to_string().contains("later"), "{err}");
            assert!(!err.to_string().contains("vm1"), "{err}");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
        })
        .await;
    }

    // ---- TokenFileName ----

    #[tokio::test]
    async fn token_file_name_reads_one_file_per_token_and_refuses_traversal() {
        bounded(async {
            let root = tempfile::tempdir().expect("tempdir");
            let dir = root.path().join("tokens");
            fs::create_dir(&dir).expect("mkdir");
            fs::write(dir.join("vm1"), "  10.0.0.1:5900\n").expect("write");
            fs::write(dir.join("vm6"), "[::1]:5901").expect("write");
            fs::write(dir.join("sock"), "unix_socket:/run/x.sock\n").expect("write");
            fs::write(dir.join("bad"), "no port here\n").expect("write");
            fs::write(root.path().join("outside"), "10.6.6.6:6666\n").expect("write");
            fs::create_dir(dir.join("subdir")).expect("mkdir");
            let tokens = Tokens::new("TokenFileName", dir.to_str()).expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            assert_eq!(
                tokens.lookup("vm6").await.expect("lookup"),
                Some(tcp("::1", 5901))
            );
            assert_eq!(
                tokens.lookup("sock").await.expect("lookup"),
                Some(Target::Unix(PathBuf::from("/run/x.sock")))
            );
            for refused in [
                "../outside",
                "..",
                ".",
                "",
                "subdir",
                "subdir/../vm1",
                "a\\b",
                "vm1\0",
                "missing",
            ] {
                assert_eq!(
                    tokens.lookup(refused).await.expect("lookup"),
                    None,
                    "{refused:?}"
                );
            }
            let err = tokens.lookup("bad").await.expect_err("bad content");
            assert!(matches!(err, TokenError::BadTarget { .. }), "{err}");
        })
        .await;
    }

    // ---- sources that are not regular files, or too large ----

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    }

    /// `Tokens::new` on a blocking thread under a time bound: a start-up that hangs fails the
    /// test instead of hanging it.
    async fn start(plugin: &'static str, source: &Path) -> anyhow::Result<Tokens> {
        let source = source.to_str().expect("utf-8").to_owned();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::task::spawn_blocking(move || Tokens::new(plugin, Some(&source))),
        )
        .await
        .expect("start-up hung")
        .expect("task")
    }

    #[tokio::test]
    async fn fifo_and_dev_zero_sources_are_refused_at_start() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let fifo = dir.path().join("tokens.fifo");
            mkfifo(&fifo);
            for plugin in ["TokenFile", "ReadOnlyTokenFile"] {
                for (source, kind) in [
                    (fifo.as_path(), "is a FIFO (named pipe), not a regular file"),
                    (
                        Path::new("/dev/zero"),
                        "is a character device, not a regular file",
                    ),
                ] {
                    let err = start(plugin, source).await.expect_err("refused");
                    let text = format!("{err:#}");
                    assert!(
                        text.contains(&format!("{} {kind}", source.display()))
                            && text.contains("--token-source")
                            && text.contains(plugin),
                        "{text}"
                    );
                }
            }
            let key = start("JWTTokenApi", &fifo).await.expect_err("fifo key");
            assert!(format!("{key:#}").contains("FIFO"), "{key:#}");
        })
        .await;
    }

    #[tokio::test]
    async fn oversized_token_file_is_refused_naming_the_file_and_the_cap() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let big = dir.path().join("big");
            // Sparse: costs no disk space.
            fs::File::create(&big)
                .and_then(|f| f.set_len(MAX_TOKEN_FILE_BYTES + 1))
                .expect("big file");
            let err = start("TokenFile", &big).await.expect_err("too large");
            let text = format!("{err:#}");
            assert!(
                text.contains(&format!(
                    "{} is larger than the 16 MiB limit",
                    big.display()
                )),
                "{text}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn a_source_replaced_by_a_fifo_fails_lookups_at_once() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            fs::write(&file, "vm1: 10.0.0.1:5900\n").expect("write");
            let tokens = start("TokenFile", &file).await.expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            fs::remove_file(&file).expect("remove");
            mkfifo(&file);
            let err = tokens.lookup("vm1").await.expect_err("fifo");
            assert!(matches!(err, TokenError::Source { .. }), "{err}");
            assert!(err.to_string().contains("FIFO"), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn fifos_and_oversized_files_in_a_directory_are_skipped() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            fs::write(dir.path().join("a"), "vm1: 10.0.0.1:5900\n").expect("write");
            mkfifo(&dir.path().join("b-fifo"));
            fs::File::create(dir.path().join("c-big"))
                .and_then(|f| f.set_len(MAX_TOKEN_FILE_BYTES + 1))
                .expect("big file");
            fs::write(dir.path().join("d"), "vm2: 10.0.0.2:5900\n").expect("write");
            let tokens = start("TokenFile", dir.path()).await.expect("tokens");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            assert_eq!(
                tokens.lookup("vm2").await.expect("lookup"),
                Some(tcp("10.0.0.2", 5900))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn token_file_name_never_opens_a_fifo_and_refuses_huge_files() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            mkfifo(&dir.path().join("fifo"));
            fs::File::create(dir.path().join("big"))
                .and_then(|f| f.set_len(MAX_TARGET_FILE_BYTES + 1))
                .expect("big file");
            let tokens = start("TokenFileName", dir.path()).await.expect("tokens");
            assert_eq!(tokens.lookup("fifo").await.expect("lookup"), None);
            let err = tokens.lookup("big").await.expect_err("too large");
            assert!(matches!(err, TokenError::BadTarget { .. }), "{err}");
        })
        .await;
    }
}
