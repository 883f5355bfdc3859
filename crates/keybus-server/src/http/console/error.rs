//! Why a console request failed, with its one mapping to a status code; the body is a small
//! HTML fragment htmx shows in place (`HX-Retarget` to the page's message area).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum ConsoleError {
    /// No session, or it ended.
    #[error("sign in first: {0}")]
    SignInRequired(String),
    /// The credential was refused.
    #[error("sign-in refused: {0}")]
    SignInRefused(String),
    /// A POST without the session's CSRF header (or from another origin).
    #[error("refused: {0}")]
    Csrf(String),
    /// The access decision said no.
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The store cannot take the change now.
    #[error("{0}")]
    Unavailable(String),
}

impl ConsoleError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::SignInRequired(_) | Self::SignInRefused(_) => StatusCode::UNAUTHORIZED,
            Self::Csrf(_) | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let body = maud::html! {
            p.error role="alert" { (self.to_string()) }
        };
        let mut resp = (
            self.status(),
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body.into_string(),
        )
            .into_response();
        // htmx swaps error answers too, into the page's message area.
        let h = resp.headers_mut();
        h.insert("HX-Retarget", HeaderValue::from_static("#messages"));
        h.insert("HX-Reswap", HeaderValue::from_static("innerHTML"));
        resp
    }
}
