//! The page shell: head (the CSRF meta tag, htmx's configuration as a meta tag so that it
//! needs no inline script, the style sheet and the two scripts), the top bar with the
//! signed-in principal and the message area htmx writes answers and errors into.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::sessions::Session;

/// htmx's configuration: no `eval`, no inline indicator styles (the CSP refuses both), and
/// error answers are swapped too (into `#messages`, as `error.rs` retargets them).
const HTMX_CONFIG: &str = r#"{"allowEval":false,"allowScriptTags":false,"includeIndicatorStyles":false,"selfRequestsOnly":true,"responseHandling":[{"code":"204","swap":false},{"code":"[23]..","swap":true},{"code":"[45]..","swap":true,"error":true}]}"#;

/// A whole page titled `title` around `content`.
pub(super) fn page(title: &str, session: Option<&Session>, content: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keybus console" }
                @if let Some(s) = session {
                    meta name="keybus-csrf" content=(s.csrf);
                }
                meta name="htmx-config" content=(HTMX_CONFIG);
                link rel="stylesheet" href="/console/static/console.css";
                script src="/console/static/htmx.min.js" {}
                script src="/console/static/console.js" {}
            }
            body {
                header {
                    a href="/console/" { strong { "keybus console" } }
                    @if let Some(s) = session {
                        span.who { "signed in as " code { (s.principal.key) } }
                        button type="button" hx-post="/console/signout" { "Sign out" }
                    }
                }
                main {
                    div #messages aria-live="polite" {}
                    (content)
                }
            }
        }
    };
    html_response(markup)
}

/// An HTML answer (a page or a fragment).
pub(super) fn html_response(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A short confirmation fragment for the message area.
pub(super) fn notice(text: &str) -> Response {
    html_response(html! { p.ok role="status" { (text) } })
}
