//! The `JWTTokenApi` back-end: the token is a signed JWT whose `host`/`port` claims are the
//! target, verified with the key file given as the source (PEM public or private key, or an
//! HMAC secret read as upstream's jwcrypto reads it).

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use tracing::warn;

use super::error::{TokenError, token_tag};
use super::read::read_regular_file;
use super::value::target_from_json;
use crate::config::Target;

/// Largest JWT key file read: a PEM key or secret is a few KiB.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Verification keys read once from the key file, with the algorithms each may check.
pub(super) struct JwtKeys {
    keys: Vec<(DecodingKey, Vec<Algorithm>)>,
}

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HMAC_ALGORITHMS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

impl JwtKeys {
    /// A PEM public key (RSA, EC P-256/P-384, Ed25519; SPKI, PKCS#1 or certificate) or
    /// unencrypted private key (PKCS#8, PKCS#1), else an HMAC secret. As upstream (jwcrypto's
    /// `kty=oct` JWK), the secret is the file's text read as base64url; the file's raw text
    /// (trimmed) is accepted as a second secret, as most JWT libraries use it.
    pub(super) fn load(path: &Path) -> anyhow::Result<Self> {
        let shown = path.display();
        let bytes = read_regular_file(path, MAX_KEY_FILE_BYTES).map_err(|e| {
            anyhow!(
                "--token-source={shown}: cannot read the JWT key file: {}",
                e.about(path)
            )
        })?;
        if let Some(label) = pem_label(&bytes) {
            let key = pem_key(label, &bytes).with_context(|| {
                format!("--token-source={shown}: cannot use the PEM key ({label})")
            })?;
            return Ok(JwtKeys { keys: vec![key] });
        }
        let text = std::str::from_utf8(&bytes).with_context(|| {
            format!("--token-source={shown}: the HMAC secret is not UTF-8 text")
        })?;
        let raw = text.trim();
        if raw.is_empty() {
            bail!("--token-source={shown}: the JWT key file is empty");
        }
        let mut keys = Vec::new();
        if let Some(secret) = jwk_k_secret(raw) {
            keys.push((DecodingKey::from_secret(&secret), HMAC_ALGORITHMS.to_vec()));
        }
        keys.push((
            DecodingKey::from_secret(raw.as_bytes()),
            HMAC_ALGORITHMS.to_vec(),
        ));
        Ok(JwtKeys { keys })
    }

    /// Expired, not yet valid, badly signed or otherwise unusable tokens are unknown tokens
    /// (`Ok(None)`), with the reason logged as upstream does.
    pub(super) fn lookup(&self, token: &str) -> Result<Option<Target>, TokenError> {
        match self.verify(token) {
            Ok(target) => Ok(Some(target)),
            Err(reason) => {
                warn!(token = %token_tag(token), %reason, "JWT rejected");
                Ok(None)
            }
        }
    }

    /// The target of a valid token, or why the token is refused.
    fn verify(&self, token: &str) -> Result<Target, String> {
        if is_jwe(token) {
            return Err("encrypted JWE tokens are not supported".into());
        }
        let mut failure = "malformed token";
        for (key, algorithms) in &self.keys {
            let mut validation = Validation::default();
            validation.algorithms.clone_from(algorithms);
            validation.leeway = 0;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.validate_aud = false;
            validation.required_spec_claims.clear();
            let error = match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => return target_from_claims(&data.claims),
                Err(error) => error,
            };
            failure = match error.kind() {
                ErrorKind::InvalidSignature => "bad signature",
                ErrorKind::ExpiredSignature => "token has expired",
                ErrorKind::ImmatureSignature => "token cannot be used yet (nbf)",
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    "its algorithm does not match the key"
                }
                _ => "malformed token",
            };
            // Only a bad signature leaves hope for the next key (the other HMAC secret).
            if !matches!(error.kind(), ErrorKind::InvalidSignature) {
                break;
            }
        }
        Err(failure.into())
    }
}

/// `host` and `port` claims; `exp`/`nbf` must be numbers (jsonwebtoken skips other types,
/// while upstream's comparison fails on them).
fn target_from_claims(claims: &Map<String, Value>) -> Result<Target, String> {
    if ["exp", "nbf"]
        .iter()
        .any(|claim| claims.get(*claim).is_some_and(|v| !v.is_number()))
    {
        return Err("exp or nbf is not a number".into());
    }
    target_from_json(claims).map_err(|reason| format!("no usable host/port claims: {reason}"))
}

/// A JWE compact token has five parts, or a header with `enc`.
fn is_jwe(token: &str) -> bool {
    if token.split('.').count() == 5 {
        return true;
    }
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Map<String, Value>>(&bytes).ok())
        .is_some_and(|header| header.contains_key("enc"))
}

/// The label of the first PEM block (`PUBLIC KEY`, ...), if the file is PEM.
fn pem_label(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let len = text[start..].find("-----")?;
    Some(&text[start..start + len])
}

fn pem_key(label: &str, bytes: &[u8]) -> anyhow::Result<(DecodingKey, Vec<Algorithm>)> {
    match label {
        "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE" => {
            if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
                return Ok((key, RSA_ALGORITHMS.to_vec()));
            }
            if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
                let algorithms = ec_algorithms(key.as_bytes().len())?;
                return Ok((key, algorithms));
            }
            if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
                // jsonwebtoken slices the first 32 bytes when verifying: check them here.
                if key.as_bytes().len() != 32 {
                    bail!("an Ed25519 public key has 32 bytes");
                }
                return Ok((key, vec![Algorithm::EdDSA]));
            }
            bail!("not an RSA, EC (P-256, P-384) or Ed25519 key")
        }
        "PRIVATE KEY" | "RSA PRIVATE KEY" => public_of_private(bytes),
        "EC PRIVATE KEY" => bail!(
            "SEC1 EC private keys are not supported: give the public key, or convert with \
             `openssl pkcs8 -topk8 -nocrypt`"
        ),
        "ENCRYPTED PRIVATE KEY" => {
            bail!("encrypted private keys are not supported: give the public key")
        }
        _ => bail!("not a public or private key"),
    }
}

/// ES256 or ES384, from the length of the public point (uncompressed or compressed).
fn ec_algorithms(point_len: usize) -> anyhow::Result<Vec<Algorithm>> {
    match point_len {
        65 | 33 => Ok(vec![Algorithm::ES256]),
        97 | 49 => Ok(vec![Algorithm::ES384]),
        _ => bail!("unsupported EC curve (P-256 and P-384 are supported)"),
    }
}

/// The verification key of a private key file (upstream's jwcrypto accepts those too).
fn public_of_private(bytes: &[u8]) -> anyhow::Result<(DecodingKey, Vec<Algorithm>)> {
    use ring::signature::{self, KeyPair as _};
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;

    let der = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| anyhow!("{e}"))?;
    match der {
        PrivateKeyDer::Pkcs1(der) => {
            let pair = signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
                .map_err(|e| anyhow!("RSA key rejected: {e}"))?;
            Ok((
                DecodingKey::from_rsa_der(pair.public().as_ref()),
                RSA_ALGORITHMS.to_vec(),
            ))
        }
        PrivateKeyDer::Pkcs8(der) => {
            let der = der.secret_pkcs8_der();
            if let Ok(pair) = signature::RsaKeyPair::from_pkcs8(der) {
                return Ok((
                    DecodingKey::from_rsa_der(pair.public().as_ref()),
                    RSA_ALGORITHMS.to_vec(),
                ));
            }
            let rng = ring::rand::SystemRandom::new();
            for (curve, algorithm) in [
                (
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    Algorithm::ES256,
                ),
                (
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    Algorithm::ES384,
                ),
            ] {
                if let Ok(pair) = signature::EcdsaKeyPair::from_pkcs8(curve, der, &rng) {
                    return Ok((
                        DecodingKey::from_ec_der(pair.public_key().as_ref()),
                        vec![algorithm],
                    ));
                }
            }
            if let Ok(pair) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                return Ok((
                    DecodingKey::from_ed_der(pair.public_key().as_ref()),
                    vec![Algorithm::EdDSA],
                ));
            }
            bail!("not an RSA, EC (P-256, P-384) or Ed25519 key")
        }
        _ => bail!("unsupported private key format"),
    }
}

/// The secret of a `kty=oct` JWK whose `k` is the file's text: base64url, read leniently as
/// Python's base64 module does (other characters ignored, padding optional).
fn jwk_k_secret(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let cleaned: String = text
        .chars()
        .filter_map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' => Some(c),
            '-' | '+' => Some('+'),
            '_' | '/' => Some('/'),
            _ => None,
        })
        .collect();
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    engine
        .decode(cleaned)
        .ok()
        .filter(|secret| !secret.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;
    use std::fs;

    use crate::token::Tokens;
    use crate::token::testing::{bounded, tcp};

    // Test-only keys, made with openssl for these tests.
    const RSA_PRIVATE_PKCS1: &str = "\
-----BEGIN RSA PRIVATE KEY-----\n\
MIIEpQIBAAKCAQEA2zfTiB03+tzmhTGXaCr+l+Hf6sqniQXnzNjO0h6L/0LvWLOs\n\
25uRG2W2qeL6LCz3rUJeYBXrNd9mKKJvwYxXiCMa10yLy/EF746uNUnT4vXwP0tu\n\
mJ87/MWhNaJMOKShme2NeP3YMGNW41+O5p7IccWytQ/nsDIcaiQSFuhVJq8dANIK\n\
NsdJlTfDonaVTc33ZA95vVEiuQuAUj0Q2ns3/Isa7mZPbSHJWp/d2+4o8lYmMSeL\n\
zxTBlHUe85/Hl3gRcXiMWGKvWWQtyobCO6q1Y0HNGIPVWojztcEUI9KErGtaNc94\n\
stlrxEL4ZzM5WrDGMquPKgBDmha2xCqvF5bbDQIDAQABAoIBAAG2BVCUgCqa13dQ\n\
iWOzDDWeaIzlEolG0pdp7Mw9dUv09HKE55ZUZoliRmv2K9HYCkere9SABpHAjYQN\n\
LW2JDsXu/00z8MTwB2jPDdq4H4DHG94wDtTE5qzkyKI4mjsbZ3wiJvX2C/tcKJaR\n\
x6oNAomM+hcsMjiuIxWvRZ3fkJYIfamOXTBZthx2ns+5WWATK7d34IKrkPWNbmk0\n\
E2x2ntMRXV0gbvRL0fp2wmbShIKLg6HxSSa+w61DuAaYNiof5Mv7yNG0mvh1XbMP\n\
57gFiocXNYp00wjP0AAM/0pOpqUPb2CfXrPAhL1tTHLHgHfC0h1chs3PxjDp7qAA\n\
/1Cd3okCgYEA+3C/v/KHV6TfJJ0914ALYtVB6leU4GFjr20B5Ctn3O3ToZPg1Ain\n\
vppe0/nhWuc6dLAx1fazOenPvMUiN7QIhINzypoaW9Qosh40KJzu2Tbc1Rvdgkoi\n\
X4x2usTFFPe34SlDqbMPbkcKSmUvIOdRcOedn2uBw7oGVXp+39xOUkkCgYEA3zF+\n\
Knh8FqiPq+Tw2h4+b7Q2IloJ1cAAMHxA5oIIyA25M/mcrdYJRuGB0F46lypdJ3zW\n\
c9M2uOQmR2ufOaml75sYBWnmlDU6ZzOLS+nsh0otwrTvMUV1YTdclPqrjQljSBDB\n\
g7V8Ay5JogO5bNF/ZwlsMRFW0D4XDHTjjei9QqUCgYEAtW8ETkN5Odr0UX1NNIVm\n\
sehkae7MtKRRxDIKXVSc26SZQ0xrvVSJhlXp+1eiL3AOlEjXjSc46J84kWRGbp9w\n\
Tf50vUs5ne2Xd/+nb27eQsr9yqES04MfDodS3S5Db//YJZcbBgb5KYAFgu1Edp+z\n\
+p6G9JQkzNEc5O1BQ9O6iFECgYEAkoM9zAltg75BGdje1oAWAmPtSV2LqToxpaJb\n\
RDXGJ/UCR4Eq/d5MFrB/89V3ZrYTkpFbgYr8GCEEk8utKUAZQpGwEhWznETYwthO\n\
L5Yug50JLxBxGAn9hMS/zLhElv+7oZoGPjyLXNcs1OLW/P0FQhEoaYl1UJwBq1ar\n\
7gMDAlUCgYEA4keve3sUtnDlzAnOu08EcCIde1QATljdcE300HWa4pQdiKYNzLnQ\n\
o3kD/msvS1O5Xf05Zdo9NjKhpHP+WiLZkB3fMgomd49lK1YnnKdqmel0TUZFvn78\n\
Cvcqz+iJqC6q9iYlhE3IwBt1gxMvX12HVcCDkLAIsbmbYbvHDnoIeCg=\n\
-----END RSA PRIVATE KEY-----\n\
";

    const RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA2zfTiB03+tzmhTGXaCr+\n\
l+Hf6sqniQXnzNjO0h6L/0LvWLOs25uRG2W2qeL6LCz3rUJeYBXrNd9mKKJvwYxX\n\
iCMa10yLy/EF746uNUnT4vXwP0tumJ87/MWhNaJMOKShme2NeP3YMGNW41+O5p7I\n\
ccWytQ/nsDIcaiQSFuhVJq8dANIKNsdJlTfDonaVTc33ZA95vVEiuQuAUj0Q2ns3\n\
/Isa7mZPbSHJWp/d2+4o8lYmMSeLzxTBlHUe85/Hl3gRcXiMWGKvWWQtyobCO6q1\n\
Y0HNGIPVWojztcEUI9KErGtaNc94stlrxEL4ZzM5WrDGMquPKgBDmha2xCqvF5bb\n\
DQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const OTHER_RSA_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEApNtBPN68LVIR5S8jKP4s\n\
U6epgxcSDWVWDqp74wYCJfzxLS8SfUtmoazfJwsbF2KJQ6XhYG61Sdxmg+1oQZDV\n\
JloQZKVUFd8h8rq+9p7RS4p9urr+7mc1BSqAKl5YbnbeMhkb5C8ZVCYPn5jjaXae\n\
20btyIZpAWN2faU0ClnkvlMdeDJnPYnjoaZ6rAe9uc0H6FgCeYmitvzi/Tz0rDGE\n\
u7YGeviI2VSnHVcf+3pub7kSN2InmMHoeZ3E7ChN9cBbEARU2O8/gy9mEHuYymVX\n\
QpHiGgCemIq3DBDDVfYbuEJshQQfq/8834Uv/bfk5A5eWQAig7S4fRhmIMZYN2cI\n\
dwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";

    const EC_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxM8/E/RvhacGfC39\n\
lCB2/Kf8oE4kSbdVZiha9NTawgqhRANCAAQcj/2m0Uji4hMqTACJgAgMxlbqvqyE\n\
0I3B4eRTndDxlHpKTc2S4HSiH7cObCmbPPPhdOvwAUTUoHAnPbMNFq0J\n\
-----END PRIVATE KEY-----\n\
";

    const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEHI/9ptFI4uITKkwAiYAIDMZW6r6s\n\
hNCNweHkU53Q8ZR6Sk3NkuB0oh+3Dmwpmzzz4XTr8AFE1KBwJz2zDRatCQ==\n\
-----END PUBLIC KEY-----\n\
";

    const ED_PRIVATE: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEILUVdhqeajcV2ETd80LwNDUZkER5bnlO46dLb/QIT/7Q\n\
-----END PRIVATE KEY-----\n\
";

    const ED_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEASGNu7aysNPI+5trjAC4iPd97e+/kR4tayZXF1H9bt2g=\n\
-----END PUBLIC KEY-----\n\
";

    fn key_file(dir: &tempfile::TempDir, name: &str, content: &str) -> String {
        let path = dir.path().join(name);
        fs::write(&path, content).expect("write key");
        path.to_str().expect("utf-8").to_owned()
    }

    fn jwt(algorithm: Algorithm, key: &EncodingKey, claims: Value) -> String {
        encode(&Header::new(algorithm), &claims, key).expect("sign")
    }

    fn rsa_signer() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE_PKCS1.as_bytes()).expect("rsa key")
    }

    #[tokio::test]
    async fn jwt_rs256_es256_and_eddsa_tokens_resolve() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let claims = json!({"host": "remote_host", "port": "5900"});
            let cases = [
                (RSA_PUBLIC, Algorithm::RS256, rsa_signer()),
                (RSA_PUBLIC, Algorithm::PS512, rsa_signer()),
                // Upstream also accepts the private key file.
                (RSA_PRIVATE_PKCS1, Algorithm::RS384, rsa_signer()),
                (
                    EC_PUBLIC,
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec"),
                ),
                (
                    EC_PRIVATE,
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec"),
                ),
                (
                    ED_PUBLIC,
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed"),
                ),
                (
                    ED_PRIVATE,
                    Algorithm::EdDSA,
                    EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed"),
                ),
            ];
            for (index, (verify_with, algorithm, signer)) in cases.into_iter().enumerate() {
                let source = key_file(&dir, &format!("key{index}.pem"), verify_with);
                let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
                let token = jwt(algorithm, &signer, claims.clone());
                assert_eq!(
                    tokens.lookup(&token).await.expect("lookup"),
                    Some(tcp("remote_host", 5900)),
                    "{algorithm:?} case {index}"
                );
            }
        })
        .await;
    }

    #[tokio::test]
    async fn jwt_hmac_secret_is_the_key_file_as_upstream_reads_it() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            // Upstream's fixture: jwcrypto reads it as a base64url JWK "k".
            let text = "secret_sauce_secret_sauce_secret_sauce_secret_sauce";
            let source = key_file(&dir, "symmetric.key", &format!("{text}\n"));
            let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
            // Python's base64 ignores the unused low bits of the last character.
            let python_like = base64::engine::GeneralPurpose::new(
                &base64::alphabet::URL_SAFE,
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_allow_trailing_bits(true)
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
            );
            let decoded = python_like.decode(text).expect("b64");
            assert_eq!(decoded.len(), 38);
            let claims = json!({"host": "remote_host", "port": 5900});
            for (algorithm, secret) in [
                (Algorithm::HS256, decoded.as_slice()),
                (Algorithm::HS512, decoded.as_slice()),
                (Algorithm::HS256, text.as_bytes()),
            ] {
                let token = jwt(algorithm, &EncodingKey::from_secret(secret), claims.clone());
                assert_eq!(
                    tokens.lookup(&token).await.expect("lookup"),
                    Some(tcp("remote_host", 5900))
                );
            }
            let wrong = jwt(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"wrong_sauce"),
                claims,
            );
            assert_eq!(tokens.lookup(&wrong).await.expect("lookup"), None);
        })
        .await;
    }

    #[tokio::test]
    async fn jwt_time_claims_are_checked_without_leeway() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let source = key_file(&dir, "pub.pem", RSA_PUBLIC);
            let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
            let keys = JwtKeys::load(Path::new(&source)).expect("keys");
            let now = get_current_timestamp();
            let sign = |claims: Value| jwt(Algorithm::RS256, &rsa_signer(), claims);
            let reason = |claims: Value| keys.verify(&sign(claims)).expect_err("refused");
            assert_eq!(
                keys.verify(&sign(
                    json!({"host": "h", "port": 1, "nbf": now - 10, "exp": now + 60})
                )),
                Ok(tcp("h", 1))
            );
            let expired = json!({"host": "h", "port": 1, "exp": now - 2});
            assert_eq!(reason(expired.clone()), "token has expired");
            assert_eq!(
                reason(json!({"host": "h", "port": 1, "nbf": now + 60})),
                "token cannot be used yet (nbf)"
            );
            for claims in [
                json!({"host": "h", "port": 1, "exp": (now + 60).to_string()}),
                json!({"host": "h", "port": 1, "nbf": "0"}),
            ] {
                assert!(keys.verify(&sign(claims)).is_err());
            }
            for claims in [
                json!({"host": "h"}),
                json!({"port": 1}),
                json!({"host": "h", "port": "x"}),
            ] {
                assert!(reason(claims).starts_with("no usable host/port claims"));
            }
            // Refused tokens are unknown tokens to the caller, not backend failures.
            assert_eq!(tokens.lookup(&sign(expired)).await.expect("lookup"), None);
        })
        .await;
    }

    #[test]
    fn jwt_with_the_wrong_key_or_algorithm_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let claims = json!({"host": "h", "port": 1});
        let other =
            JwtKeys::load(Path::new(&key_file(&dir, "other.pem", OTHER_RSA_PUBLIC))).expect("keys");
        let rs256 = jwt(Algorithm::RS256, &rsa_signer(), claims.clone());
        assert_eq!(other.verify(&rs256), Err("bad signature".into()));
        // HS256 signed with the public key's text must not pass against an RSA key.
        let rsa = JwtKeys::load(Path::new(&key_file(&dir, "rsa.pem", RSA_PUBLIC))).expect("keys");
        let confused = jwt(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            claims.clone(),
        );
        assert_eq!(
            rsa.verify(&confused),
            Err("its algorithm does not match the key".into())
        );
        let ec = jwt(
            Algorithm::ES256,
            &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec"),
            claims,
        );
        assert_eq!(
            rsa.verify(&ec),
            Err("its algorithm does not match the key".into())
        );
        for garbage in ["", "abc", "a.b.c", "a.b", "..."] {
            assert_eq!(
                rsa.verify(garbage),
                Err("malformed token".into()),
                "{garbage:?}"
            );
        }
    }

    #[tokio::test]
    async fn jwe_tokens_are_refused_with_a_clear_reason() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let source = key_file(&dir, "rsa.pem", RSA_PUBLIC);
            let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
            let keys = JwtKeys::load(Path::new(&source)).expect("keys");
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let header = engine.encode(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
            for token in [
                format!("{header}.a2V5.aXY.Y2lwaGVy.dGFn"),
                format!("{header}.e30.c2ln"),
            ] {
                assert_eq!(
                    keys.verify(&token),
                    Err("encrypted JWE tokens are not supported".into())
                );
                assert_eq!(tokens.lookup(&token).await.expect("lookup"), None);
            }
        })
        .await;
    }

    #[test]
    fn jwt_key_files_are_checked_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = Tokens::new("JWTTokenApi", missing.to_str()).expect_err("missing");
        assert!(format!("{err:#}").contains("missing.pem"), "{err:#}");
        let empty = key_file(&dir, "empty", " \n");
        assert!(Tokens::new("JWTTokenApi", Some(&empty)).is_err());
        let broken = key_file(
            &dir,
            "broken.pem",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        );
        let err = Tokens::new("JWTTokenApi", Some(&broken)).expect_err("broken");
        assert!(format!("{err:#}").contains("broken.pem"), "{err:#}");
        let sec1 = key_file(
            &dir,
            "sec1.pem",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        );
        assert!(
            format!(
                "{:#}",
                Tokens::new("JWTTokenApi", Some(&sec1)).expect_err("sec1")
            )
            .contains("pkcs8")
        );
        // A truncated Ed25519 key would make jsonwebtoken panic on every lookup.
        let short_ed = key_file(
            &dir,
            "short-ed.pem",
            "-----BEGIN PUBLIC KEY-----\nMBowBQYDK2VwAxEAAAECAwQFBgcICQoLDA0ODw==\n-----END PUBLIC KEY-----\n",
        );
        assert!(Tokens::new("JWTTokenApi", Some(&short_ed)).is_err());
    }
}
