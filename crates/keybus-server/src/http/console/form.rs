//! Decoding of the console's form posts (`application/x-www-form-urlencoded`), where a key
//! may repeat (the selected sequence numbers of a redrive).

/// The fields of a form body, in order.
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    pub(super) fn parse(body: &[u8]) -> Form {
        Form(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`, trimmed; `None` when absent or empty.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// The first value of `key` as it was sent (a body keeps its spaces).
    pub(super) fn raw(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub(super) fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The query's value of `key`.
pub(super) fn query(uri: &axum::http::Uri, key: &str) -> Option<String> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_and_trimming() {
        let f = Form::parse(b"seq=1&seq=2&name=+a+&body=+x+&empty=");
        assert_eq!(f.all("seq").collect::<Vec<_>>(), vec!["1", "2"]);
        assert_eq!(f.get("name"), Some("a"));
        assert_eq!(f.raw("body"), Some(" x "));
        assert_eq!(f.get("empty"), None);
        assert_eq!(f.get("missing"), None);
    }
}
