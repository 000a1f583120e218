//! Reading the files a token source is made of, safely: only regular files, each under a size
//! cap, opened so that a FIFO or a device swapped in at the last moment can never block or
//! flood the reader. A leaf module shared by the file and JWT back-ends.

use std::fs::{self, File, FileType};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest token file read (`TokenFile`, `ReadOnlyTokenFile`): far above any real token file,
/// far below what would hurt to hold in memory.
pub(super) const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a source file was not read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A FIFO, device, socket or directory where a regular file is needed.
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    /// Larger than the cap.
    #[error("is larger than the {} limit", size_text(*.0))]
    TooLarge(u64),
}

impl ReadError {
    /// The error as a sentence about `path`: "/x is a FIFO (named pipe), not a regular file",
    /// "/x: Permission denied (os error 13)".
    pub(super) fn about(&self, path: &Path) -> String {
        match self {
            ReadError::Io(e) => format!("{}: {e}", path.display()),
            other => format!("{} {other}", path.display()),
        }
    }

    /// Whether the file does not exist (as opposed to existing and being unusable).
    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// What a file type is, in words, for errors ("a FIFO (named pipe)").
pub(super) fn kind_of(file_type: FileType) -> &'static str {
    if file_type.is_file() {
        "a regular file"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Reads the regular file `path` (symlinks followed) if it holds at most `cap` bytes.
/// Blocking: call it from a blocking thread.
///
/// The type is checked before opening, so that a device is never even opened, and again on the
/// open descriptor, so that a file swapped for a FIFO in between is caught too. The open is
/// non-blocking: opening a FIFO for reading would otherwise wait for a writer forever.
pub(super) fn read_regular_file(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    check_regular(&fs::metadata(path)?, cap)?;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    check_regular(&meta, cap)?;
    read_capped(file, meta.len(), cap)
}

/// Refuses what is not a regular file of at most `cap` bytes.
pub(super) fn check_regular(meta: &fs::Metadata, cap: u64) -> Result<(), ReadError> {
    if !meta.is_file() {
        return Err(ReadError::NotRegular(kind_of(meta.file_type())));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(())
}

/// Reads at most `cap` bytes; a file that grew past the cap since it was stat'ed is refused.
fn read_capped(file: File, len: u64, cap: u64) -> Result<Vec<u8>, ReadError> {
    let capacity = usize::try_from(len.min(cap)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(ReadError::TooLarge(cap));
    }
    Ok(bytes)
}

/// `16 MiB`, `64 KiB`, `100 bytes`.
fn size_text(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_under_the_cap_are_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, "0123456789").expect("write");
        assert_eq!(read_regular_file(&file, 10).expect("read"), b"0123456789");
        let err = read_regular_file(&file, 9).expect_err("too large");
        assert_eq!(err.to_string(), "is larger than the 9 bytes limit");
        let err = read_regular_file(&dir.path().join("missing"), 10).expect_err("missing");
        assert!(err.is_not_found(), "{err}");
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        for (path, kind) in [
            (fifo.as_path(), "a FIFO (named pipe)"),
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ] {
            let err = read_regular_file(path, MAX_TOKEN_FILE_BYTES).expect_err("refused");
            assert_eq!(err.to_string(), format!("is {kind}, not a regular file"));
        }
    }

    #[test]
    fn a_file_that_grows_past_the_cap_after_the_stat_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        fs::write(&file, "0123456789").expect("write");
        // Stat'ed at 4 bytes, holds 10 by the time it is read.
        let err = read_capped(File::open(&file).expect("open"), 4, 5).expect_err("grew");
        assert!(matches!(err, ReadError::TooLarge(5)), "{err}");
        assert_eq!(size_text(MAX_TOKEN_FILE_BYTES), "16 MiB");
        assert_eq!(size_text(64 * 1024), "64 KiB");
    }
}
