//! Base URL lock: rendered request paths may only go below a configured
//! base URL. A template (or a value substituted into it) cannot change the
//! scheme, host or port, nor climb above the base path.

use url::Url;

/// Checks that `path` is a plain relative path starting with one `/`.
/// Returns the reason it is not.
pub fn check_relative_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("path must start with `/`".into());
    }
    if path.contains("//") {
        return Err("path must not contain `//` (an authority or empty segment)".into());
    }
    if path.contains("://") || path.contains('\\') {
        return Err("path must not be an absolute URL".into());
    }
    if let Some(c) = path
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '?' | '#'))
    {
        return Err(format!(
            "path must not contain {c:?} (use `query:` for query parameters)"
        ));
    }
    for segment in path.split('/') {
        let decoded = segment.replace("%2e", ".").replace("%2E", ".");
        if decoded == ".." || decoded == "." {
            return Err("path must not contain `.` or `..` segments".into());
        }
    }
    Ok(())
}

/// Joins a rendered path to `base` and verifies the result stays below it.
pub fn join_locked(base: &Url, rendered: &str) -> Result<Url, String> {
    check_relative_path(rendered)?;
    let url = base
        .join(&rendered[1..])
        .map_err(|e| format!("cannot join path to base URL: {e}"))?;
    if url.scheme() != base.scheme()
        || url.host_str() != base.host_str()
        || url.port_or_known_default() != base.port_or_known_default()
    {
        return Err("scheme, host or port would change".into());
    }
    if !url.path().starts_with(base.path()) {
        return Err("path would leave the base path".into());
    }
    Ok(url)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a
/// value substituted into a path stays inside one segment.
pub(crate) fn encode_segment(value: &str, out: &mut String) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xF)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://127.0.0.1:8080/api/").unwrap()
    }

    #[test]
    fn plain_paths_join_below_base() {
        let u = join_locked(&base(), "/orders/o-1/charge").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:8080/api/orders/o-1/charge");
        let u = join_locked(&base(), "/a%2F..%2Fb").unwrap();
        assert_eq!(u.path(), "/api/a%2F..%2Fb");
    }

    #[test]
    fn escapes_are_rejected() {
        for bad in [
            "http://evil.example/x",
            "https://evil.example/",
            "//evil.example/x",
            "/a//evil.example",
            "/../admin",
            "/a/../../admin",
            "/%2e%2e/admin",
            "/a/%2E%2E",
            "/./x",
            "\\\\evil.example\\x",
            "/x\r\nHost: evil",
            "/x?redirect=http://evil",
            "/x#frag",
            "evil.example/x",
            "",
        ] {
            assert!(
                join_locked(&base(), bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn encode_segment_keeps_values_in_one_segment() {
        let mut s = String::new();
        encode_segment("a/b?c d", &mut s);
        assert_eq!(s, "a%2Fb%3Fc%20d");
    }
}
