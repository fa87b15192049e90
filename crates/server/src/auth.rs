//! The optional API token. With `api_token` set, every route but `/healthz` wants it: as
//! `Authorization: Bearer <token>`, or as the password of HTTP Basic auth (any user name),
//! which clients that take nothing but an endpoint URL, such as the `sandbox-fusion`
//! package, send for `http://cella:<token>@host:port`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

use crate::error::ApiError;

/// The token's name in the OpenAPI document.
const SCHEME: &str = "api_token";

/// Routes open without the token: liveness probes carry no credentials.
const OPEN: &[&str] = &["/healthz"];

pub async fn require(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    if OPEN.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let given = req.headers().get(header::AUTHORIZATION).map(presented);
    match given {
        Some(Some(given)) if same(given.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => refuse("the API token is wrong"),
        None => refuse(
            "this server wants its API token: `Authorization: Bearer <token>`, or the \
             password of an endpoint URL `http://user:<token>@host:port`",
        ),
    }
}

/// Refuses a token no client could send: empty, or with characters a header cannot carry
/// as they are.
pub fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("api_token is empty: give a token, or leave it out to serve without one");
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("api_token must be printable ASCII without spaces");
    }
    Ok(())
}

/// Declares the token in the OpenAPI document, as a bearer token every operation wants.
pub fn document(doc: &mut OpenApi) {
    let scheme = SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(SCHEME, scheme);
    doc.security = Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
}

/// The token an `Authorization` header presents, if it is one of the two accepted forms.
fn presented(value: &HeaderValue) -> Option<String> {
    let (scheme, credentials) = value.to_str().ok()?.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let pair = String::from_utf8(STANDARD.decode(credentials).ok()?).ok()?;
    pair.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// Equality whose time does not depend on where the two differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn refuse(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"cella\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn both_forms_present_the_token() {
        assert_eq!(
            presented(&header("Bearer s3cret")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            presented(&header("bearer  s3cret ")).as_deref(),
            Some("s3cret")
        );
        let basic = format!("Basic {}", STANDARD.encode("cella:s3:cret"));
        assert_eq!(presented(&header(&basic)).as_deref(), Some("s3:cret"));
        assert_eq!(presented(&header("Basic !!!")), None);
        assert_eq!(presented(&header("Digest s3cret")), None);
        assert_eq!(presented(&header("s3cret")), None);
    }

    #[test]
    fn a_token_must_be_sendable() {
        assert!(check_token("s3cret-_.~+/=").is_ok());
        for bad in ["", " ", "with space", "tab\t", "naïve"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn equal_only_when_every_byte_is() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3creT"));
        assert!(!same(b"s3cret", b"s3cre"));
        assert!(!same(b"", b"x"));
    }
}
