//! The two facts `tinyedge check` needs from an X.509 certificate — its validity period and
//! its subject's common name — read straight from the DER (pure).
//!
//! A certificate is `SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
//! signature, issuer, validity SEQUENCE { notBefore, notAfter }, subject, … }, … }` (RFC 5280
//! §4.1); times are UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
//! (`YYYYMMDDHHMMSSZ`). Walking those few fields is some 100 lines; a general X.509 parser
//! (`x509-parser`, which is in Cargo.lock only as an optional dependency of rcgen, not built)
//! would add a dozen crates for them. Signatures and chains are checked elsewhere, by webpki
//! through rustls.

/// Tags of the DER elements read here.
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_VERSION: u8 = 0xA0;
const TAG_OID: u8 = 0x06;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
/// The OID 2.5.4.3 (commonName), DER-encoded.
const OID_COMMON_NAME: [u8; 3] = [0x55, 0x04, 0x03];
/// Lengths beyond 4 bytes would describe elements of gigabytes: not a certificate.
const LENGTH_BYTES_MAX: usize = 4;

/// What `tinyedge check` reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Unix seconds: valid from.
    pub not_before: i64,
    /// Unix seconds: valid until (inclusive, as RFC 5280 says).
    pub not_after: i64,
    /// The subject's common name, if it has one (UTF-8 or printable string).
    pub common_name: Option<String>,
}

/// Reads the validity period and subject CN of the DER certificate `der`.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, &'static str> {
    let (tag, certificate, _) = element(der)?;
    expect(tag, TAG_SEQUENCE, "not a certificate (no outer SEQUENCE)")?;
    let (tag, tbs, _) = element(certificate)?;
    expect(tag, TAG_SEQUENCE, "not a certificate (no tbsCertificate)")?;
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == TAG_VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer
    for _ in 0..3 {
        rest = element(rest)?.2;
    }
    let (tag, validity, after) = element(rest)?;
    expect(tag, TAG_SEQUENCE, "no validity SEQUENCE")?;
    let (tag, not_before, times) = element(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = element(times)?;
    let not_after = time(tag, not_after)?;
    let (tag, subject, _) = element(after)?;
    expect(tag, TAG_SEQUENCE, "no subject")?;
    Ok(CertInfo { not_before, not_after, common_name: common_name(subject) })
}

fn expect(tag: u8, wanted: u8, error: &'static str) -> Result<(), &'static str> {
    if tag == wanted {
        Ok(())
    } else {
        Err(error)
    }
}

/// The first DER element of `input`: (tag, contents, what follows).
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), &'static str> {
    const TRUNCATED: &str = "truncated DER";
    let (&tag, rest) = input.split_first().ok_or(TRUNCATED)?;
    if tag & 0x1F == 0x1F {
        return Err("multi-byte DER tag");
    }
    let (&first, mut rest) = rest.split_first().ok_or(TRUNCATED)?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > LENGTH_BYTES_MAX {
            return Err("bad DER length");
        }
        let bytes = rest.get(..count).ok_or(TRUNCATED)?;
        rest = &rest[count..];
        bytes.iter().fold(0usize, |length, byte| (length << 8) | usize::from(*byte))
    };
    let contents = rest.get(..length).ok_or(TRUNCATED)?;
    Ok((tag, contents, &rest[length..]))
}

/// The first commonName value of a Name (`SEQUENCE OF SET OF SEQUENCE { OID, value }`).
fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (tag, set, rest) = element(name).ok()?;
        name = rest;
        if tag != TAG_SET {
            return None;
        }
        let (_, attribute, _) = element(set).ok()?;
        let (tag, oid, value) = element(attribute).ok()?;
        if tag == TAG_OID && oid == OID_COMMON_NAME {
            let (_, text, _) = element(value).ok()?;
            return std::str::from_utf8(text).ok().map(str::to_owned);
        }
    }
    None
}

/// Unix seconds of a UTCTime or GeneralizedTime in DER's form (UTC, `Z`, with seconds).
fn time(tag: u8, text: &[u8]) -> Result<i64, &'static str> {
    const BAD: &str = "bad certificate time";
    let digits = text.strip_suffix(b"Z").ok_or(BAD)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(BAD);
    }
    let number = |range: std::ops::Range<usize>| -> i64 {
        digits[range].iter().fold(0, |n, digit| n * 10 + i64::from(digit - b'0'))
    };
    let (year, rest) = match (tag, digits.len()) {
        (TAG_UTC_TIME, 12) => {
            let yy = number(0..2);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (TAG_GENERALIZED_TIME, 14) => (number(0..4), 4),
        _ => return Err(BAD),
    };
    let field = |index: usize| number(rest + 2 * index..rest + 2 * index + 2);
    let (month, day, hour, minute, second) = (field(0), field(1), field(2), field(3), field(4));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(BAD);
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's `days_from_civil`, the
/// inverse of `tinyedge_platform::utc::civil_from_days`).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element with a short or long length.
    fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match contents.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(contents);
        out
    }

    /// A certificate skeleton with the given validity times and subject CN (the signature
    /// fields are placeholders: only the structure matters here).
    fn certificate(not_before: Vec<u8>, not_after: Vec<u8>, cn: &str) -> Vec<u8> {
        let version = der(TAG_VERSION, &der(0x02, &[2]));
        let serial = der(0x02, &[1]);
        let algorithm = der(TAG_SEQUENCE, &der(TAG_OID, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02]));
        let rdn = |oid: &[u8], value: &str| {
            let mut attribute = der(TAG_OID, oid);
            attribute.extend(der(0x0C, value.as_bytes()));
            der(TAG_SET, &der(TAG_SEQUENCE, &attribute))
        };
        let issuer = der(TAG_SEQUENCE, &rdn(&OID_COMMON_NAME, "issuer"));
        let mut validity = not_before;
        validity.extend(not_after);
        let mut subject_rdns = rdn(&[0x55, 0x04, 0x0A], "org");
        subject_rdns.extend(rdn(&OID_COMMON_NAME, cn));
        let mut tbs = Vec::new();
        for part in
            [version, serial, algorithm.clone(), issuer, der(TAG_SEQUENCE, &validity), der(TAG_SEQUENCE, &subject_rdns)]
        {
            tbs.extend(part);
        }
        tbs.extend(vec![0x30; 200]); // stands for the key and extensions (forces long lengths)
        let mut cert = der(TAG_SEQUENCE, &tbs);
        cert.extend(algorithm);
        cert.extend(der(0x03, &[0, 1, 2, 3]));
        der(TAG_SEQUENCE, &cert)
    }

    #[test]
    fn days_from_civil_inverts_the_platforms_civil_from_days() {
        for days in [-719_162, -1, 0, 59, 60, 11_016, 19_722, 20_784, 2_932_896] {
            let (y, m, d) = tinyedge_platform::utc::civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn validity_and_common_name_are_read() {
        let cert =
            certificate(der(TAG_UTC_TIME, b"261130000000Z"), der(TAG_GENERALIZED_TIME, b"20361128235959Z"), "gw.local");
        let info = cert_info(&cert).expect("parses");
        // python3: datetime(2026,11,30,tzinfo=utc).timestamp() and datetime(2036,11,28,23,59,59,…)
        assert_eq!(info.not_before, 1_795_996_800);
        assert_eq!(info.not_after, 2_111_529_599);
        assert_eq!(info.common_name.as_deref(), Some("gw.local"));
    }

    #[test]
    fn utc_time_years_wrap_at_1950() {
        assert_eq!(time(TAG_UTC_TIME, b"500101000000Z"), Ok(-631_152_000));
        assert_eq!(time(TAG_UTC_TIME, b"491231235959Z"), Ok(2_524_607_999));
    }

    #[test]
    fn malformed_input_is_an_error_never_a_panic() {
        let good = certificate(der(TAG_UTC_TIME, b"261130000000Z"), der(TAG_UTC_TIME, b"271130000000Z"), "x");
        for cut in 0..good.len() {
            assert!(cert_info(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = good.clone();
        for index in 0..flipped.len() {
            flipped[index] ^= 0xFF;
            let _ = cert_info(&flipped);
            flipped[index] ^= 0xFF;
        }
        assert!(time(TAG_UTC_TIME, b"2611300000Z").is_err());
        assert!(time(TAG_UTC_TIME, b"261330000000Z").is_err());
        assert!(time(TAG_GENERALIZED_TIME, b"261130000000Z").is_err());
        assert!(time(TAG_UTC_TIME, b"26113000000aZ").is_err());
        assert!(time(TAG_UTC_TIME, b"261130000000").is_err());
    }
}
