//! The `JWTTokenApi` back-end: the token is a signed JWT whose `host`/`port` claims are the
//! target, verified with the key file given as the source (PEM public or private key, or an
//! HMAC secret read as upstream's jwcrypto reads it). An encrypted token (JWE) is decrypted with
//! the same key file by `jwe.rs` first, and its content must be such a signed JWT.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::{Map, Value};
use tracing::warn;

use super::error::{TokenError, token_tag};
use super::jwe::{self, JweKey};
use super::read::read_regular_file;
use super::value::target_from_json;
use crate::config::Target;

/// Largest JWT key file read: a PEM key or secret is a few KiB.
const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// Shortest HMAC secret that does not draw a start-up warning: RFC 7518 3.2 wants a key at
/// least as long as the hash output (32 bytes for HS256).
const MIN_HMAC_SECRET_BYTES: usize = 32;

/// Verification keys read once from the key file, with the algorithms each may check, and the
/// key that decrypts JWE tokens.
pub(super) struct JwtKeys {
    keys: Vec<(DecodingKey, Vec<Algorithm>)>,
    decryption: JweKey,
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
            return Ok(JwtKeys {
                keys: vec![key],
                decryption: pem_decryption_key(label, &bytes),
            });
        }
        let text = std::str::from_utf8(&bytes).with_context(|| {
            format!("--token-source={shown}: the HMAC secret is not UTF-8 text")
        })?;
        let raw = text.trim();
        if raw.is_empty() {
            bail!("--token-source={shown}: the JWT key file is empty");
        }
        let mut secrets = Vec::new();
        if let Some(secret) = jwk_k_secret(raw) {
            warn_if_short(&shown, "read as base64url, as upstream does", &secret);
            secrets.push(secret);
        }
        warn_if_short(&shown, "its text", raw.as_bytes());
        secrets.push(raw.as_bytes().to_vec());
        let keys = secrets
            .iter()
            .map(|secret| (DecodingKey::from_secret(secret), HMAC_ALGORITHMS.to_vec()))
            .collect();
        Ok(JwtKeys {
            keys,
            decryption: JweKey::Secrets(secrets),
        })
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

    /// The target of a valid token, or why the token is refused. A JWE is decrypted first and
    /// its content verified as a signed JWT with the same key file, as upstream does; unlike
    /// upstream, content that is itself a JWE is refused (it would carry no signature).
    fn verify(&self, token: &str) -> Result<Target, String> {
        if !is_jwe(token) {
            return self.verify_signed(token);
        }
        let content = jwe::decrypt(token, &self.decryption)?;
        let inner = String::from_utf8(content)
            .map_err(|_| "the JWE's content is not a signed JWT (not UTF-8)".to_string())?;
        if is_jwe(&inner) {
            return Err("the JWE's content is another JWE, not a signed JWT".into());
        }
        self.verify_signed(&inner)
            .map_err(|reason| format!("the JWE's inner JWT: {reason}"))
    }

    /// The target of a valid signed token (JWS), or why it is refused.
    fn verify_signed(&self, token: &str) -> Result<Target, String> {
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
pub(super) fn target_from_claims(claims: &Map<String, Value>) -> Result<Target, String> {
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

/// Warns at start-up about an HMAC secret shorter than RFC 7518 asks for HS256: such a secret
/// can be brute-forced from any token signed with it.
fn warn_if_short(shown: &std::path::Display<'_>, reading: &str, secret: &[u8]) {
    if secret.len() < MIN_HMAC_SECRET_BYTES {
        warn!(
            "--token-source={shown}: the JWT HMAC secret ({reading}) is only {} bytes; use at \
             least {MIN_HMAC_SECRET_BYTES} random bytes, e.g. `openssl rand -base64 32`",
            secret.len()
        );
    }
}

/// The key that decrypts JWE tokens, from a PEM file that `pem_key` accepted.
fn pem_decryption_key(label: &str, bytes: &[u8]) -> JweKey {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    if !matches!(label, "PRIVATE KEY" | "RSA PRIVATE KEY") {
        return JweKey::Other("a public key (JWE decryption needs the private key)");
    }
    PrivateKeyDer::from_pem_slice(bytes)
        .ok()
        .and_then(|der| JweKey::from_private_der(&der))
        .unwrap_or(JweKey::Other(
            "an Ed25519 key (no JWE key management uses it)",
        ))
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

    /// Secret key files for the JWE vectors (base64url, as upstream reads them): 16, 32 and 64
    /// bytes. The 16-byte one is RFC 7516 appendix A.3's key.
    const SECRET_16: &str = "GawgguFyGrWKav7AX4VKUg";
    const SECRET_32: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
    const SECRET_64: &str =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-Pw";

    /// JWE tokens made by jwcrypto 1.6.1 (upstream's library, with
    /// tests/e2e/jwcrypto_tokens.py) for the key files above, each wrapping a JWT signed with the
    /// same key whose claims are `{"host": "remote_host", "port": 5900}` (no exp).
    fn jwcrypto_vectors() -> Vec<(&'static str, &'static str)> {
        vec![
            // RSA-OAEP + A256GCM, inner RS256
            (
                RSA_PRIVATE_PKCS1,
                "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.thewAnlexu0pYDH2FrCVgQwzHjs5Cp-4XyvCVCMTf1jf2q6r63GKCZ0O6o1l01ksPi6cZ0xD6D0lgsQX2oParozbYVi6D1spHR5zzgGS0FPcYGUA2azkVq99W90IdW_H00YvgxAZDo13r-NWtOcT7gEg1qAUcjJW0bVXrWKrANOtASit7eR15rHjvl0Rj3DYzCspcw9nOem60ElKYR5BepsMT8ArZg6LwT2PLNxV3lIiU-X30TxjwKMb7WLeqqKdQqwo3XhttrCevlQ4mF1qbFu5XMUHI8MlCh7enf5UmeeH-hL-zhj-i8L0SX8SAXSPOj82nDpeKhXVOMDtiqn10Q.j8WYH9yWdj4jsYLV.rep8fVK2O4eyZ1pQBsvInz3lKfZjHkOUZ7FM2chngDKKzw-ITPy8QW2m8EgeejsPEyOq_NBse12kZGJ9XnxZzlZtbfkh2ls-SUkoMAphr81gK7PAjO2EDvgeaOxJdN89vR_s9D8_4qCOyhrYGY-RLOu5RZrS0ug4lMisBUaFak6_Uu-6w3_8xuGccQ0NPBouykyN2AqLA4af1aA29UgXVczOfEYWBYIYZ1H4nbLMeDXgeg0x81Q5K0d7gyCgj08zFB_ez37KdhNsTitzQfoeDh8YCb-BZPoIHWzQdigtVcfMurXaVTI07cF6329SzT9HUdoaJ2TmKziIzozxngY7FbfBQ2iz6fBbrOROyvZkYYiP7EJhiuEGkyUWWnnO4NnE6cuASkAotRb_9kNhvl5UKi4s3XsAb-uhgk6lMy_LBfSFJSfES_FQdDdHQhuPHP9SFYGO-mVhrNSih7gISplq3G_q5WliUHDuc7yQAhm5Ov7VF-x8YnLheYzLfLHW5TOETf68-F1AQfcbKeWqAP_SlAuhzqqkRqWwH3E.rGBeDkqUfXWodB2g4ilODw",
            ),
            // RSA-OAEP-256 + A128CBC-HS256, inner PS256
            (
                RSA_PRIVATE_PKCS1,
                "eyJhbGciOiJSU0EtT0FFUC0yNTYiLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.F_K9cRkZqCpGAUaR7xIwb3Q7pAC1uZrOundWPOKPJTVV5wgb7HzPREsPVDkQ1e1CmdIkMWuNyDLRjAFS_kRXWSRyY0UfW7dFKq-p_ETARseKrirpgL6sR8IhykMVM3neSCqGqXIx_Vaa1naVHn4eePBBB0JS7Se9g9l454Uo1ePhN7njGkQrERpsxFbwhigSptz--Y08RrVGC3ri55ut8q3pnATQHVe-_RFLpBkMb1jtcz9rwRdUmbrKTHgqqfpaF-yQBVp4vDhX-1XJ4cEmiil1IlKBjwxaTKkqIwPYfn0IOb9d7_bxyQjAzTRaXzLHmzZGDosONPtiWU2FJuFM_g.ducbW6hn4vR20OXh85eVjw.N_hy2vCPhnnP_gz8CcocWDdoRqk76zgiBjbg0SKPklhhkPsDLwDvp-IZvPTyakbxBBR9653SypuMYkWN9Bg6KTWrZAy9VrfdeRZQdIA5DvY15TTlloGDJHduXnLslCzlKHbOezWtcZSHQdMghzZ7CIsXSQEEEb52xuJ8StcJmW-zgmAI92FUTxRsviwm7XPiqlyufxVsdkZHPclXh8nVJtaHkCbLWdonj1RDcA7nhZETfgFK2m776O1_NYIT-maCcqMlW1plTxv95jGw53A56Q9FHRRNDKCsXtrMqJVwfwQyMR7tZHioj8BRdViif7yCektd1d4cSBg2PS5MuQertnooB0134YTvv4y0C0JCvJC7oM2ahG50hoFUy8S82HDsjDYXnI_AuXl22qzfnBLiOKTHVLnORnfW1XkPH4WFdWLEodur4bMX3yRSwEm_wl8tCB9ZZcEfDCeBfUdvz60c8gJdGr-XNkP6kZsWQ5sWniVdBLWkCr62uVvANSlJd8mSjtACdHP5e11-VJdF8SBcspvQWywwQO4SjC8Vmd8vQ5k.WVSkoEiouOIszrWhkdXeDg",
            ),
            // ECDH-ES + A128GCM
            (
                EC_PRIVATE,
                "eyJhbGciOiJFQ0RILUVTIiwiZW5jIjoiQTEyOEdDTSIsImVwayI6eyJjcnYiOiJQLTI1NiIsImt0eSI6IkVDIiwieCI6InVRN1dxaG9kT3Mza2JjYjJ5TUgxTEhHRVF5d3VQWnV1di1PakI2Slh3X2ciLCJ5IjoiMzB3WGd5N0d6RnVKX01xck9UMFBHb0I2ZV9xbkR1ellnckNfd0otTnlHYyJ9fQ..lc81p0BhJ8Pe2Pob.Pu8nRPWl5gNCOpBAW1aRFbgX-im97kViQFamvgbIwYK-3p4CvSdG0zH0VIKBC1ajrWdf36c49VensTasQYhU2RfpUBy4UOByeI9_QCx3gZIwMEDw5tPzyBHGPDwE6dcA6cNIIee-WRpSlMXCLwEGyHTGFGeDn-UWLU4OZOrFs16r9IA-2fUR2lAukrcseTJ6wAsrpvzZ3-ZL_A.JXMpCCmprKicQiEDHrBbUQ",
            ),
            // ECDH-ES+A128KW + A256CBC-HS512
            (
                EC_PRIVATE,
                "eyJhbGciOiJFQ0RILUVTK0ExMjhLVyIsImVuYyI6IkEyNTZDQkMtSFM1MTIiLCJlcGsiOnsiY3J2IjoiUC0yNTYiLCJrdHkiOiJFQyIsIngiOiJBZGxlRUhhQnhFMG5yX0lmYXNfbjkxNlRWREhfTmpzT2J5d1VnOTB6Z1pvIiwieSI6InNPNkdiUktjdVMwdTdZZVVxUFZ1NGp1ZWhENHN1d0VobEh4d2RGZkxfdXcifX0.78wxcQZC9FCh4vFD-hw1iE0LKH1x8EMak0VpYWBNVWjjttntAzTwqqaiN2rPkgLP5eRdIwgrLuD-dljhDU6bys6PnfiwJmKq.EqQ5nxXNcmd13nbHSpbIVA.qNuqBD02U8I1Xo3oO4H0f2A5DC-o_t22dOErWcYAnaFbJ3ucG-F3zR6Sfie4D19HZ3fC0o5QZaYUsNmsab38ViyX620nvA7I-nq6NvS8QN1UeU6wQLNmWJiVEE5zCKUkjM0CBCXUB3epEl7AkgXDEaZwx8S7SEOigJLjGLrlgsAbRhN6BmDaXkhieZku8-Q-WDz7B-PPTcf9HZxuW998kg.itTa2_9d8wiNpsZWacG7srbYuuojgR0sLAIAJokseGQ",
            ),
            // ECDH-ES+A256KW + A256GCM
            (
                EC_PRIVATE,
                "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00iLCJlcGsiOnsiY3J2IjoiUC0yNTYiLCJrdHkiOiJFQyIsIngiOiIyLUJPdXpBUjdteDVOYmlQdjJWeUcxZ0tMMjFtMnFudUd3SE9ubVpNRDBFIiwieSI6ImtINVUtQklOQmVkRUVOdU84MjdRVk5IMm1NRmJxcVUySDRKUnM3TmV6UFUifX0.4QWunQZYeE8c0Z5dHM0KffATT3ws3IZmPemGHm5Vdkc5HeEIHowU8A.rn6Hy3dOanhfXDWQ.CyrSuVZzTUgUb6DeIFtaP8N5ACkgvnDGf0RfysZK4BfV7NkaFfdqWqMQeqfGfAgDtHWCtYvq3nSgYIQUnehWnzBqhxlYWH8VbSW8KWCO740jCcwW2rF9BYgxKILBAN95YKZgW1JPAchxfj4ZI0DE6iRyrHaMOqSeFG4ejcaxfHuB4BpJkVrUaY54J1zNQTsKsfjyBicodSIB-A.gkGKj7oFRJlhbGzHCzBqvw",
            ),
            // ECDH-ES + A256CBC-HS512 (all inner ES256)
            (
                EC_PRIVATE,
                "eyJhbGciOiJFQ0RILUVTIiwiZW5jIjoiQTI1NkNCQy1IUzUxMiIsImVwayI6eyJjcnYiOiJQLTI1NiIsImt0eSI6IkVDIiwieCI6InNwSmxlbHFmOUxjLVFid09CeFFhVzdXY182WHA3bnljZkhzUVhuVTJMenMiLCJ5IjoiWUtpQ3hGVUVNUjFUOFpBVXMxVUNjdzUxbmRwSWJkSG02MGlzeGl2bkNFbyJ9fQ..iC-5I5C35po0mU-PJU9TCQ.0uUpVjyn5bUhGg9fYnTJCYdzns1GKVPM_fZieZFj0HlPfmoD9PuEiEPYU1xxBXS9xznbr-ldSMwqGmBb6xdVlC_5HiMxqVmQytoOK9Pd5pX9is2D8DBt0my_KKzzc2iLfmaG2cVp--8VFERopUPJ5KiXxpH1CNRsb64ZAw_Y9hUKYmf80CydVogwGJnBUL6_38SgTJjXzzjF-0Vl7DVxeQ.NT19eNNqDoenGJg5jsaL7OdrF_Qtz-C3k1ykqrHcrQI",
            ),
            // A128KW + A128CBC-HS256
            (
                SECRET_16,
                "eyJhbGciOiJBMTI4S1ciLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.nJecG088n7Ls3l0GjEYso98CmpXgpfBClniSqjQQk33n0bwf6HE5hA.e1JyNfrZY1ywv3FPLLVBmQ.hTJxF7IEJdZ4aHBSXBkqreWkzcbIvlv15jse4LVu8h9zgNfn3Vqj12lYrdXA-9KVCMaiOc3JRCI9dHKbc74qKhuHjpyRuQulLtlnY2Wls7AkIBrsztRVe741sssr6bO8XHjIUn_36zkeAGtY5BHpdsy-1qvNS5AAdHolcAA3eao.tEGDBOcPCiYtvpve5hIk5w",
            ),
            // dir + A128GCM (inner HS256)
            (
                SECRET_16,
                "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4R0NNIn0..lxVi4vfYkinHtWF5.nluLcDgzhCU-d5slVBLZovX9_HPx0AH8qIcDI441gROiSHFD0MZIjMPZQrzFGSfyzsAZ66tTFH5BizVrK8eAWbEhWp1k3KvG1Zm_mfuzGstfjc4uFxalKk6dddebOXjJjuJBgTkrZOreh59BHtBA8fE7Vg.tohh1ckZ_ZFkMnAYc93OJA",
            ),
            // A256KW + A256GCM
            (
                SECRET_32,
                "eyJhbGciOiJBMjU2S1ciLCJlbmMiOiJBMjU2R0NNIn0.nwAJubJQSEiZ3oPlgL8_Xz-Bc-7gQimQVOaPl17AH53DCLer9TJjMg.g-iRCfNeLQs8S2N2.pbKFDVjF2AlXGs-1Su30liOldMebpS2hvzPE4j2liderxmV3K_SML5Y0hlH22BsD2huKZ0ErpuKZh4xjVpTlTNO_xtGSCOmd7HqFvNMYjZh6pfP4AZCt9EAG0GnPGDWufCnmKfyMCzfth-KQeiYF.0k8EI5zGCzclpnHWLs8r4Q",
            ),
            // dir + A128CBC-HS256 (inner HS256)
            (
                SECRET_32,
                "eyJhbGciOiJkaXIiLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0..Lw9oMxZ43NVJk3XVN5HyLQ.tyTsuJPlpMMjU6A5PUp5loGwA83XKv0p_NAay2FviH-J6EwXHHXmkPpZ4uIlScAu89kdOscPA5CknJapp-bxbe8SwlwjWpS5Zk-mesb41m__e-SqCx4-vqNCF0tVhHkpBa3rLxWLw4Y1fPf4Klu-ow.GBGA6zBXBg2CeqC1FH1a8A",
            ),
            // dir + A256CBC-HS512, inner HS512
            (
                SECRET_64,
                "eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2Q0JDLUhTNTEyIn0..WsudSFd2CTvdfL3wlQejhg.OiwA0Ch2zywxioPnVOKXysL69YmbUR1FR6JfMY2Ob1kxhWnF26TEUrxMUWK_5sUhszzDQ3oxv6qGtU5R5Fsc0jGhfLMguP0WFpqLPtIveXwRiw9Wk9nT4HVr9v1AuKlyQ_KQre37ilAkZ4wnj2_C10tpETpqq5zruC9AZ3BM2a9pbI1c_mL4BmbJ1XxbzEt6B0k8YJy_ikX28BxXGSIL-A.mxLjrbAkBLGvdF9tkeRG1QCCxwi6PuYR6IIkQFP4YN0",
            ),
        ]
    }

    fn flip_first_byte(token: &str, part: usize) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut raw = engine.decode(&parts[part]).expect("b64");
        raw[0] ^= 1;
        parts[part] = engine.encode(raw);
        parts.join(".")
    }

    #[tokio::test]
    async fn jwe_tokens_made_by_jwcrypto_resolve_and_tampered_ones_are_refused() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            for (index, (key, token)) in jwcrypto_vectors().into_iter().enumerate() {
                let source = key_file(&dir, &format!("key{index}"), key);
                let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
                assert_eq!(
                    tokens.lookup(token).await.expect("lookup"),
                    Some(tcp("remote_host", 5900)),
                    "vector {index}"
                );
                let keys = JwtKeys::load(Path::new(&source)).expect("keys");
                // Flipping a bit of the IV, ciphertext or tag, or of a wrapped or RSA-encrypted
                // key, fails the decryption (ECDH-ES has no encrypted key to flip).
                for part in 1..5 {
                    if token.split('.').nth(part) == Some("") {
                        continue;
                    }
                    let tampered = flip_first_byte(token, part);
                    let reason = keys.verify(&tampered).expect_err("tampered");
                    assert!(
                        reason.contains("wrong key or tampered token"),
                        "vector {index} part {part}: {reason}"
                    );
                    assert_eq!(tokens.lookup(&tampered).await.expect("lookup"), None);
                }
            }
        })
        .await;
    }

    #[test]
    fn jwe_needs_the_right_kind_of_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vectors = jwcrypto_vectors();
        let reason = |key: &str, token: &str| {
            let keys = JwtKeys::load(Path::new(&key_file(&dir, "key", key))).expect("keys");
            keys.verify(token).expect_err("refused")
        };
        // RSA-OAEP with the public key only: it cannot decrypt.
        assert!(reason(RSA_PUBLIC, vectors[0].1).contains("needs an RSA private key"));
        assert!(reason(RSA_PUBLIC, vectors[0].1).contains("a public key"));
        // ECDH-ES with an RSA key, A128KW with an EC key, dir with a secret of the wrong size.
        assert!(reason(RSA_PRIVATE_PKCS1, vectors[2].1).contains("needs an EC P-256"));
        assert!(reason(EC_PRIVATE, vectors[6].1).contains("needs a secret key file"));
        let wrong_size = reason(SECRET_32, vectors[7].1);
        assert!(
            wrong_size.contains("needs a 16-byte secret"),
            "{wrong_size}"
        );
        // A secret of the right size but the wrong value.
        let wrong = "AQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
        assert!(reason(wrong, vectors[8].1).contains("wrong key or tampered token"));
    }

    #[test]
    fn jwe_content_must_be_a_valid_signed_jwt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys =
            JwtKeys::load(Path::new(&key_file(&dir, "rsa.pem", RSA_PRIVATE_PKCS1))).expect("keys");
        // Anyone can encrypt to a public key: content that is not signed by the key is refused.
        let public = rsa::RsaPublicKey::from(
            <rsa::RsaPrivateKey as rsa::pkcs1::DecodeRsaPrivateKey>::from_pkcs1_pem(
                RSA_PRIVATE_PKCS1,
            )
            .expect("rsa"),
        );
        let now = get_current_timestamp();
        let signed = |claims: Value| jwt(Algorithm::RS256, &rsa_signer(), claims);
        let other_key = EncodingKey::from_secret(b"not the key file's key at all, no");
        let cases = [
            (
                r#"{"host":"h","port":1}"#.to_owned(),
                "the JWE's inner JWT: malformed token",
            ),
            (
                jwt(
                    Algorithm::HS256,
                    &other_key,
                    json!({"host": "h", "port": 1}),
                ),
                "the JWE's inner JWT: its algorithm does not match the key",
            ),
            (
                signed(json!({"host": "h", "port": 1, "exp": now - 5})),
                "the JWE's inner JWT: token has expired",
            ),
            (
                signed(json!({"host": "h", "port": 1, "nbf": now + 60})),
                "the JWE's inner JWT: token cannot be used yet (nbf)",
            ),
        ];
        for (content, expected) in cases {
            let token = rsa_oaep_a256gcm(&public, content.as_bytes());
            assert_eq!(keys.verify(&token), Err(expected.into()));
        }
        let nested = rsa_oaep_a256gcm(&public, b"a.b.c.d.e");
        assert_eq!(
            keys.verify(&rsa_oaep_a256gcm(&public, nested.as_bytes())),
            Err("the JWE's content is another JWE, not a signed JWT".into())
        );
        let good = signed(json!({"host": "h", "port": 1, "exp": now + 60}));
        assert_eq!(
            keys.verify(&rsa_oaep_a256gcm(&public, good.as_bytes())),
            Ok(tcp("h", 1))
        );
    }

    /// An RSA-OAEP + A256GCM JWE of `content`, made here for content jwcrypto would not sign.
    fn rsa_oaep_a256gcm(public: &rsa::RsaPublicKey, content: &[u8]) -> String {
        use aes_gcm::aead::{AeadInPlace as _, KeyInit as _};
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.encode(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
        let cek = [7u8; 32];
        let iv = [9u8; 12];
        let encrypted_key = public
            .encrypt(&mut rand_core::OsRng, rsa::Oaep::new::<sha1::Sha1>(), &cek)
            .expect("encrypt");
        let mut ciphertext = content.to_vec();
        let tag = aes_gcm::Aes256Gcm::new_from_slice(&cek)
            .expect("key")
            .encrypt_in_place_detached(
                aes_gcm::Nonce::from_slice(&iv),
                header.as_bytes(),
                &mut ciphertext,
            )
            .expect("seal");
        format!(
            "{header}.{}.{}.{}.{}",
            engine.encode(encrypted_key),
            engine.encode(iv),
            engine.encode(ciphertext),
            engine.encode(tag)
        )
    }

    #[tokio::test]
    async fn unusable_jwe_tokens_are_unknown_tokens_with_a_reason() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let source = key_file(&dir, "rsa.pem", RSA_PRIVATE_PKCS1);
            let tokens = Tokens::new("JWTTokenApi", Some(&source)).expect("tokens");
            let keys = JwtKeys::load(Path::new(&source)).expect("keys");
            let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let with_header =
                |header: &str| format!("{}.a2V5.aXY.Y2lwaGVy.dGFn", engine.encode(header));
            let cases = [
                (
                    with_header(r#"{"alg":"RSA1_5","enc":"A256GCM"}"#),
                    "JWE key management alg \"RSA1_5\" is not supported",
                ),
                (
                    with_header(r#"{"alg":"RSA-OAEP","enc":"A192GCM"}"#),
                    "JWE content encryption enc \"A192GCM\" is not supported",
                ),
                (
                    with_header(r#"{"alg":"RSA-OAEP","enc":"A256GCM","zip":"DEF"}"#),
                    "compressed JWE (zip \"DEF\") is not supported",
                ),
                (
                    with_header(&format!(
                        r#"{{"alg":"{}\n","enc":"A256GCM"}}"#,
                        "x".repeat(99)
                    )),
                    "alg \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\" is not supported",
                ),
                (
                    with_header(r#"{"alg":"RSA-OAEP","enc":"A256GCM","crit":["x"]}"#),
                    "JWE critical header extensions",
                ),
                (
                    format!(
                        "{}.e30.c2ln",
                        engine.encode(r#"{"alg":"dir","enc":"A256GCM"}"#)
                    ),
                    "a JWE has 5 dot-separated parts, this one 3",
                ),
                (
                    "e30.YQ.Yg.Yw.ZA".to_owned(),
                    "JWE header has no string \"alg\"",
                ),
                ("!.a.b.c.d".to_owned(), "JWE header is not base64url"),
                (
                    format!("{}.a.b.c.d", "A".repeat(jwe::MAX_JWE_BYTES)),
                    "more than the 16384 accepted",
                ),
            ];
            for (token, expected) in cases {
                let reason = keys.verify(&token).expect_err("refused");
                assert!(reason.contains(expected), "{reason:?} vs {expected:?}");
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
