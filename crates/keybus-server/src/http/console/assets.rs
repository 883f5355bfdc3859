//! The console's static files, embedded in the binary: htmx (vendored, see
//! `assets/htmx.min.js.VERSION` for its version and SHA-256), the console's own script and
//! its style sheet. No CDN, no build step.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const HTMX: &[u8] = include_bytes!("assets/htmx.min.js");
const SCRIPT: &[u8] = include_bytes!("assets/console.js");
const STYLE: &[u8] = include_bytes!("assets/console.css");

/// A static file by name, and its content type.
fn file(name: &str) -> Option<(&'static [u8], &'static str)> {
    match name {
        "htmx.min.js" => Some((HTMX, "text/javascript; charset=utf-8")),
        "console.js" => Some((SCRIPT, "text/javascript; charset=utf-8")),
        "console.css" => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// `GET /console/static/{file}`.
pub(super) async fn serve(Path(name): Path<String>) -> Response {
    match file(&name) {
        Some((bytes, ctype)) => {
            let mut r = (StatusCode::OK, [(header::CONTENT_TYPE, ctype)], bytes).into_response();
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=300"),
            );
            r
        }
        None => (StatusCode::NOT_FOUND, "no such console file\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_are_embedded() {
        assert!(file("htmx.min.js").is_some_and(|(b, _)| b.len() > 10_000));
        assert!(file("console.js").is_some_and(|(b, _)| !b.is_empty()));
        assert!(file("../mod.rs").is_none());
    }
}
