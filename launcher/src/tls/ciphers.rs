//! `--ssl-ciphers`: an OpenSSL cipher string evaluated against the suites rustls (ring) offers.
//!
//! Python's `SSLContext.set_ciphers` hands the string to OpenSSL. Here the same grammar (terms
//! joined by `:`, `,` or spaces; `!`, `-` and `+` prefixes; `+`-joined aliases; `@STRENGTH` and
//! `@SECLEVEL=n`) selects from the nine suites rustls can negotiate, and a term that could only
//! select suites rustls lacks is an error naming what it supports. Written by hand: no crate
//! evaluates OpenSSL cipher strings without linking OpenSSL.

use rustls::crypto::ring;
use rustls::{CipherSuite, SupportedCipherSuite};

/// A problem in the `--ssl-ciphers` string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error(
        "unsupported cipher '{term}' in --ssl-ciphers: rustls supports {} \
         (TLS 1.3 suites are always enabled)",
        supported_names()
    )]
    Unsupported { term: String },
    #[error(
        "--ssl-ciphers '{spec}' leaves no cipher suite enabled; name at least one of {}",
        supported_names()
    )]
    Empty { spec: String },
}

const KX_ECDHE: u16 = 1 << 0;
const AUTH_RSA: u16 = 1 << 1;
const AUTH_ECDSA: u16 = 1 << 2;
const AES128: u16 = 1 << 3;
const AES256: u16 = 1 << 4;
const CHACHA20: u16 = 1 << 5;
const SHA256: u16 = 1 << 6;
const SHA384: u16 = 1 << 7;
const TLS12: u16 = 1 << 8;
const TLS13: u16 = 1 << 9;

/// OpenSSL's names for the suites the ring provider offers (for TLS 1.3 also the IANA names).
#[rustfmt::skip]
const OPENSSL_NAMES: &[(CipherSuite, &str)] = &[
    (CipherSuite::TLS13_AES_256_GCM_SHA384, "TLS_AES_256_GCM_SHA384"),
    (CipherSuite::TLS13_AES_128_GCM_SHA256, "TLS_AES_128_GCM_SHA256"),
    (CipherSuite::TLS13_CHACHA20_POLY1305_SHA256, "TLS_CHACHA20_POLY1305_SHA256"),
    (CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    (CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, "ECDHE-ECDSA-AES128-GCM-SHA256"),
    (CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-ECDSA-CHACHA20-POLY1305"),
    (CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, "ECDHE-RSA-AES256-GCM-SHA384"),
    (CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, "ECDHE-RSA-AES128-GCM-SHA256"),
    (CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, "ECDHE-RSA-CHACHA20-POLY1305"),
];

/// One suite rustls can offer, with the names and attributes a cipher string can select it by.
struct SuiteInfo {
    suite: SupportedCipherSuite,
    openssl: &'static str,
    iana: &'static str,
    attrs: u16,
}

/// The ring provider's suites, in its order.
fn universe() -> Vec<SuiteInfo> {
    const FLAGS: &[(&str, u16)] = &[
        ("TLS13_", TLS13),
        ("_WITH_", TLS12),
        ("ECDHE_", KX_ECDHE),
        ("_RSA_", AUTH_RSA),
        ("_ECDSA_", AUTH_ECDSA),
        ("AES_128", AES128),
        ("AES_256", AES256),
        ("CHACHA20", CHACHA20),
        ("SHA256", SHA256),
        ("SHA384", SHA384),
    ];
    let info = |suite: SupportedCipherSuite| {
        let id = suite.suite();
        let iana = id.as_str()?;
        let openssl = OPENSSL_NAMES.iter().find(|(s, _)| *s == id)?.1;
        let attrs = FLAGS
            .iter()
            .filter(|(f, _)| iana.contains(f))
            .fold(0, |a, (_, b)| a | b);
        Some(SuiteInfo {
            suite,
            openssl,
            iana,
            attrs,
        })
    };
    ring::default_provider()
        .cipher_suites
        .into_iter()
        .filter_map(info)
        .collect()
}

/// The OpenSSL alias `word` as "attributes a suite needs one of"; `None` when rustls offers no
/// suite for it (or the word is unknown). Aliases only select TLS 1.2 suites, as in OpenSSL.
fn alias(word: &str, positive: bool) -> Option<u16> {
    let any = match word {
        "ALL" | "DEFAULT" | "HIGH" | "AEAD" | "TLSv1.2" => TLS12,
        "ECDHE" | "EECDH" | "kECDHE" | "kEECDH" | "ECDH" => KX_ECDHE,
        "aRSA" => AUTH_RSA,
        // OpenSSL's `RSA` means static RSA key exchange, which rustls never offers: `!RSA` removes
        // nothing. As a positive term (an error in that reading) it is taken to mean aRSA.
        "RSA" if positive => AUTH_RSA,
        "aECDSA" | "ECDSA" => AUTH_ECDSA,
        "AES" | "AESGCM" => AES128 | AES256,
        "AES128" => AES128,
        "AES256" => AES256,
        "CHACHA20" => CHACHA20,
        "SHA256" => SHA256,
        "SHA384" => SHA384,
        _ => return None,
    };
    Some(any)
}

/// Does one `+`-joined term select `suite`?
fn term_matches(term: &str, suite: &SuiteInfo, positive: bool) -> bool {
    term.split('+').all(|part| {
        if part.eq_ignore_ascii_case(suite.openssl) || part.eq_ignore_ascii_case(suite.iana) {
            return true;
        }
        alias(part, positive).is_some_and(|any| suite.attrs & TLS12 != 0 && suite.attrs & any != 0)
    })
}

fn supported_names() -> String {
    let names = universe().into_iter().filter(|s| s.attrs & TLS12 != 0);
    names.map(|s| s.openssl).collect::<Vec<_>>().join(", ")
}

/// Parse an OpenSSL cipher string into the rustls suites it selects (TLS 1.3 suites first).
///
/// Like Python's `set_ciphers`, the string picks TLS 1.2 suites and all TLS 1.3 suites stay on,
/// unless the string names TLS 1.3 suites: then only those are enabled.
pub fn select_cipher_suites(spec: &str) -> Result<Vec<SupportedCipherSuite>, CipherError> {
    let universe = universe();
    let is13 = |i: usize| universe[i].attrs & TLS13 != 0;
    let mut list: Vec<usize> = Vec::new();
    let mut killed = vec![false; universe.len()];
    // TLS 1.3 suites dropped while they are still implicitly on.
    let mut dropped = vec![false; universe.len()];
    let mut named_tls13 = false;
    let unsupported = |term: &str| CipherError::Unsupported {
        term: term.to_owned(),
    };
    for term in spec.split([':', ',', ' ']).filter(|t| !t.is_empty()) {
        if let Some(command) = term.strip_prefix('@') {
            let level = command.strip_prefix("SECLEVEL=");
            if command == "STRENGTH" || level.is_some_and(|n| n.parse::<u8>().is_ok()) {
                continue; // Ordering and security levels have no rustls counterpart.
            }
            return Err(unsupported(term));
        }
        let (op, body) = match term.chars().next() {
            Some(op @ ('!' | '-' | '+')) => (op, &term[1..]),
            _ => ('=', term),
        };
        let positive = op == '=';
        let matched: Vec<usize> = (0..universe.len())
            .filter(|&i| term_matches(body, &universe[i], positive))
            .collect();
        match op {
            '=' => {
                if matched.is_empty() {
                    return Err(unsupported(term));
                }
                for i in matched {
                    named_tls13 |= is13(i);
                    if !killed[i] && !list.contains(&i) {
                        list.push(i);
                    }
                }
            }
            '+' => {
                for i in matched {
                    if let Some(at) = list.iter().position(|&j| j == i) {
                        list.remove(at);
                        list.push(i);
                    }
                }
            }
            _ => {
                for i in matched {
                    killed[i] |= op == '!';
                    dropped[i] = true;
                    list.retain(|&j| j != i);
                }
            }
        }
    }
    if list.is_empty() {
        return Err(CipherError::Empty {
            spec: spec.to_owned(),
        });
    }
    let tls13: Vec<usize> = if named_tls13 {
        list.iter().copied().filter(|&i| is13(i)).collect()
    } else {
        (0..universe.len())
            .filter(|&i| is13(i) && !dropped[i])
            .collect()
    };
    let tls12 = list.iter().copied().filter(|&i| !is13(i));
    Ok(tls13
        .into_iter()
        .chain(tls12)
        .map(|i| universe[i].suite)
        .collect())
}
#[cfg(test)]
mod tests {
    use super::*;

    fn names(spec: &str) -> Vec<String> {
        let suites = select_cipher_suites(spec).unwrap();
        suites.iter().map(|s| format!("{:?}", s.suite())).collect()
    }

    #[test]
    fn cipher_strings_select_like_openssl() {
        assert_eq!(names("HIGH:!aNULL:!MD5").len(), 9);
        assert_eq!(names("DEFAULT").len(), 9);
        let gcm = names("ECDHE+AESGCM");
        assert_eq!(gcm.len(), 3 + 4);
        assert!(
            gcm.iter()
                .all(|n| n.starts_with("TLS13") || n.contains("GCM"))
        );
        let one = names("ECDHE-RSA-AES256-GCM-SHA384");
        assert_eq!(one.len(), 4);
        assert_eq!(one[3], "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
        assert_eq!(
            names("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256").len(),
            4
        );
        assert_eq!(
            names("TLS_AES_256_GCM_SHA384"),
            ["TLS13_AES_256_GCM_SHA384"]
        );
        assert_eq!(names("ALL:!TLS_AES_128_GCM_SHA256").len(), 8);
        assert_eq!(
            names("aECDSA, CHACHA20 !kRSA:!RSA:-AES128:@STRENGTH:@SECLEVEL=2").len(),
            3 + 3
        );
        assert_eq!(
            names("ECDHE+RSA:+AES256").last().unwrap(),
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
        );
    }

    #[test]
    fn cipher_strings_rustls_cannot_honour_are_errors() {
        for term in [
            "AES128-SHA",
            "DHE-RSA-AES256-GCM-SHA384",
            "nonsense",
            "@FOO",
        ] {
            let err = select_cipher_suites(&format!("HIGH:{term}")).unwrap_err();
            assert_eq!(err, CipherError::Unsupported { term: term.into() });
            assert!(
                err.to_string().contains("ECDHE-RSA-AES128-GCM-SHA256"),
                "{err}"
            );
        }
        let err = select_cipher_suites("!ALL").unwrap_err();
        assert!(matches!(err, CipherError::Empty { .. }), "{err}");
    }
}
