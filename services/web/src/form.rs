//! Reading what browsers send: `application/x-www-form-urlencoded` bodies and the `Cookie`
//! header. Both come in bounded (the server caps bodies and headers first).

/// `text` percent-encoded for a header parameter (RFC 8187's `attr-char` kept as is), as
/// `filename*=UTF-8''…` needs it.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A decoded form: its fields in order (a repeated name keeps its first value).
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Decodes a form body; an error names what is wrong.
    pub fn parse(body: &[u8]) -> Result<Form, String> {
        let mut fields = Vec::new();
        for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let mut kv = pair.splitn(2, |&b| b == b'=');
            let k = decode(kv.next().unwrap_or_default())?;
            let v = decode(kv.next().unwrap_or_default())?;
            if fields.len() >= FIELDS_MAX {
                return Err(format!("more than {FIELDS_MAX} fields"));
            }
            fields.push((k, v));
        }
        Ok(Form(fields))
    }

    /// The value of `name`, empty if absent.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Percent-decoding with `+` as space; the result must be UTF-8.
fn decode(s: &[u8]) -> Result<String, String> {
    decode_with(s, true)
}

/// An address's path, percent-decoded (`+` stays itself, as in a path it is no space).
pub fn decode_path(path: &str) -> Result<String, String> {
    decode_with(path.as_bytes(), false)
}

fn decode_with(s: &[u8], plus_is_space: bool) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("a bad %-escape in the form")?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the form is not UTF-8".to_string())
}

/// The value of cookie `name` in a `Cookie` header's value.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// Most fields in one form (the largest, setup, has six).
pub const FIELDS_MAX: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_escapes_and_plus() {
        let f = Form::parse(b"name=my-plug&domain=&pass=a+b%26c%3D%E2%9C%93&name=second").unwrap();
        assert_eq!(f.get("name"), "my-plug");
        assert_eq!(f.get("domain"), "");
        assert_eq!(f.get("pass"), "a b&c=✓");
        assert_eq!(f.get("missing"), "");
        assert!(Form::parse(b"a=%zz").unwrap_err().contains("escape"));
        assert!(Form::parse(b"a=%4").is_err());
        assert!(Form::parse(b"a=%ff").unwrap_err().contains("UTF-8"));
        assert!(Form::parse("a=1&".repeat(40).as_bytes()).is_err());
    }

    proptest::proptest! {
        /// Whatever a browser (or anyone) sends, decoding answers and never panics.
        #[test]
        fn any_body_decodes_or_is_refused(data in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Ok(f) = Form::parse(&data) {
                proptest::prop_assert!(f.0.len() <= FIELDS_MAX);
            }
            let text = String::from_utf8_lossy(&data);
            let _ = cookie(&text, "cairn_session");
        }

        /// A value encoded as browsers do decodes to itself.
        #[test]
        fn encoded_values_round_trip(v in "\\PC{0,40}") {
            let encoded: String = v
                .bytes()
                .map(|b| match b {
                    b' ' => "+".to_string(),
                    b if b.is_ascii_alphanumeric() => (b as char).to_string(),
                    b => format!("%{b:02X}"),
                })
                .collect();
            let f = Form::parse(format!("a={encoded}&b=1").as_bytes()).unwrap();
            proptest::prop_assert_eq!(f.get("a"), v.as_str());
            proptest::prop_assert_eq!(f.get("b"), "1");
        }
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = "cairn_claim=abc; cairn_session=def;other=1";
        assert_eq!(cookie(h, "cairn_session"), Some("def"));
        assert_eq!(cookie(h, "other"), Some("1"));
        assert_eq!(cookie(h, "cairn"), None);
    }
}
