//! Secrets kept off the command line, where `ps` shows them to every user (upstream #449):
//! the `--key` password from `--key-password-file FILE` or `WEBSOCKIFY_KEY_PASSWORD`, and
//! BasicHTTPAuth credentials from `--auth-source @FILE`.
//!
//! They are read once, in `main`, before the daemon detaches and before `--user` drops
//! privileges, so the files may be readable by root only.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::config::Settings;

/// The environment variable holding the `--key` password.
pub const KEY_PASSWORD_ENV: &str = "WEBSOCKIFY_KEY_PASSWORD";

/// Largest secret file read (a password or `user:password` line, with room to spare).
const MAX_SECRET: u64 = 64 * 1024;

/// Fills in the key password and the BasicHTTPAuth credentials from their files or the
/// environment; errors name the option and the file.
pub fn resolve(settings: &mut Settings) -> anyhow::Result<()> {
    let tls = &mut settings.server.tls;
    let from_env = std::env::var(KEY_PASSWORD_ENV).ok();
    tls.key_password = key_password(
        tls.key_password.take(),
        tls.key_password_file.as_deref(),
        from_env,
    )?;
    let auth = &mut settings.server.auth;
    let basic = auth
        .plugin
        .as_deref()
        .is_some_and(|name| name.rsplit('.').next() == Some("BasicHTTPAuth"));
    if basic && let Some(path) = auth.source.as_deref().and_then(|s| s.strip_prefix('@')) {
        let credentials = read_secret(Path::new(path), "--auth-source")?;
        if credentials.contains('\n') {
            bail!(
                "--auth-source file {path} holds more than one line; it should hold one \
                 USER:PASSWORD line"
            );
        }
        auth.source = Some(credentials);
    }
    Ok(())
}

/// `--key-password` wins over `--key-password-file`, which wins over the environment.
fn key_password(
    option: Option<String>,
    file: Option<&Path>,
    env: Option<String>,
) -> anyhow::Result<Option<String>> {
    if option.is_some() {
        return Ok(option);
    }
    if let Some(path) = file {
        return read_secret(path, "--key-password-file").map(Some);
    }
    Ok(env.filter(|v| !v.is_empty()))
}

/// The file's text with one trailing newline (`\n` or `\r\n`) removed.
fn read_secret(path: &Path, option: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {option} file {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_SECRET + 1)
        .read_to_string(&mut text)
        .with_context(|| {
            format!(
                "cannot read {option} file {} (it must be UTF-8 text)",
                path.display()
            )
        })?;
    if text.len() as u64 > MAX_SECRET {
        bail!(
            "{option} file {} is larger than {MAX_SECRET} bytes; it should hold one line",
            path.display()
        );
    }
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn key_password_precedence_is_option_then_file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let pw = file(&dir, "pw", "from-file\n");
        let some = |s: &str| Some(s.to_owned());
        let got = key_password(some("opt"), Some(&pw), some("env")).unwrap();
        assert_eq!(got.as_deref(), Some("opt"));
        let got = key_password(None, Some(&pw), some("env")).unwrap();
        assert_eq!(got.as_deref(), Some("from-file"));
        let got = key_password(None, None, some("env")).unwrap();
        assert_eq!(got.as_deref(), Some("env"));
        assert_eq!(key_password(None, None, some("")).unwrap(), None);
        assert_eq!(key_password(None, None, None).unwrap(), None);
    }

    #[test]
    fn one_trailing_newline_is_stripped() {
        let dir = tempfile::tempdir().unwrap();
        for (contents, expected) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw", "pw"),
            ("pw\n\n", "pw\n"),
            (" pw \n", " pw "),
        ] {
            let path = file(&dir, "pw", contents);
            assert_eq!(read_secret(&path, "--x").unwrap(), expected, "{contents:?}");
        }
    }

    #[test]
    fn unreadable_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = format!(
            "{:#}",
            read_secret(&missing, "--key-password-file").unwrap_err()
        );
        assert!(
            err.contains("--key-password-file") && err.contains("nope"),
            "{err}"
        );
        let big = file(&dir, "big", &"x".repeat(70_000));
        let err = format!("{:#}", read_secret(&big, "--auth-source").unwrap_err());
        assert!(err.contains("larger than"), "{err}");
    }

    fn settings(plugin: &str, source: &str) -> Settings {
        let line = format!("--auth-plugin {plugin} --auth-source {source} 6080 h:1");
        match crate::cli::parse(std::iter::once("websockify").chain(line.split_whitespace())) {
            Ok(crate::cli::Parsed::Run(settings)) => *settings,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn auth_source_at_file_reads_basic_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let creds = file(&dir, "creds", "alice:s3cret\n");
        let mut s = settings("BasicHTTPAuth", &format!("@{}", creds.display()));
        resolve(&mut s).unwrap();
        assert_eq!(s.server.auth.source.as_deref(), Some("alice:s3cret"));

        let two = file(&dir, "two", "a:b\nc:d\n");
        let mut s = settings("BasicHTTPAuth", &format!("@{}", two.display()));
        let err = format!("{:#}", resolve(&mut s).unwrap_err());
        assert!(err.contains("more than one line"), "{err}");

        let mut s = settings(
            "websockify.auth_plugins.BasicHTTPAuth",
            &format!("@{}/missing", dir.path().display()),
        );
        let err = format!("{:#}", resolve(&mut s).unwrap_err());
        assert!(
            err.contains("--auth-source") && err.contains("missing"),
            "{err}"
        );

        // Other plugins take the source as given.
        let mut s = settings("ExpectOrigin", "@notafile");
        resolve(&mut s).unwrap();
        assert_eq!(s.server.auth.source.as_deref(), Some("@notafile"));
    }
}
