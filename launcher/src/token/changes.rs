//! Knowing, without reading a token source, whether it may have changed: an inotify instance
//! watching the source (a file or a directory, symlinks followed) and the directory that holds
//! it (for a source that is created, replaced by a rename or removed).
//!
//! Why inotify through `nix` (already a dependency) rather than a watcher crate such as
//! `notify`: the kernel queues an event before the `write`/`rename`/`close` that caused it
//! returns, so a lookup that polls the descriptor (one non-blocking `poll`, no file I/O) knows
//! whether anything changed since the last refresh. A lookup that starts after a change was
//! made therefore never sees the old map, as with upstream's re-read on every lookup. A watcher
//! that delivers events on its own thread later cannot promise that.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// Events that change what a source holds. Not `IN_MODIFY`: a file is read once its writer
/// closes it, not half-written after each `write`.
const SOURCE_EVENTS: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

/// Events in the directory holding the source: its entries appearing, changing or going away.
const PARENT_EVENTS: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_ONLYDIR);

/// The watches on one token source.
pub(super) struct Changes {
    inotify: Inotify,
    /// Taken by the refresh only (`watch`, `drain`); lookups only `poll` the descriptor.
    watches: Mutex<Watches>,
    /// Whether the last `watch` armed every watch it needed; if not, changes may go unseen.
    complete: AtomicBool,
}

#[derive(Default)]
struct Watches {
    parent: Option<WatchDescriptor>,
    source: Option<WatchDescriptor>,
}

impl Changes {
    /// A new inotify instance (no watches yet: call [`Changes::watch`]).
    pub(super) fn new() -> io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
        Ok(Changes {
            inotify,
            watches: Mutex::new(Watches::default()),
            complete: AtomicBool::new(false),
        })
    }

    /// Whether events are queued: something changed since the last [`Changes::drain`]. Never
    /// blocks (a poll with a zero timeout); any doubt counts as a change.
    pub(super) fn pending(&self) -> bool {
        let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
        !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(0))
    }

    /// Whether every watch is armed. If not (the directory holding the source is missing, the
    /// system's limit on watches is reached), the caller must look for changes itself.
    pub(super) fn complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// (Re)arms the watches on `source` and on the directory holding it. Cheap when nothing
    /// moved (the kernel returns the existing watch); a source that was replaced gets a watch
    /// on the new file and the old one is dropped. Returns why a watch could not be armed.
    pub(super) fn watch(&self, source: &Path) -> Result<(), String> {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let parent = match source.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut problem = None;
        let new_parent = match self.inotify.add_watch(parent, PARENT_EVENTS) {
            Ok(wd) => Some(wd),
            Err(e) => {
                problem = Some(format!("cannot watch {}: {e}", parent.display()));
                None
            }
        };
        let new_source = match self.inotify.add_watch(source, SOURCE_EVENTS) {
            Ok(wd) => Some(wd),
            // A missing source is seen appearing through the parent's watch.
            Err(Errno::ENOENT) => None,
            Err(e) => {
                problem = Some(format!("cannot watch {}: {e}", source.display()));
                None
            }
        };
        for (old, new) in [(watches.parent, new_parent), (watches.source, new_source)] {
            if let Some(old) = old.filter(|old| Some(*old) != new && Some(*old) != new_parent) {
                // Already gone if the file was deleted; nothing to do then.
                let _ = self.inotify.rm_watch(old);
            }
        }
        watches.parent = new_parent;
        watches.source = new_source;
        self.complete.store(problem.is_none(), Ordering::SeqCst);
        problem.map_or(Ok(()), Err)
    }

    /// Reads every queued event; whether any may concern the source named `name`: an event on
    /// the source itself (or inside it, for a directory), on its name in the parent directory,
    /// or a queue overflow. Other entries of the parent directory (often a busy one such as
    /// `/tmp`) changing is no reason to re-scan the source.
    pub(super) fn drain(&self, name: Option<&OsStr>) -> bool {
        let watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let mut relevant = false;
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(Errno::EAGAIN) => return relevant,
                // Unexpected: count it as a change.
                Err(_) => return true,
            };
            relevant |= events.iter().any(|event| {
                event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                    || Some(event.wd) == watches.source
                    || (Some(event.wd) == watches.parent && event.name.as_deref() == name)
            });
        }
    }
}
