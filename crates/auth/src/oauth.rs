//! What the OAuth 2.0 endpoints share — RFC 7662 introspection on edges and
//! RFC 7009 revocation on servers: the JSON error answer of RFC 6749 §5.2
//! and reading the one `token` parameter of a form body.

use axum::extract::{Form, FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An RFC 6749 §5.2 error: `{"error", "error_description"}`, not cached.
pub fn error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description });
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

/// A `temporarily_unavailable` answer (503) asking to retry in a second.
pub fn unavailable(description: &str) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        description,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    r
}

/// A JSON answer, not cached.
pub fn answer(body: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

/// The `token` parameter of an `application/x-www-form-urlencoded` body
/// (a `token_type_hint` is ignored: veto has one kind of token). Anything
/// else — another body, no token, an empty or repeated one (RFC 6749 §3.1)
/// — is the 400 `invalid_request` answer to send back.
pub async fn token_param(req: Request) -> Result<String, Response> {
    let bad = |why: &str| error(StatusCode::BAD_REQUEST, "invalid_request", why);
    let Ok(Form(pairs)) = Form::<Vec<(String, String)>>::from_request(req, &()).await else {
        return Err(bad("the body must be application/x-www-form-urlencoded"));
    };
    let mut tokens = pairs
        .into_iter()
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v);
    match (tokens.next(), tokens.next()) {
        (_, Some(_)) => Err(bad("the token parameter must not repeat")),
        (Some(t), None) if !t.is_empty() => Ok(t),
        _ => Err(bad("the token parameter is required")),
    }
}
