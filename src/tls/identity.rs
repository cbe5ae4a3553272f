//! The identity of a verified client certificate (mTLS): its subject common name and its
//! subject alternative names, read from the certificate's DER.
//!
//! Only certificates rustls has already verified against `client_ca_file` reach this reader,
//! so it needs no more of X.509 than the path to two fields; it still checks every length
//! against its container and returns `None` on anything it does not expect, never panics.
//!
//! The identity's subject (what routes, quotas and the access log see) is the first of: a
//! URI SAN (e.g. a SPIFFE id), a DNS SAN, an e-mail SAN, the subject's CN.

/// What a client certificate says about its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common name (2.5.4.3), when it is a string.
    pub common_name: Option<String>,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
}

impl PeerIdentity {
    /// The subject (see the module docs); `None`: the certificate names nobody.
    pub fn subject(&self) -> Option<&str> {
        self.uris
            .first()
            .or(self.dns.first())
            .or(self.emails.first())
            .or(self.common_name.as_ref())
            .map(String::as_str)
    }

    /// Reads a DER certificate; `None`: not the shape of an X.509 v3 certificate.
    pub fn from_der(der: &[u8]) -> Option<PeerIdentity> {
        let (cert, _) = take(der, SEQUENCE)?;
        let (tbs, _) = take(cert, SEQUENCE)?;
        let mut rest = tbs;
        // [0] EXPLICIT version, optional.
        if rest.first() == Some(&0xa0) {
            rest = take(rest, 0xa0)?.1;
        }
        rest = take(rest, INTEGER)?.1; // serialNumber
        rest = take(rest, SEQUENCE)?.1; // signature algorithm
        rest = take(rest, SEQUENCE)?.1; // issuer
        rest = take(rest, SEQUENCE)?.1; // validity
        let (subject, after) = take(rest, SEQUENCE)?;
        rest = take(after, SEQUENCE)?.1; // subjectPublicKeyInfo
        let mut id = PeerIdentity {
            common_name: common_name(subject),
            ..PeerIdentity::default()
        };
        // [1] issuerUniqueID, [2] subjectUniqueID (implicit, optional), then [3] extensions.
        while let Some(&tag) = rest.first() {
            let (body, after) = take(rest, tag)?;
            if tag == 0xa3 {
                let (exts, _) = take(body, SEQUENCE)?;
                read_extensions(exts, &mut id)?;
            }
            rest = after;
        }
        Some(id)
    }
}

const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const BOOLEAN: u8 = 0x01;

/// 2.5.4.3 (id-at-commonName).
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// 2.5.29.17 (id-ce-subjectAltName).
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];

/// The content of the element at the front of `der` if its tag is `tag`, and what follows it.
fn take(der: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = der.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: 1..=4 length bytes (a certificate is far below 4 GiB).
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The element at the front of `der` whatever its tag: (tag, content, rest).
fn any(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *der.first()?;
    let (body, rest) = take(der, tag)?;
    Some((tag, body, rest))
}

/// The first CN of a Name (SEQUENCE OF SET OF AttributeTypeAndValue).
fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (rdn, rest) = take(name, SET)?;
        name = rest;
        let mut atvs = rdn;
        while !atvs.is_empty() {
            let (atv, rest) = take(atvs, SEQUENCE)?;
            atvs = rest;
            let (oid, value) = take(atv, OID)?;
            if oid != OID_CN {
                continue;
            }
            let (tag, body, _) = any(value)?;
            // UTF8String, PrintableString, IA5String, TeletexString (taken as Latin-1-ish
            // ASCII: refused unless it is ASCII).
            return match tag {
                0x0c | 0x13 | 0x16 | 0x14 => text(body),
                _ => None,
            };
        }
    }
    None
}

/// Printable, control-free text (it may become a header value or a log field).
fn text(body: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(body).ok()?;
    (!s.is_empty() && !s.chars().any(char::is_control)).then(|| s.to_owned())
}

fn read_extensions(mut exts: &[u8], id: &mut PeerIdentity) -> Option<()> {
    while !exts.is_empty() {
        let (ext, rest) = take(exts, SEQUENCE)?;
        exts = rest;
        let (oid, mut body) = take(ext, OID)?;
        if body.first() == Some(&BOOLEAN) {
            body = take(body, BOOLEAN)?.1; // critical
        }
        if oid != OID_SAN {
            continue;
        }
        let (value, _) = take(body, OCTET_STRING)?;
        let (mut names, _) = take(value, SEQUENCE)?;
        while !names.is_empty() {
            let (tag, name, rest) = any(names)?;
            names = rest;
            let list = match tag {
                0x81 => &mut id.emails,
                0x82 => &mut id.dns,
                0x86 => &mut id.uris,
                _ => continue,
            };
            if let Some(s) = text(name) {
                list.push(s);
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "shardgate tests");
        if let Some(cn) = cn {
            dn.push(DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn ia5(s: &str) -> rcgen::Ia5String {
        s.try_into().unwrap()
    }

    /// Which name becomes the subject, over every mix of name kinds.
    #[test]
    fn the_subject_is_the_first_uri_then_dns_then_email_then_cn() {
        let uri = || SanType::URI(ia5("spiffe://prod/svc/batch"));
        let dns = || SanType::DnsName(ia5("batch.internal"));
        let email = || SanType::Rfc822Name(ia5("ops@example.com"));
        let ip = || SanType::IpAddress("10.0.0.1".parse().unwrap());
        let cases: Vec<(Option<&str>, Vec<SanType>, Option<&str>)> = vec![
            (Some("batch"), vec![], Some("batch")),
            (None, vec![], None),
            (Some("batch"), vec![dns()], Some("batch.internal")),
            (Some("batch"), vec![email(), dns()], Some("batch.internal")),
            (
                Some("batch"),
                vec![dns(), uri()],
                Some("spiffe://prod/svc/batch"),
            ),
            (None, vec![email()], Some("ops@example.com")),
            (Some("batch"), vec![ip()], Some("batch")),
            (None, vec![ip()], None),
        ];
        for (cn, sans, want) in cases {
            let der = cert(cn, sans.clone());
            let id = PeerIdentity::from_der(&der).expect("parses");
            assert_eq!(id.subject(), want, "cn {cn:?}, sans {sans:?}");
            assert_eq!(id.common_name.as_deref(), cn);
        }
    }

    #[test]
    fn every_san_is_listed_in_order() {
        let der = cert(
            Some("x"),
            vec![
                SanType::DnsName(ia5("a.internal")),
                SanType::DnsName(ia5("b.internal")),
                SanType::URI(ia5("spiffe://t/a")),
                SanType::Rfc822Name(ia5("a@t")),
            ],
        );
        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(id.dns, ["a.internal", "b.internal"]);
        assert_eq!(id.uris, ["spiffe://t/a"]);
        assert_eq!(id.emails, ["a@t"]);
    }

    /// Truncated or corrupted DER never panics; truncation is always refused.
    #[test]
    fn damaged_der_is_refused_without_panicking() {
        let der = cert(Some("batch"), vec![SanType::DnsName(ia5("b.internal"))]);
        for n in 0..der.len() {
            assert!(
                PeerIdentity::from_der(&der[..n]).is_none(),
                "first {n} bytes"
            );
        }
        for i in 0..der.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = der.clone();
                bad[i] ^= flip;
                let _ = PeerIdentity::from_der(&bad);
            }
        }
        assert!(PeerIdentity::from_der(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(PeerIdentity::from_der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(PeerIdentity::from_der(&[]).is_none());
    }
}
