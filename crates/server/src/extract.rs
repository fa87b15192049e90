//! `Json`, `Query`, `Path` and `Multipart` extractors whose rejections render as
//! [`ApiError`]s, so malformed input gets the same clear 4xx body as every other error.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::ApiError;

pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Serde would also build a struct from an array of its fields in order: every body
        // of this API is an object, so anything else is refused first.
        let axum::Json(object) = axum::Json::<Map<String, Value>>::from_request(req, state).await?;
        let mut body = Value::Object(object);
        whole_numbers_as_integers(&mut body);
        serde_json::from_value(body).map(Json).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_json",
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })
    }
}

/// JSON, and JSON Schema with it, has no integer type apart from numbers: `512.0` is the
/// integer 512 (as a Python client computing a size sends it), where serde wants `512`.
/// Float fields take integers as they are.
fn whole_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
                let whole = if f < 0.0 {
                    i64::try_from(f as i128).ok().map(serde_json::Number::from)
                } else {
                    u64::try_from(f as i128).ok().map(serde_json::Number::from)
                };
                if let Some(whole) = whole {
                    *n = whole;
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        Value::String(_) | Value::Bool(_) | Value::Null => {}
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

pub struct Multipart(pub axum::extract::Multipart);

impl<S: Send + Sync> FromRequest<S> for Multipart {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let form = axum::extract::Multipart::from_request(req, state).await?;
        Ok(Multipart(form))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_floats_become_integers_and_nothing_else_changes() {
        let mut v = json!({"a": 512.0, "b": [-3.0, 0.5, 1e300, 18446744073709551615.0], "c": "1.0", "d": 7});
        whole_numbers_as_integers(&mut v);
        assert_eq!(
            v,
            json!({"a": 512, "b": [-3, 0.5, 1e300, 18446744073709551615.0], "c": "1.0", "d": 7})
        );
        assert!(v["a"].is_u64() && v["b"][0].is_i64() && v["b"][2].is_f64());
    }
}
