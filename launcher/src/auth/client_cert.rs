//! The subject commonName of a TLS client certificate, for `ClientCertCNAuth`.
//!
//! The `der` crate reads the tags and lengths (definite, minimal, within bounds); this module
//! only says which elements to step over to reach the subject. A full X.509 parser is not used:
//! `x509-cert` decodes through `der`'s known tags and rejects a whole certificate with a
//! `UniversalString` anywhere in a name, and it insists on sorted multi-valued RDNs, where
//! OpenSSL (which gives upstream its commonName) accepts both; `x509-parser` brings about 20
//! crates (nom, asn1-rs and its proc macros, num-bigint) for one field. The input is a
//! certificate rustls/webpki has already verified; anything unexpected gives `None`.

use der::{AnyRef, Decode as _, Length, Reader, SliceReader, Tag, TagNumber, Tagged as _};

/// `[0] EXPLICIT Version`, absent in v1 certificates.
const VERSION: Tag = Tag::ContextSpecific {
    constructed: true,
    number: TagNumber::N0,
};
/// The contents of OID 2.5.4.3, id-at-commonName.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

// The string types X.520 allows for a commonName, as tag bytes: `der` has no `UniversalString`.
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_TELETEX_STRING: u8 = 0x14;
const TAG_IA5_STRING: u8 = 0x16;
const TAG_VISIBLE_STRING: u8 = 0x1a;
const TAG_UNIVERSAL_STRING: u8 = 0x1c;
const TAG_BMP_STRING: u8 = 0x1e;

/// The subject commonName of a DER certificate.
///
/// With several commonName attributes the last one counts: it is the most specific in DER order,
/// and upstream's `dict()` of the subject keeps the last too. None when there is no commonName,
/// when that last one is not a string type, or when the DER is malformed.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    last_common_name(subject_name(der).ok()?)?
}

/// The contents of the subject `Name` of a DER `Certificate`; the whole input must be one.
fn subject_name(der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(der)?;
    let subject = reader.sequence(|certificate| {
        let subject = certificate.sequence(|tbs| {
            if tbs.peek_tag()? == VERSION {
                tbs.decode::<AnyRef<'_>>()?;
            }
            contents(tbs, Tag::Integer)?; // serialNumber
            contents(tbs, Tag::Sequence)?; // signature
            contents(tbs, Tag::Sequence)?; // issuer
            contents(tbs, Tag::Sequence)?; // validity
            let subject = contents(tbs, Tag::Sequence)?;
            // subjectPublicKeyInfo and the extensions are not needed.
            tbs.read_slice(tbs.remaining_len())?;
            Ok(subject)
        })?;
        // signatureAlgorithm and signatureValue, already checked by webpki.
        certificate.read_slice(certificate.remaining_len())?;
        Ok(subject)
    })?;
    reader.finish(subject)
}

/// Reads one element that must have `tag`; returns its contents.
fn contents<'a>(reader: &mut impl Reader<'a>, tag: Tag) -> der::Result<&'a [u8]> {
    let element: AnyRef<'a> = reader.decode()?;
    element.tag().assert_eq(tag)?;
    Ok(element.value())
}

/// Walks `Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }` (the contents): the last
/// commonName, `Some(None)` if that one is unreadable, `None` if the DER is malformed.
fn last_common_name(name: &[u8]) -> Option<Option<String>> {
    let mut rdns = SliceReader::new(name).ok()?;
    let mut found: Option<Option<String>> = None;
    while !rdns.is_finished() {
        let rdn = contents(&mut rdns, Tag::Set).ok()?;
        let mut attributes = SliceReader::new(rdn).ok()?;
        while !attributes.is_finished() {
            let (oid, value) = attributes
                .sequence(|attribute| {
                    let oid = contents(attribute, Tag::ObjectIdentifier)?;
                    // Taken raw: `der` cannot decode the header of a UniversalString.
                    let value = attribute.read_slice(attribute.remaining_len())?;
                    Ok((oid, value))
                })
                .ok()?;
            if oid == OID_COMMON_NAME {
                found = Some(directory_string(value)?);
            }
        }
    }
    // An unreadable last commonName is not replaced by an earlier one.
    Some(found.flatten())
}

/// One attribute value (tag, length, contents): `None` if it is not a single well-formed
/// element, `Some(None)` if it is not a readable string.
fn directory_string(element: &[u8]) -> Option<Option<String>> {
    let (&tag, rest) = element.split_first()?;
    // High-number tags (low five bits all set) are not string types.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let mut reader = SliceReader::new(rest).ok()?;
    let len = Length::decode(&mut reader).ok()?;
    let bytes = reader.read_slice(len).ok()?;
    reader.finish(()).ok()?;
    Some(decode_string(tag, bytes))
}

/// Decodes the string types X.520 allows for a commonName.
fn decode_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        TAG_UTF8_STRING => String::from_utf8(bytes.to_vec()).ok(),
        TAG_PRINTABLE_STRING | TAG_IA5_STRING | TAG_VISIBLE_STRING => bytes
            .is_ascii()
            .then(|| bytes.iter().copied().map(char::from).collect()),
        // OpenSSL, which gives Python its commonName, reads T.61 strings as ISO-8859-1.
        TAG_TELETEX_STRING => Some(bytes.iter().copied().map(char::from).collect()),
        TAG_BMP_STRING if bytes.len().is_multiple_of(2) => {
            let units = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        TAG_UNIVERSAL_STRING if bytes.len().is_multiple_of(4) => bytes
            .chunks_exact(4)
            .map(|quad| char::from_u32(u32::from_be_bytes([quad[0], quad[1], quad[2], quad[3]])))
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

    const TAG_INTEGER: u8 = 0x02;
    const TAG_OID: u8 = 0x06;
    const TAG_SEQUENCE: u8 = 0x30;
    const TAG_SET: u8 = 0x31;
    const TAG_VERSION: u8 = 0xa0;

    /// A self-signed certificate with the subject `dn`.
    pub(crate) fn cert_with(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// A certificate for `C=GB, O=Example Ltd, CN=<cn>, OU=Desk`.
    pub(crate) fn cert_for(cn: &str) -> Vec<u8> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "GB");
        dn.push(DnType::OrganizationName, "Example Ltd");
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationalUnitName, "Desk");
        cert_with(dn)
    }

    #[test]
    fn subject_cn_finds_the_cn_among_other_rdns() {
        assert_eq!(subject_cn(&cert_for("alice")).as_deref(), Some("alice"));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "only");
        assert_eq!(subject_cn(&cert_with(dn)).as_deref(), Some("only"));
    }

    #[test]
    fn subject_cn_is_none_without_a_cn() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "GB");
        dn.push(DnType::OrganizationName, "Example Ltd");
        assert_eq!(subject_cn(&cert_with(dn)), None);
        assert_eq!(subject_cn(&cert_with(DistinguishedName::new())), None);
    }

    #[test]
    fn subject_cn_takes_the_last_of_several_cns() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "bob");
        dn.push(DnType::OrganizationName, "Example Ltd");
        // The same OID under another key, so rcgen writes a second commonName.
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "alice");
        assert_eq!(subject_cn(&cert_with(dn)).as_deref(), Some("alice"));
    }

    #[test]
    fn subject_cn_decodes_every_string_type() {
        let cases: Vec<(DnValue, &str)> = vec![
            (DnValue::Utf8String("Zoë 密".into()), "Zoë 密"),
            (
                DnValue::PrintableString("Alice Smith".try_into().unwrap()),
                "Alice Smith",
            ),
            (
                DnValue::Ia5String("alice@example.org".try_into().unwrap()),
                "alice@example.org",
            ),
            (DnValue::TeletexString("alice".try_into().unwrap()), "alice"),
            (DnValue::BmpString("Zoë".try_into().unwrap()), "Zoë"),
            (
                DnValue::UniversalString("Zoë 🦀".try_into().unwrap()),
                "Zoë 🦀",
            ),
        ];
        for (value, expected) in cases {
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, value);
            assert_eq!(subject_cn(&cert_with(dn)).as_deref(), Some(expected));
        }
    }

    /// DER element with `tag` around the concatenated `parts`.
    fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let body = parts.concat();
        let len = body.len();
        let mut out = vec![tag];
        match len {
            0..0x80 => out.push(len as u8),
            0x80..0x100 => out.extend([0x81, len as u8]),
            _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend(body);
        out
    }

    /// `AttributeTypeAndValue` with the OID contents `oid`.
    fn attribute(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        tlv(TAG_SEQUENCE, &[&tlv(TAG_OID, &[oid]), &tlv(tag, &[value])])
    }

    fn rdn(attributes: &[Vec<u8>]) -> Vec<u8> {
        let parts: Vec<&[u8]> = attributes.iter().map(Vec::as_slice).collect();
        tlv(TAG_SET, &parts)
    }

    /// A structurally valid (unsigned) certificate with the given subject RDNs.
    fn synthetic_cert(with_version: bool, rdns: &[Vec<u8>]) -> Vec<u8> {
        let parts: Vec<&[u8]> = rdns.iter().map(Vec::as_slice).collect();
        let name = tlv(TAG_SEQUENCE, &parts);
        let version = tlv(TAG_VERSION, &[&tlv(TAG_INTEGER, &[&[2]])]);
        let mut fields: Vec<&[u8]> = Vec::new();
        if with_version {
            fields.push(&version);
        }
        let serial = tlv(TAG_INTEGER, &[&[1]]);
        let algorithm = tlv(TAG_SEQUENCE, &[&tlv(TAG_OID, &[&[0x2a, 0x03]])]);
        let issuer = tlv(
            TAG_SEQUENCE,
            &[&rdn(&[attribute(OID_COMMON_NAME, 0x0c, b"issuer")])],
        );
        let validity = tlv(TAG_SEQUENCE, &[]);
        let spki = tlv(TAG_SEQUENCE, &[]);
        fields.extend([&serial[..], &algorithm, &issuer, &validity, &name, &spki]);
        let tbs = tlv(TAG_SEQUENCE, &fields);
        tlv(TAG_SEQUENCE, &[&tbs, &algorithm, &tlv(0x03, &[&[0]])])
    }

    const OID_ORG: &[u8] = &[0x55, 0x04, 0x0a];

    #[test]
    fn subject_cn_reads_v1_certificates_and_multi_valued_rdns() {
        let cn = |v: &str| attribute(OID_COMMON_NAME, TAG_UTF8_STRING, v.as_bytes());
        let org = attribute(OID_ORG, TAG_UTF8_STRING, b"alice");
        let subject = [
            rdn(std::slice::from_ref(&org)),
            rdn(&[org.clone(), cn("alice")]),
        ];
        assert_eq!(
            subject_cn(&synthetic_cert(false, &subject)).as_deref(),
            Some("alice")
        );
        assert_eq!(
            subject_cn(&synthetic_cert(true, &subject)).as_deref(),
            Some("alice")
        );
        // The issuer's CN is never taken for the subject's.
        assert_eq!(subject_cn(&synthetic_cert(true, &[rdn(&[org])])), None);
        // Several CNs, in one RDN or in several: the last.
        let multi = [rdn(&[cn("bob"), cn("alice")])];
        assert_eq!(
            subject_cn(&synthetic_cert(true, &multi)).as_deref(),
            Some("alice")
        );
        let separate = [rdn(&[cn("bob")]), rdn(&[cn("alice")])];
        assert_eq!(
            subject_cn(&synthetic_cert(true, &separate)).as_deref(),
            Some("alice")
        );
    }

    #[test]
    fn subject_cn_handles_long_form_lengths() {
        for len in [127, 128, 255, 256, 1000] {
            let name = "a".repeat(len);
            let subject = [rdn(&[attribute(
                OID_COMMON_NAME,
                TAG_UTF8_STRING,
                name.as_bytes(),
            )])];
            assert_eq!(subject_cn(&synthetic_cert(true, &subject)), Some(name));
        }
    }

    #[test]
    fn subject_cn_refuses_unreadable_last_cn() {
        let good = attribute(OID_COMMON_NAME, TAG_UTF8_STRING, b"alice");
        for bad in [
            attribute(OID_COMMON_NAME, TAG_UTF8_STRING, b"al\xffce"),
            attribute(OID_COMMON_NAME, 0x04, b"alice"), // OCTET STRING
            attribute(OID_COMMON_NAME, TAG_PRINTABLE_STRING, b"al\xe9ce"),
            attribute(OID_COMMON_NAME, TAG_BMP_STRING, b"\x00a\x00"), // odd length
            attribute(OID_COMMON_NAME, TAG_BMP_STRING, b"\xd8\x00\x00a"), // lone surrogate
            attribute(OID_COMMON_NAME, TAG_UNIVERSAL_STRING, b"\x00\x11\x00\x00"), // > U+10FFFF
        ] {
            let subject = [rdn(std::slice::from_ref(&good)), rdn(&[bad])];
            assert_eq!(subject_cn(&synthetic_cert(true, &subject)), None);
        }
        let teletex = attribute(OID_COMMON_NAME, TAG_TELETEX_STRING, b"Zo\xeb");
        let subject = [rdn(&[teletex])];
        assert_eq!(
            subject_cn(&synthetic_cert(true, &subject)).as_deref(),
            Some("Zoë")
        );
    }

    #[test]
    fn subject_cn_refuses_malformed_der() {
        let cert = cert_for("alice");
        assert_eq!(subject_cn(&cert).as_deref(), Some("alice"));
        // Every truncation, and trailing bytes.
        for end in 0..cert.len() {
            assert_eq!(subject_cn(&cert[..end]), None, "truncated at {end}");
        }
        let mut trailing = cert.clone();
        trailing.push(0);
        assert_eq!(subject_cn(&trailing), None);
        // Indefinite length, over-long length field, high-number tag.
        for bad in [
            &[0x30, 0x80, 0x00, 0x00][..],
            &[0x30, 0x85, 0, 0, 0, 0, 1, 0],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x1f, 0x01, 0x00],
            &[],
        ] {
            assert_eq!(subject_cn(bad), None, "{bad:?}");
        }
        // Corrupting any byte must never panic (the answer may be Some or None).
        for i in 0..cert.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut corrupt = cert.clone();
                corrupt[i] ^= flip;
                let _ = subject_cn(&corrupt);
            }
        }
    }
}
