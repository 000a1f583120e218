//! The `TokenFile` line parser (`token: host:port`, `token: [v6]:port`,
//! `token: unix_socket:/path`, comments, blank lines), one line and whole files.
//!
//! Invariants: no panic; a parsed line has a trimmed, non-empty token and a sane target
//! (host non-empty, no whitespace or `/`, a `:` only in an IPv6 literal; port 1 to 65535;
//! a non-empty socket path); writing the entry back as a line parses to the same entry;
//! a file gives at most one entry or error per line, errors numbered within the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use websockify::Target;
use websockify::fuzzing::{token_file, token_line};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Ok(Some((token, target))) = token_line(line) {
            assert!(!token.is_empty());
            assert_eq!(token, token.trim());
            check_target(&target);
            // A TCP host spelled `unix_socket` (reached through padding the parser trims)
            // has no line form of its own: `unix_socket:PORT` names a unix socket, as
            // upstream reads it (the same skip as in token_value).
            if matches!(&target, Target::Tcp { host, .. } if host == "unix_socket") {
                continue;
            }
            let again = format!("{token}: {}", line_form(&target));
            assert_eq!(
                token_line(&again),
                Ok(Some((token.clone(), target.clone()))),
                "{line:?} written back as {again:?}"
            );
        }
    }
    let lines = text.lines().count();
    let (entries, errors) = token_file(text);
    assert!(entries.len() + errors.len() <= lines);
    for (number, reason) in &errors {
        assert!((1..=lines).contains(number));
        assert!(!reason.is_empty());
    }
});

/// The target as a token file line names it.
fn line_form(target: &Target) -> String {
    match target {
        Target::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        Target::Tcp { host, port } => format!("{host}:{port}"),
        Target::Unix(path) => format!("unix_socket:{}", path.display()),
        Target::Loopback { .. } => panic!("a token names a loopback target"),
    }
}

fn check_target(target: &Target) {
    match target {
        Target::Tcp { host, port } => {
            assert!(*port != 0);
            assert!(!host.is_empty());
            assert!(!host.contains(|c: char| c.is_whitespace() || c == '/'));
            if host.contains(':') {
                let address = host.split('%').next().unwrap_or(host);
                assert!(
                    address.parse::<std::net::Ipv6Addr>().is_ok(),
                    "host {host:?}"
                );
            }
        }
        Target::Unix(path) => assert!(!path.as_os_str().is_empty()),
        Target::Loopback { .. } => panic!("a token names a loopback target"),
    }
}
