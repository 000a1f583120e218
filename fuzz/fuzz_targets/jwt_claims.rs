//! The `JWTTokenApi` back-end: a token string from the client, verified with an HMAC key file,
//! and the `host`/`port` claims of a verified token.
//!
//! Two halves, picked by the first byte:
//! - any token string: no panic, and never a target (the fuzzer does not know the secret:
//!   a target here means a forged token was accepted, e.g. `alg: none`).
//! - the rest as a JSON claims object: the claims parser gives a target or a reason; signed
//!   with the key (HS256/384/512), the token looks up to exactly that target.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use websockify::fuzzing::{JwtKeys, jwt_claims};

const SECRET: &str = "fuzzing-secret-that-is-long-enough-0123456789";

fn keys() -> &'static JwtKeys {
    static KEYS: OnceLock<JwtKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let path: PathBuf =
            std::env::temp_dir().join(format!("websockify-fuzz-jwt-{}.key", std::process::id()));
        std::fs::write(&path, SECRET).expect("the key file");
        JwtKeys::load(&path).expect("the HMAC key")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let keys = keys();
    if choice & 1 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        let found = keys.lookup(token).expect("JWT lookups do not fail");
        assert_eq!(
            found, None,
            "a token not signed with the secret was accepted: {token:?}"
        );
        return;
    }
    let Ok(mut claims) = serde_json::from_slice::<Map<String, Value>>(rest) else {
        return;
    };
    // Time claims decide validity by the clock; the parser's own check of their type stays.
    let times_ok = ["exp", "nbf"]
        .iter()
        .all(|c| claims.get(*c).is_none_or(Value::is_number));
    let parsed = jwt_claims(&claims);
    if !times_ok {
        assert!(parsed.is_err(), "exp/nbf of the wrong type accepted");
    }
    claims.remove("exp");
    claims.remove("nbf");
    let parsed = jwt_claims(&claims);
    let algorithm = match choice >> 1 & 3 {
        0 => Algorithm::HS384,
        1 => Algorithm::HS512,
        _ => Algorithm::HS256,
    };
    let token = jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("claims sign");
    let found = keys.lookup(&token).expect("JWT lookups do not fail");
    assert_eq!(found, parsed.ok(), "claims {claims:?}");
});
