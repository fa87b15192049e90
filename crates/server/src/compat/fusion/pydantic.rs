//! Request validation with FastAPI/pydantic v2's error shape, so a SandboxFusion client sees
//! the same 422 body it would get from SandboxFusion:
//! `{"detail": [{"type", "loc", "msg", "input", "ctx"?, "url"}]}`.
//!
//! Lax mode, as pydantic's default: numbers accept numeric strings, integers accept floats
//! without a fractional part, optional fields accept `null`.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

const PYDANTIC_URL: &str = "https://errors.pydantic.dev/2.6/v/";

/// Collected validation errors of one request body.
#[derive(Default)]
pub struct Errors(Vec<Value>);

impl Errors {
    fn push(&mut self, kind: &str, loc: &[&str], msg: &str, input: &Value, ctx: Option<Value>) {
        let loc: Vec<Value> = std::iter::once(json!("body"))
            .chain(loc.iter().map(|l| json!(l)))
            .collect();
        let mut e = json!({ "type": kind, "loc": loc, "msg": msg, "input": input });
        if let Some(ctx) = ctx {
            e["ctx"] = ctx;
        }
        e["url"] = json!(format!("{PYDANTIC_URL}{kind}"));
        self.0.push(e);
    }

    pub fn push_at(&mut self, kind: &str, loc: &[&str], msg: &str, input: &Value) {
        self.push(kind, loc, msg, input, None);
    }

    /// The errors of a nested model, their locations under `field`.
    pub fn extend_under(&mut self, field: &str, inner: Errors) {
        for mut e in inner.0 {
            if let Some(loc) = e["loc"].as_array_mut() {
                loc.insert(1, json!(field));
            }
            self.0.push(e);
        }
    }

    pub fn into_result<T>(self, value: T) -> Result<T, Invalid> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// A request that failed validation: renders as FastAPI's 422.
pub struct Invalid(Vec<Value>);

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({ "detail": self.0 })),
        )
            .into_response()
    }
}

/// Parses a JSON object body, or answers 422 as FastAPI does.
pub fn object(body: &Bytes) -> Result<Map<String, Value>, Invalid> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            let mut errors = Errors::default();
            let detail = json!({
                "type": "json_invalid",
                "loc": ["body", e.column()],
                "msg": "JSON decode error",
                "input": {},
                "ctx": { "error": e.to_string() },
            });
            errors.0.push(detail);
            return errors.into_result(Map::new());
        }
    };
    match value {
        Value::Object(map) => Ok(map),
        other => {
            let mut errors = Errors::default();
            errors.push(
                "model_attributes_type",
                &[],
                "Input should be a valid dictionary or object to extract fields from",
                &other,
                None,
            );
            errors.into_result(Map::new())
        }
    }
}

/// Field readers over one body; each records an error and returns a default on bad input.
pub struct Fields<'a> {
    pub body: &'a Map<String, Value>,
    pub errors: Errors,
}

impl<'a> Fields<'a> {
    pub fn new(body: &'a Map<String, Value>) -> Fields<'a> {
        Fields {
            body,
            errors: Errors::default(),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.body.get(name)
    }

    fn missing(&mut self, name: &str) {
        let input = Value::Object(self.body.clone());
        self.errors
            .push("missing", &[name], "Field required", &input, None);
    }

    pub fn string(&mut self, name: &str) -> String {
        match self.get(name) {
            None => {
                self.missing(name);
                String::new()
            }
            Some(v) => self.as_string(&[name], v).unwrap_or_default(),
        }
    }

    pub fn optional_string(&mut self, name: &str) -> Option<String> {
        match self.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => self.as_string(&[name], v),
        }
    }

    fn as_string(&mut self, loc: &[&str], v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.errors.push(
                    "string_type",
                    loc,
                    "Input should be a valid string",
                    other,
                    None,
                );
                None
            }
        }
    }

    pub fn float(&mut self, name: &str, default: f64) -> f64 {
        let Some(v) = self.get(name) else {
            return default;
        };
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::String(s) => match s.trim().parse::<f64>() {
                // "nan" parses, but is no timeout: refused as pydantic refuses it where NaN is
                // not allowed.
                Ok(f) if f.is_nan() => {
                    let msg = "Input should be a finite number";
                    self.errors.push("finite_number", &[name], msg, v, None);
                    return default;
                }
                Ok(f) => Some(f),
                Err(_) => {
                    let msg = "Input should be a valid number, unable to parse string as a number";
                    self.errors.push("float_parsing", &[name], msg, v, None);
                    return default;
                }
            },
            _ => None,
        };
        parsed.unwrap_or_else(|| {
            self.errors.push(
                "float_type",
                &[name],
                "Input should be a valid number",
                v,
                None,
            );
            default
        })
    }

    pub fn int(&mut self, name: &str, default: i64) -> i64 {
        let Some(v) = self.get(name) else {
            return default;
        };
        let from_float = |f: f64| (f.fract() == 0.0 && f.abs() < 9e15).then_some(f as i64);
        let parsed = match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(i),
                None => n.as_f64().and_then(from_float).ok_or("int_from_float"),
            },
            Value::Bool(b) => Ok(i64::from(*b)),
            Value::String(s) => s.trim().parse::<i64>().map_err(|_| "int_parsing"),
            _ => Err("int_type"),
        };
        parsed.unwrap_or_else(|kind| {
            let msg = match kind {
                "int_from_float" => {
                    "Input should be a valid integer, got a number with a fractional part"
                }
                "int_parsing" => {
                    "Input should be a valid integer, unable to parse string as an integer"
                }
                _ => "Input should be a valid integer",
            };
            self.errors.push(kind, &[name], msg, v, None);
            default
        })
    }

    /// A string field restricted to `allowed` (a `Literal[...]`).
    pub fn literal(&mut self, name: &str, allowed: &[&str], default: Option<&str>) -> String {
        let value = match (self.get(name), default) {
            (None, Some(d)) => return d.to_string(),
            (None, None) => {
                self.missing(name);
                return String::new();
            }
            (Some(v), _) => v,
        };
        if let Some(s) = value.as_str().filter(|s| allowed.contains(s)) {
            return s.to_string();
        }
        let quoted: Vec<String> = allowed.iter().map(|a| format!("'{a}'")).collect();
        let expected = match quoted.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => quoted.join(""),
        };
        let msg = format!("Input should be {expected}");
        self.errors.push(
            "literal_error",
            &[name],
            &msg,
            value,
            Some(json!({ "expected": expected })),
        );
        String::new()
    }

    /// `Dict[str, Optional[str]]` (or `Dict[str, str]` when `nullable` is false).
    pub fn string_map(&mut self, name: &str, nullable: bool) -> Vec<(String, Option<String>)> {
        let Some(v) = self.get(name) else {
            return Vec::new();
        };
        let Value::Object(map) = v else {
            self.errors.push(
                "dict_type",
                &[name],
                "Input should be a valid dictionary",
                v,
                None,
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in map {
            match value {
                Value::Null if nullable => out.push((key.clone(), None)),
                other => {
                    if let Some(s) = self.as_string(&[name, key], other) {
                        out.push((key.clone(), Some(s)));
                    }
                }
            }
        }
        out
    }

    /// `List[str]`.
    pub fn string_list(&mut self, name: &str) -> Vec<String> {
        let Some(v) = self.get(name) else {
            return Vec::new();
        };
        let Value::Array(items) = v else {
            self.errors.push(
                "list_type",
                &[name],
                "Input should be a valid list",
                v,
                None,
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let index = i.to_string();
            if let Some(s) = self.as_string(&[name, &index], item) {
                out.push(s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn lax_numbers_and_errors() {
        let body = fields(json!({
            "a": "1.5", "b": 3, "c": "x", "d": 2.0, "e": 2.5, "lang": "cobol", "n": " NaN",
            "i": "-inf",
        }));
        let mut f = Fields::new(&body);
        assert_eq!(f.float("a", 0.0), 1.5);
        assert_eq!(f.float("b", 0.0), 3.0);
        assert_eq!(f.float("missing", 7.0), 7.0);
        assert_eq!(f.int("d", 0), 2);
        assert_eq!(f.float("i", 0.0), f64::NEG_INFINITY);
        f.float("c", 0.0);
        f.int("e", 0);
        f.literal("lang", &["python", "cpp", "go"], None);
        f.string("code");
        assert_eq!(f.float("n", 4.0), 4.0);
        let kinds: Vec<String> = f
            .errors
            .0
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            kinds,
            [
                "float_parsing",
                "int_from_float",
                "literal_error",
                "missing",
                "finite_number"
            ]
        );
        assert_eq!(
            f.errors.0[2]["msg"],
            "Input should be 'python', 'cpp' or 'go'"
        );
        assert_eq!(f.errors.0[3]["loc"], json!(["body", "code"]));
    }
}
