//! HTTP authentication for camera URLs: Basic (RFC 7617) and Digest
//! (RFC 7616: MD5 and SHA-256, their `-sess` forms, `qop=auth` or none),
//! the two that IP cameras and NVRs ask for.
//!
//! Challenge-driven: the first request goes without credentials, the
//! server's `WWW-Authenticate` says what it wants, and the strongest
//! offered scheme is used from then on (Digest SHA-256, Digest MD5, Basic).
//! A Digest challenge is kept and reused with an increasing nonce count, so
//! polling a snapshot once a second costs one request, not two.

use md5::Md5;
use sha2::{Digest as _, Sha256};

/// A username and password (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <password>)", self.username)
    }
}

/// The hash of a Digest challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

/// What a server asked for, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Digest {
        realm: String,
        nonce: String,
        opaque: Option<String>,
        algorithm: Algorithm,
        session: bool,
        /// `qop=auth` offered (else the RFC 2069 form).
        qop_auth: bool,
    },
    Basic,
}

impl Challenge {
    /// The strongest challenge blipd can answer among the `WWW-Authenticate`
    /// header values, or why none can be answered.
    pub fn pick<'a>(headers: impl IntoIterator<Item = &'a str>) -> Result<Challenge, String> {
        let mut best: Option<(u8, Challenge)> = None;
        let mut seen = Vec::new();
        for value in headers {
            for (scheme, params) in parse(value) {
                seen.push(scheme.clone());
                let candidate = match scheme.to_ascii_lowercase().as_str() {
                    "basic" => Some((1, Challenge::Basic)),
                    "digest" => digest(&params),
                    _ => None,
                };
                if let Some((rank, c)) = candidate {
                    if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                        best = Some((rank, c));
                    }
                }
            }
        }
        best.map(|(_, c)| c).ok_or_else(|| {
            format!(
                "the camera asks for authentication blipd does not speak ({}); Basic and Digest \
                 (MD5, SHA-256) are supported",
                if seen.is_empty() {
                    "no WWW-Authenticate header".to_string()
                } else {
                    seen.join(", ")
                }
            )
        })
    }

    /// The `Authorization` header for a GET of `uri` (the request target,
    /// path and query), the `nc`-th use of this challenge.
    pub fn authorization(&self, who: &Credentials, uri: &str, nc: u32, cnonce: &str) -> String {
        use base64::Engine as _;
        match self {
            Challenge::Basic => {
                let pair = format!("{}:{}", who.username, who.password);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Challenge::Digest {
                realm,
                nonce,
                opaque,
                algorithm,
                session,
                qop_auth,
            } => {
                let h = |s: &str| hash(*algorithm, s);
                let mut ha1 = h(&format!("{}:{realm}:{}", who.username, who.password));
                if *session {
                    ha1 = h(&format!("{ha1}:{nonce}:{cnonce}"));
                }
                let ha2 = h(&format!("GET:{uri}"));
                let nc = format!("{nc:08x}");
                let response = if *qop_auth {
                    h(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
                } else {
                    h(&format!("{ha1}:{nonce}:{ha2}"))
                };
                let name = match (algorithm, session) {
                    (Algorithm::Md5, false) => "MD5",
                    (Algorithm::Md5, true) => "MD5-sess",
                    (Algorithm::Sha256, false) => "SHA-256",
                    (Algorithm::Sha256, true) => "SHA-256-sess",
                };
                let mut out = format!(
                    "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
                     algorithm={name}, response=\"{response}\"",
                    quote(&who.username)
                );
                if *qop_auth {
                    out.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
                }
                if let Some(o) = opaque {
                    out.push_str(&format!(", opaque=\"{o}\""));
                }
                out
            }
        }
    }

    /// Is this a Digest challenge marked `stale` (the nonce expired, the
    /// credentials were fine)?
    pub fn is_stale<'a>(headers: impl IntoIterator<Item = &'a str>) -> bool {
        headers.into_iter().any(|v| {
            parse(v).iter().any(|(_, p)| {
                p.iter()
                    .any(|(k, v)| k.eq_ignore_ascii_case("stale") && v.eq_ignore_ascii_case("true"))
            })
        })
    }
}

fn digest(params: &[(String, String)]) -> Option<(u8, Challenge)> {
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    let (algorithm, session, rank) = match get("algorithm")
        .unwrap_or_else(|| "MD5".into())
        .to_ascii_uppercase()
        .as_str()
    {
        "MD5" => (Algorithm::Md5, false, 2),
        "MD5-SESS" => (Algorithm::Md5, true, 2),
        "SHA-256" => (Algorithm::Sha256, false, 3),
        "SHA-256-SESS" => (Algorithm::Sha256, true, 3),
        _ => return None,
    };
    let qop = get("qop");
    let qop_auth = qop
        .as_deref()
        .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")));
    // Only auth-int offered: it would need the (empty) body hashed; refuse
    // rather than guess.
    if qop.is_some() && !qop_auth {
        return None;
    }
    Some((
        rank,
        Challenge::Digest {
            realm: get("realm")?,
            nonce: get("nonce")?,
            opaque: get("opaque"),
            algorithm,
            session,
            qop_auth,
        },
    ))
}

fn hash(a: Algorithm, s: &str) -> String {
    let bytes: Vec<u8> = match a {
        Algorithm::Md5 => Md5::digest(s.as_bytes()).to_vec(),
        Algorithm::Sha256 => Sha256::digest(s.as_bytes()).to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The challenges of one `WWW-Authenticate` value: `Scheme k=v, k="v", ...`,
/// possibly several schemes in one value (`Basic realm="a", Digest ...`).
fn parse(value: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let b = value.as_bytes();
    let mut i = 0;
    let skip = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && !matches!(b[*i], b' ' | b'\t' | b',' | b'=') {
            *i += 1;
        }
        String::from_utf8_lossy(&b[start..*i]).into_owned()
    };
    while i < b.len() {
        skip(&mut i);
        let name = token(&mut i);
        if name.is_empty() {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            // A parameter of the current challenge.
            i = j + 1;
            while i < b.len() && b[i] == b' ' {
                i += 1;
            }
            let v = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut v = Vec::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                i += 1;
                String::from_utf8_lossy(&v).into_owned()
            } else {
                token(&mut i)
            };
            // token68 (`Basic abc==`) has trailing '='; harmless here.
            if let Some((_, params)) = out.last_mut() {
                params.push((name, v));
            }
        } else {
            out.push((name, Vec::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mufasa() -> Credentials {
        Credentials {
            username: "Mufasa".into(),
            password: "Circle of Life".into(),
        }
    }

    /// RFC 7616 section 3.9.1: the published MD5 and SHA-256 responses.
    #[test]
    fn digest_matches_the_rfc_7616_examples() {
        const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (alg, want) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let header = format!(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", \
                 algorithm={alg}, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            );
            let c = Challenge::pick([header.as_str()]).unwrap();
            let a = c.authorization(&mufasa(), "/dir/index.html", 1, CNONCE);
            assert!(a.contains(&format!("response=\"{want}\"")), "{alg}: {a}");
            assert!(a.contains("nc=00000001") && a.contains("qop=auth,"), "{a}");
            assert!(a.contains("opaque=\"FQhe/"), "{a}");
        }
    }

    #[test]
    fn the_strongest_offered_scheme_is_picked() {
        let two = [
            "Basic realm=\"cam\"",
            "Digest realm=\"cam\", nonce=\"n\", qop=\"auth\", algorithm=MD5",
            "Digest realm=\"cam\", nonce=\"n\", qop=\"auth\", algorithm=SHA-256",
        ];
        let c = Challenge::pick(two).unwrap();
        assert!(matches!(
            c,
            Challenge::Digest {
                algorithm: Algorithm::Sha256,
                ..
            }
        ));
        let one = ["Basic realm=\"x\", Digest realm=\"y\", nonce=\"z\""];
        assert!(matches!(
            Challenge::pick(one).unwrap(),
            Challenge::Digest {
                qop_auth: false,
                ..
            }
        ));
        let basic = Challenge::pick(["Basic realm=\"x\""]).unwrap();
        assert_eq!(
            basic.authorization(&mufasa(), "/", 1, "c"),
            "Basic TXVmYXNhOkNpcmNsZSBvZiBMaWZl"
        );
        assert!(Challenge::pick(["Bearer realm=\"x\""]).is_err());
        assert!(Challenge::pick(["Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\""]).is_err());
        assert!(Challenge::pick([]).is_err());
        assert!(Challenge::is_stale([
            "Digest realm=\"x\", nonce=\"n\", stale=TRUE"
        ]));
    }

    #[test]
    fn hostile_headers_are_refused_or_read_safely() {
        for h in [
            "",
            "=",
            "Digest =",
            "Digest realm=\"unterminated",
            "Digest realm=\"a\\",
            ",,,",
        ] {
            assert!(Challenge::pick([h]).is_err(), "{h:?}");
        }
        // Non-ASCII inside quotes is kept as text; an unquoted nonce is a token.
        match Challenge::pick(["Digest realm=\"\u{e9}\", nonce=x"]).unwrap() {
            Challenge::Digest { realm, nonce, .. } => {
                assert_eq!((realm.as_str(), nonce.as_str()), ("\u{e9}", "x"))
            }
            c => panic!("{c:?}"),
        }
    }
}
