//! What token back-ends hand back, parsed into a target: `host:port` text, `{"host", "port"}`
//! JSON objects (the JSON API, Redis) and raw Redis values (JSON or text, maybe not UTF-8).
//!
//! Invariants: no panic; every target is sane (as in `token_file`); a parsed target written
//! back as text, and as a JSON object, parses to the same target; a Redis value parses as its
//! JSON or text form does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use websockify::Target;
use websockify::fuzzing::{redis_value, target_json, target_text};

fuzz_target!(|data: &[u8]| {
    let redis = redis_value(data);
    if let Ok(target) = &redis {
        check_target(target);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(redis.is_err(), "a value that is not UTF-8 was accepted");
        return;
    };
    if let Ok(target) = target_text(text) {
        check_target(&target);
        round_trip(&target);
    }
    if let Ok(object) = serde_json::from_str::<Map<String, Value>>(text) {
        if let Ok(target) = target_json(&object) {
            check_target(&target);
            round_trip(&target);
        }
        if text.trim().starts_with('{') {
            assert_eq!(redis.ok(), target_json(&object).ok());
        }
    } else if !text.trim().starts_with('{') {
        assert_eq!(redis.ok(), target_text(text).ok());
    }
});

fn round_trip(target: &Target) {
    // A TCP host spelled `unix_socket` (reached through padding the parser trims) has no text
    // form of its own: `unix_socket:PORT` means a unix socket, as upstream reads it.
    if matches!(target, Target::Tcp { host, .. } if host == "unix_socket") {
        return;
    }
    let (text, object) = match target {
        Target::Tcp { host, port } => (
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            json!({ "host": host, "port": port }),
        ),
        Target::Unix(path) => {
            let path = path.to_str().expect("a path from text is text");
            (
                format!("unix_socket:{path}"),
                json!({ "host": "unix_socket", "port": path }),
            )
        }
        Target::Loopback { .. } => panic!("a token names a loopback target"),
    };
    assert_eq!(
        target_text(&text).as_ref(),
        Ok(target),
        "text form {text:?}"
    );
    let Value::Object(object) = object else {
        unreachable!()
    };
    assert_eq!(
        target_json(&object).as_ref(),
        Ok(target),
        "JSON form {object:?}"
    );
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
