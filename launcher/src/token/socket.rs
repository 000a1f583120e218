//! The `UnixDomainSocketDirectory` back-end: the token names a unix socket inside a directory.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use tracing::{debug, warn};

use super::error::{TokenError, token_tag};
use super::value::is_plain_file_name;
use crate::config::Target;

/// `<dir>/<token>` must be a unix socket that, symlinks resolved, is still inside `dir`
/// (canonical). Upstream's check can be escaped with `../` (0.13.0).
pub(super) async fn lookup_socket(dir: &Path, token: &str) -> Result<Option<Target>, TokenError> {
    if !is_plain_file_name(token) || token.starts_with('.') {
        debug!(token = %token_tag(token), "token is not a plain socket name");
        return Ok(None);
    }
    let path = dir.join(token);
    let meta = match tokio::fs::symlink_metadata(&path).await {
        Ok(meta) => meta,
        Err(_) => return Ok(None),
    };
    let path = if meta.file_type().is_symlink() {
        let Ok(resolved) = tokio::fs::canonicalize(&path).await else {
            return Ok(None);
        };
        if !resolved.starts_with(dir) {
            warn!(token = %token_tag(token), "socket symlink points outside the directory; refused");
            return Ok(None);
        }
        resolved
    } else {
        path
    };
    match tokio::fs::metadata(&path).await {
        Ok(meta) if meta.file_type().is_socket() => Ok(Some(Target::Unix(path))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use crate::config::Target;
    use crate::token::Tokens;
    use crate::token::testing::bounded;

    #[tokio::test]
    async fn socket_directory_finds_sockets_only_inside_the_directory() {
        bounded(async {
            let root = tempfile::tempdir().expect("tempdir");
            let socks = root.path().join("socks");
            let socks2 = root.path().join("socks2");
            fs::create_dir(&socks).expect("mkdir");
            fs::create_dir(&socks2).expect("mkdir");
            let _inside =
                std::os::unix::net::UnixListener::bind(socks.join("vm.sock")).expect("bind");
            let _outside =
                std::os::unix::net::UnixListener::bind(socks2.join("x.sock")).expect("bind");
            fs::write(socks.join("plain"), "").expect("write");
            std::os::unix::fs::symlink(socks2.join("x.sock"), socks.join("escape.sock"))
                .expect("symlink");
            std::os::unix::fs::symlink(socks.join("vm.sock"), socks.join("alias.sock"))
                .expect("symlink");
            let tokens = Tokens::new("UnixDomainSocketDirectory", socks.to_str()).expect("tokens");
            let canonical = fs::canonicalize(&socks).expect("canonical");
            assert_eq!(
                tokens.lookup("vm.sock").await.expect("lookup"),
                Some(Target::Unix(canonical.join("vm.sock")))
            );
            assert_eq!(
                tokens.lookup("alias.sock").await.expect("lookup"),
                Some(Target::Unix(canonical.join("vm.sock")))
            );
            for refused in [
                "../socks2/x.sock",
                "escape.sock",
                "plain",
                "missing.sock",
                "..",
                ".",
                ".hidden",
                "",
                "vm.sock\0",
                "/abs/vm.sock",
            ] {
                assert_eq!(
                    tokens.lookup(refused).await.expect("lookup"),
                    None,
                    "{refused:?}"
                );
            }
        })
        .await;
    }
}
