//! The file back-ends: `TokenFile` and `ReadOnlyTokenFile` (a file of `token: host:port`
//! lines, or a directory of such files, parsed into a map that lookups read without file I/O,
//! refreshed when inotify reports a change) and `TokenFileName` (one file per token,
//! `<dir>/<token>` holding the target). File syntax as upstream's `token_plugins.py`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::changes::Changes;
use super::error::{TokenError, one_line, token_tag};
use super::read::{MAX_TOKEN_FILE_BYTES, ReadError, check_regular, read_regular_file};
use super::value::{is_plain_file_name, parse_target};
use crate::config::Target;

/// Largest `TokenFileName` file read; a target is a few dozen bytes.
const MAX_TARGET_FILE_BYTES: u64 = 64 * 1024;

/// How often lookups start a background re-check of a TokenFile source whose changes are not
/// watched (inotify unavailable, or a watch could not be armed).
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How often lookups start a background re-check of a watched source anyway, for changes
/// inotify does not report (a network file system, a writer that never closes the file).
const RESCAN_EVERY: Duration = Duration::from_secs(10);

/// A token file, or a directory of them, parsed into one map that lookups read without file
/// I/O and without waiting on other lookups.
///
/// The map is published as an immutable snapshot. A refresh runs on a blocking thread, one at
/// a time: it re-stats the files, re-reads only those whose stamp changed, and publishes a new
/// map. TokenFile refreshes when inotify reports a change ([`Changes`]): a lookup that finds
/// change events queued, or a refresh under way, waits for the refresh, so a change made
/// before a lookup starts is always seen, as with upstream's re-read on every lookup.
/// ReadOnlyTokenFile keeps its first successful load. Both retry on each lookup while the
/// source cannot be read, and both re-read everything on [`TokenFiles::reload`].
pub(super) struct TokenFiles {
    source: PathBuf,
    /// TokenFile: follow changes; ReadOnlyTokenFile: keep the first successful load.
    follow: bool,
    /// The current map (or why there is none), replaced whole by each refresh.
    published: watch::Sender<Published>,
    /// Refreshes asked for, numbered: a refresh answers every request up to the number it read
    /// before it started.
    requested: AtomicU64,
    /// Whether a refresh task is running (at most one).
    running: AtomicBool,
    /// Whether the next refresh re-reads every file.
    force: AtomicBool,
    /// Whether the next refresh re-stats the source even if no change event concerns it.
    recheck: AtomicBool,
    /// The inotify watches of a TokenFile source; `None` if inotify is not available.
    changes: Option<Changes>,
    /// State of the refresh; only the refresh takes this lock, lookups never do.
    scan: Mutex<Scan>,
    /// File system calls made (stat, directory listing, file read), for tests.
    fs_calls: AtomicU64,
    poll_every: Duration,
    rescan_every: Duration,
}

/// One published version of the map.
struct Published {
    targets: Result<Arc<HashMap<String, Target>>, TokenError>,
    /// The last refresh request this version answers.
    served: u64,
    /// A refresh has taken the queued change events but not published its map yet.
    refreshing: bool,
    /// When the source was last checked.
    checked: Instant,
}

/// What the refresh keeps between runs.
#[derive(Default)]
struct Scan {
    /// Each file of the source (in name order, which decides duplicates) and its entries.
    files: BTreeMap<PathBuf, ParsedFile>,
    /// The merged map of `files`, once built.
    targets: Option<Arc<HashMap<String, Target>>>,
    /// Why the source cannot be watched, as last logged.
    watch_problem: Option<String>,
}

struct ParsedFile {
    stamp: FileStamp,
    entries: Vec<(String, Target)>,
}

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn new(meta: &fs::Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// Clears the running flag if a refresh panics, so that the next lookup starts another.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(false, Ordering::SeqCst);
        }
    }
}

impl TokenFiles {
    /// Parses right away so syntax errors show at start; a missing source is only a warning
    /// (upstream reads it on the first lookup, and lookups fail until it exists). A source that
    /// exists but is neither a regular file nor a directory (a FIFO, `/dev/zero`), or a file over
    /// the size cap, is an error: reading it would block or never end. Blocking (start-up).
    pub(super) fn new(plugin: &str, source: &str, follow: bool) -> anyhow::Result<Self> {
        let changes = if follow {
            Changes::new()
                .map_err(|e| {
                    warn!(
                        "cannot watch the token source for changes (inotify: {e}); it is checked \
                         at most every {} s instead",
                        POLL_EVERY.as_secs()
                    )
                })
                .ok()
        } else {
            None
        };
        Self::open(plugin, source, follow, changes, POLL_EVERY, RESCAN_EVERY)
    }

    fn open(
        plugin: &str,
        source: &str,
        follow: bool,
        changes: Option<Changes>,
        poll_every: Duration,
        rescan_every: Duration,
    ) -> anyhow::Result<Self> {
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
        let (published, _) = watch::channel(Published {
            targets: Err(TokenError::Task("not loaded yet".into())),
            served: 0,
            refreshing: false,
            checked: Instant::now(),
        });
        let files = TokenFiles {
            source: PathBuf::from(source),
            follow,
            published,
            requested: AtomicU64::new(0),
            running: AtomicBool::new(false),
            force: AtomicBool::new(false),
            recheck: AtomicBool::new(false),
            changes,
            scan: Mutex::new(Scan::default()),
            fs_calls: AtomicU64::new(0),
            poll_every,
            rescan_every,
        };
        files.refresh(0);
        match &files.published.borrow().targets {
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

    /// Looks `token` up in the current map. Waits only while a change is pending or the source
    /// is unreadable (then a refresh runs first); otherwise reads the map as it is.
    pub(super) async fn lookup(
        self: &Arc<Self>,
        token: &str,
    ) -> Result<Option<Target>, TokenError> {
        // Order matters: the event queue is polled before the map is read, and a refresh marks
        // itself `refreshing` before it takes the events, so that a change made before this
        // lookup cannot fall between the two.
        let changed = self.changes.as_ref().is_some_and(Changes::pending);
        let recheck_after = if self.changes.as_ref().is_some_and(Changes::complete) {
            self.rescan_every
        } else {
            self.poll_every
        };
        {
            let published = self.published.borrow();
            let wait = published.targets.is_err()
                || (self.follow && self.changes.is_some() && (changed || published.refreshing));
            if !wait {
                let found = published
                    .targets
                    .as_ref()
                    .map(|targets| targets.get(token).cloned())
                    .map_err(Clone::clone);
                let due = self.follow && published.checked.elapsed() >= recheck_after;
                drop(published);
                if due {
                    // In the background: this lookup does not wait for it.
                    self.recheck.store(true, Ordering::SeqCst);
                    self.kick();
                }
                return found;
            }
        }
        let targets = self.refreshed(false).await;
        targets.map(|targets| targets.get(token).cloned())
    }

    /// Re-reads every file now, even for ReadOnlyTokenFile; the number of tokens loaded.
    pub(super) async fn reload(self: &Arc<Self>) -> Result<usize, TokenError> {
        self.refreshed(true).await.map(|targets| targets.len())
    }

    /// Asks for a refresh that starts after this call and waits for its map.
    async fn refreshed(
        self: &Arc<Self>,
        force: bool,
    ) -> Result<Arc<HashMap<String, Target>>, TokenError> {
        let mut updates = self.published.subscribe();
        if force {
            self.force.store(true, Ordering::SeqCst);
        }
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.kick();
        // `wait_for` fails only when the sender is gone, and `self` holds it.
        let answered = updates
            .wait_for(|published| published.served >= ticket)
            .await;
        match answered {
            Ok(published) => published.targets.clone(),
            Err(_) => self.published.borrow().targets.clone(),
        }
    }

    /// Starts the refresh task unless it runs already.
    fn kick(self: &Arc<Self>) {
        if self
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let files = Arc::clone(self);
            tokio::task::spawn_blocking(move || files.refresh_until_answered());
        }
    }

    /// The refresh task: refreshes until every request made so far is answered.
    fn refresh_until_answered(&self) {
        let _running = Running(&self.running);
        loop {
            let ticket = self.requested.load(Ordering::SeqCst);
            self.refresh(ticket);
            if self.requested.load(Ordering::SeqCst) > ticket {
                continue;
            }
            self.running.store(false, Ordering::SeqCst);
            // A request made after the check above saw the task running and did not start one.
            if self.requested.load(Ordering::SeqCst) == ticket
                || self
                    .running
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                return;
            }
        }
    }

    /// One refresh: takes the queued change events, re-arms the watches, re-scans the source
    /// if anything may have changed, and publishes the result as the answer to requests up to
    /// `ticket`. Blocking.
    fn refresh(&self, ticket: u64) {
        let mut scan = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        self.published
            .send_modify(|published| published.refreshing = true);
        let force = self.force.swap(false, Ordering::SeqCst);
        let recheck = self.recheck.swap(false, Ordering::SeqCst);
        let mut changed = true;
        if let Some(changes) = &self.changes {
            changed = changes.drain(self.source.file_name());
            let problem = changes.watch(&self.source).err();
            if problem != scan.watch_problem {
                match &problem {
                    Some(problem) => warn!(
                        "{problem}; the token source is checked at most every {} s instead",
                        self.poll_every.as_secs()
                    ),
                    None => {
                        debug!(source = %self.source.display(), "token source watched for changes")
                    }
                }
                scan.watch_problem = problem;
            }
        }
        let (was_ok, mut checked) = {
            let published = self.published.borrow();
            (published.targets.is_ok(), published.checked)
        };
        let targets = match scan.targets.as_ref() {
            // Only other entries of the parent directory changed.
            Some(targets) if was_ok && !(changed || force || recheck) => Ok(Arc::clone(targets)),
            _ => {
                checked = Instant::now();
                self.rescan(&mut scan, force)
            }
        };
        if let Err(e) = &targets
            && was_ok
        {
            warn!(error = %e, "token source unreadable; lookups fail until it is readable");
        }
        self.published.send_replace(Published {
            targets,
            served: ticket,
            refreshing: false,
            checked,
        });
    }

    /// Re-stats the source and re-reads the files whose stamp changed (every file if `force`);
    /// the merged map, rebuilt only if something changed.
    fn rescan(
        &self,
        scan: &mut Scan,
        force: bool,
    ) -> Result<Arc<HashMap<String, Target>>, TokenError> {
        let (is_dir, listing) = match self.list() {
            Ok(listing) => listing,
            Err(e) => {
                *scan = Scan {
                    watch_problem: scan.watch_problem.take(),
                    ..Scan::default()
                };
                return Err(e);
            }
        };
        let mut changed = force || scan.targets.is_none() || listing.len() != scan.files.len();
        let mut files = BTreeMap::new();
        for (path, stamp) in listing {
            if let Some(old) = scan
                .files
                .remove(&path)
                .filter(|old| old.stamp == stamp && !force)
            {
                files.insert(path, old);
                continue;
            }
            changed = true;
            self.fs_calls.fetch_add(1, Ordering::Relaxed);
            let entries = match read_regular_file(&path, MAX_TOKEN_FILE_BYTES) {
                Ok(bytes) => {
                    let (entries, errors) =
                        parse_token_file(&path, &String::from_utf8_lossy(&bytes));
                    for error in &errors {
                        warn!(
                            file = %error.file.display(),
                            line = error.line,
                            reason = %error.reason,
                            "syntax error in token file; line skipped"
                        );
                    }
                    entries
                }
                Err(e) if !is_dir => {
                    *scan = Scan {
                        watch_problem: scan.watch_problem.take(),
                        ..Scan::default()
                    };
                    return Err(TokenError::Source {
                        path: self.source.clone(),
                        reason: e.about(&self.source),
                    });
                }
                Err(e) => {
                    // Kept, empty, under this stamp: warned about again only once it changes.
                    // Also when removed or replaced since the listing: the next scan sees it.
                    warn!("token file skipped: {}", e.about(&path));
                    Vec::new()
                }
            };
            files.insert(path, ParsedFile { stamp, entries });
        }
        changed |= !scan.files.is_empty();
        scan.files = files;
        match scan.targets.as_ref().filter(|_| !changed) {
            Some(targets) => Ok(Arc::clone(targets)),
            None => {
                let mut targets = HashMap::new();
                for file in scan.files.values() {
                    targets.extend(file.entries.iter().cloned());
                }
                if scan.targets.is_some() {
                    info!(source = %self.source.display(), tokens = targets.len(), "token files changed; reloaded");
                }
                let targets = Arc::new(targets);
                scan.targets = Some(Arc::clone(&targets));
                Ok(targets)
            }
        }
    }

    /// The files that make up the source, with their stamps, and whether it is a directory:
    /// the file itself, or the entries of the directory that are not directories (not
    /// recursive; names starting with `.`, such as editor swap files, skipped). FIFOs and
    /// devices are listed so that the scan names them in a warning.
    fn list(&self) -> Result<(bool, Vec<(PathBuf, FileStamp)>), TokenError> {
        let source_error = |e: io::Error| TokenError::Source {
            path: self.source.clone(),
            reason: e.to_string(),
        };
        self.fs_calls.fetch_add(1, Ordering::Relaxed);
        let meta = fs::metadata(&self.source).map_err(source_error)?;
        if !meta.is_dir() {
            return Ok((false, vec![(self.source.clone(), FileStamp::new(&meta))]));
        }
        self.fs_calls.fetch_add(1, Ordering::Relaxed);
        let mut listing = Vec::new();
        for entry in fs::read_dir(&self.source).map_err(source_error)? {
            let entry = entry.map_err(source_error)?;
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = entry.path();
            self.fs_calls.fetch_add(1, Ordering::Relaxed);
            if let Some(meta) = fs::metadata(&path).ok().filter(|m| !m.is_dir()) {
                listing.push((path, FileStamp::new(&meta)));
            }
        }
        Ok((true, listing))
    }
}

/// A bad line of a token file: where it is and what is wrong (never its content, which holds
/// the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyntaxError {
    file: PathBuf,
    /// 1-based, counted within `file` (upstream counts across all files of a directory).
    pub(super) line: usize,
    pub(super) reason: String,
}

/// The entries of one token file, in order (later lines win), and its bad lines.
pub(super) fn parse_token_file(
    path: &Path,
    text: &str,
) -> (Vec<(String, Target)>, Vec<SyntaxError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        match parse_token_line(line) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(reason) => errors.push(SyntaxError {
                file: path.to_path_buf(),
                line: index + 1,
                reason,
            }),
        }
    }
    (entries, errors)
}

/// One `token: target` line. Blank lines and `#` comments are `Ok(None)`. Like upstream's
/// `re.split(r':\s', line)`, the line must contain exactly one `:` followed by whitespace.
pub(super) fn parse_token_line(line: &str) -> Result<Option<(String, Target)>, String> {
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
        let (entries, errors) = parse_token_file(
            Path::new("/etc/tokens/b.conf"),
            "vm3: 10.0.0.3:5900\nbroken line\n# c\nvm4 10.0.0.4:1\nvm3: 10.0.0.5:5900\n",
        );
        assert_eq!(
            entries,
            [
                ("vm3".to_owned(), tcp("10.0.0.3", 5900)),
                ("vm3".to_owned(), tcp("10.0.0.5", 5900))
            ]
        );
        let where_: Vec<_> = errors
            .iter()
            .map(|e| (e.file.to_str().expect("utf-8"), e.line))
            .collect();
        assert_eq!(
            where_,
            [("/etc/tokens/b.conf", 2), ("/etc/tokens/b.conf", 4)]
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

    // ---- the published map: no file I/O per lookup, changes seen, forced reloads ----

    fn write_tokens(path: &Path, text: &str) {
        fs::write(path, text).expect("write");
    }

    #[tokio::test]
    async fn three_thousand_files_are_not_re_read_on_every_lookup() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            for n in 0..3000 {
                write_tokens(
                    &dir.path().join(format!("vm{n:04}")),
                    &format!("vm{n}: 10.0.{}.{}:5900\n", n / 256, n % 256),
                );
            }
            let source = dir.path().to_str().expect("utf-8");
            // No periodic re-check during the test: only changes may cause file I/O.
            let files = Arc::new(
                TokenFiles::open(
                    "TokenFile",
                    source,
                    true,
                    Some(Changes::new().expect("inotify")),
                    Duration::MAX,
                    Duration::MAX,
                )
                .expect("files"),
            );
            let calls = || files.fs_calls.load(Ordering::Relaxed);
            let after_start = calls();
            assert!(after_start >= 2 * 3000, "{after_start}");
            for n in 0..1000 {
                assert_eq!(
                    files.lookup(&format!("vm{n}")).await.expect("lookup"),
                    Some(tcp(&format!("10.0.{}.{}", n / 256, n % 256), 5900))
                );
                assert_eq!(files.lookup("unknown").await.expect("lookup"), None);
            }
            assert_eq!(calls(), after_start, "lookups touched the file system");

            // One new file: seen by the next lookup, at the cost of one or two re-scans
            // (its creation and its close may be two refreshes), reading that file only.
            write_tokens(&dir.path().join("new"), "fresh: 10.9.9.9:5900\n");
            assert_eq!(
                files.lookup("fresh").await.expect("lookup"),
                Some(tcp("10.9.9.9", 5900))
            );
            let after_change = calls();
            let one_scan = 3000 + 3;
            assert!(
                after_change - after_start <= 2 * one_scan,
                "{after_start} -> {after_change}"
            );
            for n in 0..1000 {
                assert!(
                    files
                        .lookup(&format!("vm{n}"))
                        .await
                        .expect("lookup")
                        .is_some()
                );
            }
            assert_eq!(calls(), after_change, "lookups touched the file system");
        })
        .await;
    }

    #[tokio::test]
    async fn appends_and_a_replaced_directory_are_seen_by_the_next_lookup() {
        bounded(async {
            let root = tempfile::tempdir().expect("tempdir");
            let dir = root.path().join("tokens.d");
            fs::create_dir(&dir).expect("mkdir");
            write_tokens(&dir.join("a"), "vm1: 10.0.0.1:5900\n");
            let tokens = Tokens::new("TokenFile", dir.to_str()).expect("tokens");
            // Appended in place (same inode), as `echo >> file` does.
            {
                use std::io::Write as _;
                let mut file = fs::OpenOptions::new()
                    .append(true)
                    .open(dir.join("a"))
                    .expect("open");
                file.write_all(b"vm2: 10.0.0.2:5900\n").expect("append");
            }
            assert_eq!(
                tokens.lookup("vm2").await.expect("lookup"),
                Some(tcp("10.0.0.2", 5900))
            );
            // The whole directory swapped for another, as deployment tools do.
            let staged = root.path().join("tokens.d.new");
            fs::create_dir(&staged).expect("mkdir");
            write_tokens(&staged.join("b"), "vm3: 10.0.0.3:5900\n");
            fs::rename(&dir, root.path().join("tokens.d.old")).expect("rename");
            fs::rename(&staged, &dir).expect("rename");
            assert_eq!(
                tokens.lookup("vm3").await.expect("lookup"),
                Some(tcp("10.0.0.3", 5900))
            );
            assert_eq!(tokens.lookup("vm1").await.expect("lookup"), None);
            // The new directory is watched too.
            write_tokens(&dir.join("c"), "vm4: 10.0.0.4:5900\n");
            assert_eq!(
                tokens.lookup("vm4").await.expect("lookup"),
                Some(tcp("10.0.0.4", 5900))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn without_inotify_changes_are_seen_by_a_background_recheck() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            write_tokens(&file, "vm1: 10.0.0.1:5900\n");
            let files = Arc::new(
                TokenFiles::open(
                    "TokenFile",
                    file.to_str().expect("utf-8"),
                    true,
                    None,
                    Duration::ZERO,
                    Duration::ZERO,
                )
                .expect("files"),
            );
            write_tokens(&file, "vm1: 10.0.0.11:5900\n");
            let mut updates = files.published.subscribe();
            let before = updates.borrow_and_update().checked;
            // This lookup is answered from the map as it is, and starts a re-check.
            assert!(files.lookup("vm1").await.expect("lookup").is_some());
            updates
                .wait_for(|published| !published.refreshing && published.checked > before)
                .await
                .expect("published");
            assert_eq!(
                files.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.11", 5900))
            );
        })
        .await;
    }

    #[tokio::test]
    async fn forced_reload_rereads_even_a_read_only_token_file() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("tokens");
            write_tokens(&file, "vm1: 10.0.0.1:5900\n");
            let tokens = Tokens::new("ReadOnlyTokenFile", file.to_str()).expect("tokens");
            write_tokens(&file, "vm1: 10.0.0.11:5911\nvm2: 10.0.0.2:5900\n");
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.1", 5900))
            );
            assert_eq!(tokens.reload().await.expect("reload"), Some(2));
            assert_eq!(
                tokens.lookup("vm1").await.expect("lookup"),
                Some(tcp("10.0.0.11", 5911))
            );
            fs::remove_file(&file).expect("remove");
            let err = tokens.reload().await.expect_err("gone");
            assert!(matches!(err, TokenError::Source { .. }), "{err}");
            let names = Tokens::new("TokenFileName", dir.path().to_str()).expect("tokens");
            assert_eq!(names.reload().await.expect("reload"), None);
        })
        .await;
    }
}
