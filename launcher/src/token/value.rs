//! The values token back-ends hand back, parsed into a [`Target`]: `host:port`, `[v6]:port`,
//! `unix_socket:/path` and upstream's `{"host": ..., "port": ...}` objects; and the check that a
//! token can name a file inside a directory. A leaf module shared by every back-end.

use std::net::Ipv6Addr;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::config::Target;

/// Parses a target as the token backends give it: `host:port` (split at the last `:`, so
/// `::1:5900` works), `[v6]:port`, or `unix_socket:/path`.
pub(super) fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix_socket:") {
        let path = path.trim();
        if path.is_empty() {
            return Err("unix_socket: needs a path".into());
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("'[' without a closing ']'")?;
        let port = after
            .strip_prefix(':')
            .ok_or("expected ':port' after ']'")?;
        (host, port)
    } else {
        text.rsplit_once(':').ok_or("expected host:port")?
    };
    Ok(Target::Tcp {
        host: check_host(host)?,
        port: parse_port(port)?,
    })
}

/// A host name or IP literal; a host with `:` must be an IPv6 address (optionally with `%zone`).
fn check_host(host: &str) -> Result<String, String> {
    let host = host.trim();
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    // Brackets only ever surround an IPv6 literal, and those are taken off before this check:
    // a bracket left in the host (`[[::1]:80`, or an IPv6 zone like `%eth0]`) would name a
    // host that cannot be written back as a target nor resolved.
    if host
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '[' | ']'))
    {
        return Err("the host contains whitespace, '/', '[' or ']'".into());
    }
    if host.contains(':') {
        let address = host.split('%').next().unwrap_or(host);
        if address.parse::<Ipv6Addr>().is_err() {
            return Err("the host is neither a name nor an IP address".into());
        }
    }
    Ok(host.to_owned())
}

fn parse_port(port: &str) -> Result<u16, String> {
    match port.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err("the port is not a number from 1 to 65535".into()),
        Ok(port) => Ok(port),
    }
}

/// `{"host": ..., "port": ...}` as the JSON API, JWT claims and Redis give it. `port` may be a
/// number or a string; without `port`, `host` is a whole `host:port` (upstream's Redis format),
/// which also wins when `port` is present but `host` already is `host:port` (upstream ignores
/// `port` there). `"host": "unix_socket"` with a string `port` is a unix socket, as upstream.
pub(super) fn target_from_json(object: &Map<String, Value>) -> Result<Target, String> {
    let host = object
        .get("host")
        .and_then(Value::as_str)
        .ok_or("no \"host\" string")?;
    let port = match object.get("port") {
        None | Some(Value::Null) => return parse_target(host),
        Some(port) => port,
    };
    if host == "unix_socket" {
        let path = port
            .as_str()
            .ok_or("a unix_socket \"port\" must be a path string")?;
        return parse_target(&format!("unix_socket:{path}"));
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if bare.contains(':') && check_host(bare).is_err() {
        return parse_target(host);
    }
    let port = match port {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .ok_or("the port is not a number from 1 to 65535")?,
        Value::String(s) => parse_port(s)?,
        _ => return Err("\"port\" is neither a number nor a string".into()),
    };
    Ok(Target::Tcp {
        host: check_host(bare)?,
        port,
    })
}

/// A token that can only name a file directly inside a directory.
pub(super) fn is_plain_file_name(token: &str) -> bool {
    !token.is_empty() && token != "." && token != ".." && !token.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::token::testing::tcp;

    #[test]
    fn json_targets_accept_upstream_and_split_forms() {
        let target = |v: Value| target_from_json(v.as_object().expect("object"));
        assert_eq!(
            target(json!({"host": "h", "port": 5900})),
            Ok(tcp("h", 5900))
        );
        assert_eq!(
            target(json!({"host": "h", "port": "5900"})),
            Ok(tcp("h", 5900))
        );
        assert_eq!(target(json!({"host": "h:5900"})), Ok(tcp("h", 5900)));
        // Upstream's TokenRedis ignores "port" when "host" is host:port.
        assert_eq!(
            target(json!({"host": "h:5900", "port": 1})),
            Ok(tcp("h", 5900))
        );
        assert_eq!(
            target(json!({"host": "::1", "port": 5900})),
            Ok(tcp("::1", 5900))
        );
        assert_eq!(
            target(json!({"host": "[::1]", "port": 5900})),
            Ok(tcp("::1", 5900))
        );
        assert_eq!(
            target(json!({"host": "unix_socket", "port": "/run/a.sock"})),
            Ok(Target::Unix(PathBuf::from("/run/a.sock")))
        );
        assert!(target(json!({"port": 5900})).is_err());
        assert!(target(json!({"host": "h", "port": 0})).is_err());
        assert!(target(json!({"host": "h", "port": 65536})).is_err());
        assert!(target(json!({"host": "h", "port": [1]})).is_err());
        assert!(target(json!({"host": "h"})).is_err());
    }

    /// Found by fuzzing (fuzz/ token_file, token_value): a stray bracket was accepted as part
    /// of a host, giving targets that could not be written back as text.
    #[test]
    fn brackets_inside_a_host_are_refused() {
        for text in [
            "[[a]:80",
            "fe85::1%eth0loc]:5901",
            "[::1%eth0]x]:5900",
            "a]b:80",
            "a[b:80",
        ] {
            assert!(parse_target(text).is_err(), "{text} was accepted");
        }
        let object = json!({"host": "[a", "port": 5});
        assert!(target_from_json(object.as_object().expect("object")).is_err());
        assert_eq!(
            parse_target("[fe80::1%eth0]:5900"),
            Ok(tcp("fe80::1%eth0", 5900))
        );
        assert_eq!(
            parse_target("fe80::1%eth0:5900"),
            Ok(tcp("fe80::1%eth0", 5900))
        );
    }
}
