//! Encrypted tokens (JWE, RFC 7516 compact serialization) for `JWTTokenApi`: upstream's
//! jwcrypto decrypts a token whose header has `enc` with the key file's key, then verifies the
//! inner signed JWT with the same key. This module does the first half and hands the inner
//! token back to `jwt.rs`.
//!
//! ```text
//! header.encrypted_key.iv.ciphertext.tag
//!   alg (key management, RFC 7518 4)       enc (content encryption, RFC 7518 5)
//!   RSA-OAEP, RSA-OAEP-256   RSA key       A128GCM, A256GCM
//!   ECDH-ES, ECDH-ES+A128KW,               A128CBC-HS256, A256CBC-HS512
//!   ECDH-ES+A256KW           EC P-256/384
//!   A128KW, A256KW, dir      secret
//! ```
//!
//! Every primitive comes from RustCrypto (`rsa`, `p256`/`p384`, `aes-kw`, `aes-gcm`, `aes` +
//! `cbc`, `hmac`, `concat-kdf`); this file only parses the token and wires them as RFC 7518
//! says. Compression (`zip`) and critical extensions (`crit`) are refused.

use aes_gcm::aead::{AeadInPlace as _, KeyInit as _};
use base64::Engine as _;
use cbc::cipher::{BlockDecryptMut as _, KeyIvInit as _, block_padding::Pkcs7};
use serde_json::{Map, Value};

/// Largest JWE accepted, in bytes: a token with a few claims inside an RSA-4096 JWE is ~2 KiB.
pub(super) const MAX_JWE_BYTES: usize = 16 * 1024;

/// The key file's key, as JWE decryption uses it.
pub(super) enum JweKey {
    /// A PEM RSA private key (PKCS#1 or PKCS#8).
    Rsa(Box<rsa::RsaPrivateKey>),
    /// A PEM PKCS#8 EC private key on P-256.
    P256(p256::SecretKey),
    /// A PEM PKCS#8 EC private key on P-384.
    P384(p384::SecretKey),
    /// A key that decrypts nothing (a public key, Ed25519), described for log lines.
    Other(&'static str),
    /// The secrets derived from a secret key file (the base64url `k` reading, then the text).
    Secrets(Vec<Vec<u8>>),
}

impl JweKey {
    /// The private key of a PEM private key file that can decrypt JWE, if any: RSA, or EC
    /// P-256/P-384 in PKCS#8 (`jwt.rs` has already checked the file and refuses the others).
    pub(super) fn from_private_der(der: &rustls_pki_types::PrivateKeyDer<'_>) -> Option<JweKey> {
        use rsa::pkcs1::DecodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        use rustls_pki_types::PrivateKeyDer;
        match der {
            PrivateKeyDer::Pkcs1(der) => rsa::RsaPrivateKey::from_pkcs1_der(der.secret_pkcs1_der())
                .ok()
                .map(|key| JweKey::Rsa(Box::new(key))),
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
                    return Some(JweKey::Rsa(Box::new(key)));
                }
                if let Ok(key) = p256::SecretKey::from_pkcs8_der(der) {
                    return Some(JweKey::P256(key));
                }
                p384::SecretKey::from_pkcs8_der(der).ok().map(JweKey::P384)
            }
            _ => None,
        }
    }

    /// What the key file holds, for log lines.
    fn kind(&self) -> &'static str {
        match self {
            JweKey::Rsa(_) => "an RSA private key",
            JweKey::P256(_) => "an EC P-256 private key",
            JweKey::P384(_) => "an EC P-384 private key",
            JweKey::Other(kind) => kind,
            JweKey::Secrets(_) => "a secret",
        }
    }
}

/// Content encryption (`enc`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Enc {
    A128Gcm,
    A256Gcm,
    A128CbcHs256,
    A256CbcHs512,
}

impl Enc {
    fn from_name(name: &str) -> Option<Enc> {
        Some(match name {
            "A128GCM" => Enc::A128Gcm,
            "A256GCM" => Enc::A256Gcm,
            "A128CBC-HS256" => Enc::A128CbcHs256,
            "A256CBC-HS512" => Enc::A256CbcHs512,
            _ => return None,
        })
    }

    /// Length of the content encryption key (CEK) in bytes.
    fn key_len(self) -> usize {
        match self {
            Enc::A128Gcm => 16,
            Enc::A256Gcm | Enc::A128CbcHs256 => 32,
            Enc::A256CbcHs512 => 64,
        }
    }
}

/// Key management (`alg`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Alg {
    RsaOaep,
    RsaOaep256,
    EcdhEs,
    EcdhEsA128Kw,
    EcdhEsA256Kw,
    A128Kw,
    A256Kw,
    Dir,
}

impl Alg {
    fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RSA-OAEP" => Alg::RsaOaep,
            "RSA-OAEP-256" => Alg::RsaOaep256,
            "ECDH-ES" => Alg::EcdhEs,
            "ECDH-ES+A128KW" => Alg::EcdhEsA128Kw,
            "ECDH-ES+A256KW" => Alg::EcdhEsA256Kw,
            "A128KW" => Alg::A128Kw,
            "A256KW" => Alg::A256Kw,
            "dir" => Alg::Dir,
            _ => return None,
        })
    }
}

/// The five parts of a compact JWE, decoded, with its protected header.
struct Parts<'a> {
    header: Map<String, Value>,
    /// The first part as sent: the additional authenticated data.
    aad: &'a [u8],
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

/// The plaintext of a compact JWE (the inner token), or why it cannot be had. The reasons name
/// what failed and never contain key material or the token.
pub(super) fn decrypt(token: &str, key: &JweKey) -> Result<Vec<u8>, String> {
    if token.len() > MAX_JWE_BYTES {
        return Err(format!(
            "JWE is {} bytes, more than the {MAX_JWE_BYTES} accepted",
            token.len()
        ));
    }
    let parts = split(token)?;
    let alg_name = header_str(&parts.header, "alg")?;
    let enc_name = header_str(&parts.header, "enc")?;
    let alg = Alg::from_name(alg_name).ok_or_else(|| {
        format!(
            "JWE key management alg {} is not supported (RSA-OAEP, RSA-OAEP-256, \
             ECDH-ES, ECDH-ES+A128KW, ECDH-ES+A256KW, A128KW, A256KW and dir are)",
            shown(alg_name)
        )
    })?;
    let enc = Enc::from_name(enc_name).ok_or_else(|| {
        format!(
            "JWE content encryption enc {} is not supported (A128GCM, A256GCM, \
             A128CBC-HS256 and A256CBC-HS512 are)",
            shown(enc_name)
        )
    })?;
    if let Some(zip) = parts.header.get("zip") {
        // Inflating would need its own size cap; jwcrypto compresses only when asked to.
        return Err(format!(
            "compressed JWE (zip {}) is not supported",
            shown(&zip.as_str().map_or_else(|| zip.to_string(), str::to_owned))
        ));
    }
    if let Some(crit) = parts.header.get("crit") {
        return Err(format!(
            "JWE critical header extensions {} are not supported",
            shown(&crit.to_string())
        ));
    }
    let cek = content_key(alg, alg_name, enc, &parts, key)?;
    decrypt_content(enc, &cek, &parts)
}

/// A header value for a log line: quoted and escaped, at most 40 characters of it.
fn shown(value: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut cut: String = value.chars().take(MAX_CHARS).collect();
    if cut.len() < value.len() {
        cut.push_str("...");
    }
    format!("{cut:?}")
}

/// Splits and base64url-decodes the five parts, and parses the protected header.
fn split(token: &str) -> Result<Parts<'_>, String> {
    let pieces: Vec<&str> = token.split('.').collect();
    let [header, encrypted_key, iv, ciphertext, tag] = pieces[..] else {
        return Err(format!(
            "a JWE has 5 dot-separated parts, this one {}",
            pieces.len()
        ));
    };
    let decode = |name: &str, part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|e| format!("JWE {name} is not base64url: {e}"))
    };
    let header_json = decode("header", header)?;
    let parsed = serde_json::from_slice::<Map<String, Value>>(&header_json)
        .map_err(|e| format!("JWE header is not a JSON object: {e}"))?;
    Ok(Parts {
        header: parsed,
        aad: header.as_bytes(),
        encrypted_key: decode("encrypted key", encrypted_key)?,
        iv: decode("initialization vector", iv)?,
        ciphertext: decode("ciphertext", ciphertext)?,
        tag: decode("authentication tag", tag)?,
    })
}

fn header_str<'h>(header: &'h Map<String, Value>, name: &str) -> Result<&'h str, String> {
    header
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("JWE header has no string {name:?}"))
}

/// The content encryption key: unwrapped, decrypted, agreed or the secret itself.
fn content_key(
    alg: Alg,
    alg_name: &str,
    enc: Enc,
    parts: &Parts<'_>,
    key: &JweKey,
) -> Result<Vec<u8>, String> {
    let mismatch = |needs: &str| {
        format!(
            "JWE alg {alg_name} needs {needs}, the key file holds {}",
            key.kind()
        )
    };
    match (alg, key) {
        (Alg::RsaOaep | Alg::RsaOaep256, JweKey::Rsa(rsa_key)) => {
            rsa_oaep(alg, rsa_key, &parts.encrypted_key, enc.key_len())
        }
        (Alg::RsaOaep | Alg::RsaOaep256, _) => Err(mismatch("an RSA private key")),
        (
            Alg::EcdhEs | Alg::EcdhEsA128Kw | Alg::EcdhEsA256Kw,
            JweKey::P256(_) | JweKey::P384(_),
        ) => ecdh_es(alg, alg_name, enc, parts, key),
        (Alg::EcdhEs | Alg::EcdhEsA128Kw | Alg::EcdhEsA256Kw, _) => {
            Err(mismatch("an EC P-256 or P-384 private key"))
        }
        (Alg::A128Kw | Alg::A256Kw | Alg::Dir, JweKey::Secrets(secrets)) => {
            let wanted = match alg {
                Alg::A128Kw => 16,
                Alg::A256Kw => 32,
                _ => enc.key_len(),
            };
            let lengths: Vec<String> = secrets.iter().map(|s| s.len().to_string()).collect();
            let mut secrets = secrets.iter().filter(|s| s.len() == wanted).peekable();
            if secrets.peek().is_none() {
                return Err(format!(
                    "JWE alg {alg_name} with enc {enc:?} needs a {wanted}-byte secret, the key \
                     file's secret is {} bytes",
                    lengths.join(" or ")
                ));
            }
            let mut failure = String::new();
            for secret in secrets {
                if alg == Alg::Dir {
                    return Ok(secret.clone());
                }
                match aes_unwrap(secret, &parts.encrypted_key, enc.key_len()) {
                    Ok(cek) => return Ok(cek),
                    Err(reason) => failure = reason,
                }
            }
            Err(failure)
        }
        (Alg::A128Kw | Alg::A256Kw | Alg::Dir, _) => Err(mismatch("a secret key file")),
    }
}

/// RSAES-OAEP with SHA-1 (`RSA-OAEP`) or SHA-256 (`RSA-OAEP-256`), blinded. As RFC 7516
/// section 11.5 advises, a failure is not reported here: a random key of the right length takes
/// the decrypted key's place, so the content decryption fails the same way and in about the
/// same time whatever went wrong.
fn rsa_oaep(
    alg: Alg,
    key: &rsa::RsaPrivateKey,
    encrypted_key: &[u8],
    cek_len: usize,
) -> Result<Vec<u8>, String> {
    let padding = if alg == Alg::RsaOaep {
        rsa::Oaep::new::<sha1::Sha1>()
    } else {
        rsa::Oaep::new::<sha2::Sha256>()
    };
    let decrypted = key.decrypt_blinded(&mut rand_core::OsRng, padding, encrypted_key);
    match decrypted {
        Ok(cek) if cek.len() == cek_len => Ok(cek),
        _ => {
            let mut cek = vec![0; cek_len];
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut cek)
                .map_err(|e| format!("cannot draw random bytes: {e}"))?;
            Ok(cek)
        }
    }
}

/// ECDH-ES (RFC 7518 4.6): agree with the sender's ephemeral key (`epk`), derive with the
/// Concat KDF, then use the result as the CEK or unwrap the CEK with it.
fn ecdh_es(
    alg: Alg,
    alg_name: &str,
    enc: Enc,
    parts: &Parts<'_>,
    key: &JweKey,
) -> Result<Vec<u8>, String> {
    let epk = parts
        .header
        .get("epk")
        .and_then(Value::as_object)
        .ok_or("JWE ECDH-ES header has no epk object")?;
    let epk_str = |name: &str| {
        epk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("JWE epk has no string {name:?}"))
    };
    if epk_str("kty")? != "EC" {
        return Err("JWE epk is not an EC key (kty)".into());
    }
    let curve = epk_str("crv")?;
    let coordinate = |name: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(epk_str(name)?)
            .map_err(|e| format!("JWE epk {name} is not base64url: {e}"))
    };
    // SEC1 uncompressed point: 0x04 || x || y; the curve crates check that it is on the curve.
    let mut point = vec![4];
    point.extend(coordinate("x")?);
    point.extend(coordinate("y")?);
    let shared = match (key, curve) {
        (JweKey::P256(secret), "P-256") => {
            let public = p256::PublicKey::from_sec1_bytes(&point)
                .map_err(|_| "JWE epk is not a valid P-256 point".to_string())?;
            p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine())
                .raw_secret_bytes()
                .to_vec()
        }
        (JweKey::P384(secret), "P-384") => {
            let public = p384::PublicKey::from_sec1_bytes(&point)
                .map_err(|_| "JWE epk is not a valid P-384 point".to_string())?;
            p384::ecdh::diffie_hellman(secret.to_nonzero_scalar(), public.as_affine())
                .raw_secret_bytes()
                .to_vec()
        }
        _ => {
            return Err(format!(
                "JWE epk curve {} does not match the key file's {}",
                shown(curve),
                key.kind()
            ));
        }
    };
    // The KDF's AlgorithmID is enc for direct agreement, alg when the result wraps the CEK.
    let (algorithm_id, derived_len) = match alg {
        Alg::EcdhEsA128Kw => (alg_name, 16),
        Alg::EcdhEsA256Kw => (alg_name, 32),
        _ => (enc_name(enc), enc.key_len()),
    };
    let party = |name: &str| match parts.header.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(value)) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| format!("JWE {name} is not base64url: {e}")),
        Some(_) => Err(format!("JWE {name} is not a string")),
    };
    let derived = concat_kdf(
        &shared,
        algorithm_id.as_bytes(),
        &party("apu")?,
        &party("apv")?,
        derived_len,
    )?;
    if alg == Alg::EcdhEs {
        if !parts.encrypted_key.is_empty() {
            return Err("JWE with ECDH-ES must have an empty encrypted key".into());
        }
        return Ok(derived);
    }
    aes_unwrap(&derived, &parts.encrypted_key, enc.key_len())
}

fn enc_name(enc: Enc) -> &'static str {
    match enc {
        Enc::A128Gcm => "A128GCM",
        Enc::A256Gcm => "A256GCM",
        Enc::A128CbcHs256 => "A128CBC-HS256",
        Enc::A256CbcHs512 => "A256CBC-HS512",
    }
}

/// The Concat KDF of NIST SP 800-56A with SHA-256, with RFC 7518 4.6.2's OtherInfo: each of
/// AlgorithmID, PartyUInfo and PartyVInfo prefixed by its 32-bit big-endian length, then the
/// key length in bits (SuppPubInfo).
fn concat_kdf(
    shared: &[u8],
    algorithm_id: &[u8],
    apu: &[u8],
    apv: &[u8],
    len: usize,
) -> Result<Vec<u8>, String> {
    let mut other_info = Vec::with_capacity(16 + algorithm_id.len() + apu.len() + apv.len());
    for field in [algorithm_id, apu, apv] {
        let field_len = u32::try_from(field.len()).map_err(|_| "JWE apu/apv too long")?;
        other_info.extend(field_len.to_be_bytes());
        other_info.extend(field);
    }
    let bits = u32::try_from(len * 8).map_err(|_| "JWE key length too long")?;
    other_info.extend(bits.to_be_bytes());
    let mut derived = vec![0; len];
    concat_kdf::derive_key_into::<sha2::Sha256>(shared, &other_info, &mut derived)
        .map_err(|e| format!("JWE key derivation failed: {e}"))?;
    Ok(derived)
}

/// AES key unwrap (RFC 3394) of a `cek_len`-byte CEK with a 16- or 32-byte key.
fn aes_unwrap(kek: &[u8], wrapped: &[u8], cek_len: usize) -> Result<Vec<u8>, String> {
    if wrapped.len() != cek_len + 8 {
        return Err(format!(
            "JWE encrypted key is {} bytes, the wrapped {cek_len}-byte key is {}",
            wrapped.len(),
            cek_len + 8
        ));
    }
    let mut cek = vec![0; cek_len];
    let unwrapped = match kek.len() {
        16 => aes_kw::KekAes128::try_from(kek).and_then(|k| k.unwrap(wrapped, &mut cek)),
        32 => aes_kw::KekAes256::try_from(kek).and_then(|k| k.unwrap(wrapped, &mut cek)),
        other => return Err(format!("AES key wrap with a {other}-byte key")),
    };
    unwrapped.map_err(|e| format!("JWE key unwrap failed (wrong key or tampered token): {e}"))?;
    Ok(cek)
}

/// Authenticated decryption of the content (RFC 7518 5.2 and 5.3).
fn decrypt_content(enc: Enc, cek: &[u8], parts: &Parts<'_>) -> Result<Vec<u8>, String> {
    const TAMPERED: &str = "JWE content decryption failed (wrong key or tampered token)";
    if cek.len() != enc.key_len() {
        return Err(format!(
            "JWE content key is {} bytes, {enc:?} needs {}",
            cek.len(),
            enc.key_len()
        ));
    }
    let lengths = |iv: usize, tag: usize| {
        if parts.iv.len() != iv || parts.tag.len() != tag {
            return Err(format!(
                "JWE {enc:?} needs a {iv}-byte IV and a {tag}-byte tag, this one has {} and {}",
                parts.iv.len(),
                parts.tag.len()
            ));
        }
        Ok(())
    };
    match enc {
        Enc::A128Gcm | Enc::A256Gcm => {
            lengths(12, 16)?;
            let mut plaintext = parts.ciphertext.clone();
            let nonce = aes_gcm::Nonce::from_slice(&parts.iv);
            let tag = aes_gcm::Tag::from_slice(&parts.tag);
            let opened = if enc == Enc::A128Gcm {
                aes_gcm::Aes128Gcm::new_from_slice(cek)
                    .map(|c| c.decrypt_in_place_detached(nonce, parts.aad, &mut plaintext, tag))
            } else {
                aes_gcm::Aes256Gcm::new_from_slice(cek)
                    .map(|c| c.decrypt_in_place_detached(nonce, parts.aad, &mut plaintext, tag))
            };
            match opened {
                Ok(Ok(())) => Ok(plaintext),
                _ => Err(TAMPERED.into()),
            }
        }
        Enc::A128CbcHs256 | Enc::A256CbcHs512 => {
            let half = cek.len() / 2;
            let (mac_key, enc_key) = cek.split_at(half);
            lengths(16, half)?;
            // The tag is the left half of HMAC(AAD || IV || ciphertext || AAD length in bits),
            // checked in constant time before anything is decrypted.
            let aad_bits = u64::try_from(parts.aad.len())
                .ok()
                .and_then(|len| len.checked_mul(8))
                .ok_or("JWE header too long")?;
            let mac_input = [
                parts.aad,
                &parts.iv,
                &parts.ciphertext,
                &aad_bits.to_be_bytes(),
            ];
            if !hmac_left_half_matches(enc, mac_key, &mac_input, &parts.tag) {
                return Err(TAMPERED.into());
            }
            let plaintext = if enc == Enc::A128CbcHs256 {
                cbc::Decryptor::<aes::Aes128>::new_from_slices(enc_key, &parts.iv)
                    .map(|d| d.decrypt_padded_vec_mut::<Pkcs7>(&parts.ciphertext))
            } else {
                cbc::Decryptor::<aes::Aes256>::new_from_slices(enc_key, &parts.iv)
                    .map(|d| d.decrypt_padded_vec_mut::<Pkcs7>(&parts.ciphertext))
            };
            match plaintext {
                Ok(Ok(plaintext)) => Ok(plaintext),
                _ => Err("JWE content has bad padding after a valid tag".into()),
            }
        }
    }
}

/// Whether `tag` is the left half of the HMAC of `input` (hmac's constant-time comparison).
fn hmac_left_half_matches(enc: Enc, key: &[u8], input: &[&[u8]], tag: &[u8]) -> bool {
    fn check<M: hmac::Mac + hmac::digest::KeyInit>(
        key: &[u8],
        input: &[&[u8]],
        tag: &[u8],
    ) -> bool {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return false;
        };
        for piece in input {
            mac.update(piece);
        }
        !tag.is_empty() && mac.verify_truncated_left(tag).is_ok()
    }
    if enc == Enc::A128CbcHs256 {
        check::<hmac::Hmac<sha2::Sha256>>(key, input, tag)
    } else {
        check::<hmac::Hmac<sha2::Sha512>>(key, input, tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7516 appendix A.3: A128KW with A128CBC-HS256, key `GawgguFyGrWKav7AX4VKUg`.
    const RFC7516_A3: &str = "eyJhbGciOiJBMTI4S1ciLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.\
        6KB707dM9YTIgHtLvtgWQ8mKwboJW3of9locizkDTHzBC2IlrT1oOQ.\
        AxY8DCtDaGlsbGljb3RoZQ.\
        KDlTtXchhZTGufMYmOYGS4HffxPSUrfmqCHXaI9wOGY.\
        U0m_YmjN04DJvceFICbCVQ";

    fn a3_key() -> JweKey {
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode("GawgguFyGrWKav7AX4VKUg")
            .expect("b64");
        JweKey::Secrets(vec![b"not this one".to_vec(), secret])
    }

    #[test]
    fn rfc7516_a3_example_decrypts() {
        assert_eq!(
            decrypt(RFC7516_A3, &a3_key()),
            Ok(b"Live long and prosper.".to_vec())
        );
    }

    #[test]
    fn rfc7516_a3_with_any_part_changed_is_refused() {
        let parts: Vec<&str> = RFC7516_A3.split('.').collect();
        // Other values from the RFC's own examples: a different tag, IV or ciphertext.
        for (index, replacement) in [
            (4, "9hH0vgRfYgPnAHOd8stkvw"),
            (2, "eE63cGwX4T7eSspUA72t2Q"),
            (3, "giYkZlt454236QV7AdREOuT0UOQrnNW1dpTna5JQpDk"),
            (1, "anBl9PSuJobKWwzWzJCqfMnejCvM5-WadN3zXMGyoCLW8_xmUldY3Q"),
        ] {
            let mut changed = parts.clone();
            changed[index] = replacement;
            let reason = decrypt(&changed.join("."), &a3_key()).expect_err("refused");
            assert!(reason.contains("wrong key or tampered token"), "{reason}");
        }
        // A truncated tag is refused by length, before any MAC comparison.
        let mut truncated = parts.clone();
        truncated[4] = "U0m_YmjN04A";
        let reason = decrypt(&truncated.join("."), &a3_key()).expect_err("refused");
        assert!(
            reason.contains("needs a 16-byte IV and a 16-byte tag"),
            "{reason}"
        );
    }

    #[test]
    fn concat_kdf_other_info_follows_rfc7518() {
        // RFC 7518 appendix C's inputs: Z, "A128GCM", apu "Alice", apv "Bob", 128 bits.
        let z = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let derived = concat_kdf(&z, b"A128GCM", b"Alice", b"Bob", 16).expect("kdf");
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(derived),
            "VqqN6vgjbSBcIijNcacQGg"
        );
    }
}
