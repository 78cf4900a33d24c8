//! `stagecraft/http`: `get(url, opts)` and `post(url, opts)` (capability `net:HOST`). Redirects
//! are followed only to hosts the run may reach.

use std::collections::BTreeMap;
use std::time::Duration;

use mlua::{Lua, Table, Value};
use serde::Deserialize;
use serde_json::json;

use super::opts;
use crate::runtime::caps::Request;
use crate::runtime::fault::{OpError, kinds};
use crate::runtime::secrets::SecretHandle;
use crate::runtime::value::{ToJson, to_json};
use crate::runtime::{RunCtx, ctx};

pub fn register(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set(
        "get",
        lua.create_async_function(|lua, (url, o): (String, Option<Value>)| {
            request(lua, "GET", url, o)
        })?,
    )?;
    t.set(
        "post",
        lua.create_async_function(|lua, (url, o): (String, Option<Value>)| {
            request(lua, "POST", url, o)
        })?,
    )?;
    Ok(t)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct HttpOpts {
    /// Header values: strings or secret handles (resolved when the request is sent).
    headers: BTreeMap<String, serde_json::Value>,
    body: Option<String>,
    /// A value to send as JSON (sets content-type).
    json: Option<serde_json::Value>,
    /// Seconds (default 30).
    timeout: Option<f64>,
    /// Largest response body accepted, in bytes (default 64 MiB).
    max_size: Option<usize>,
}

const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

async fn request(
    lua: Lua,
    method: &'static str,
    url: String,
    o: Option<Value>,
) -> mlua::Result<Value> {
    let ctx = ctx(&lua)?;
    let func = if method == "GET" {
        "http.get"
    } else {
        "http.post"
    };
    let opts_json = match &o {
        Some(v) => to_json(v, ToJson::default())
            .map_err(|e| OpError::invalid(format!("{func}: {e}")).into_lua())?,
        None => json!({}),
    };
    let o: HttpOpts = opts(func, o)?;
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| OpError::invalid(format!("{func}: invalid URL '{url}': {e}")).into_lua())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(OpError::invalid(format!(
            "{func}: only http and https URLs are supported ('{url}')"
        ))
        .into_lua());
    }
    let op: &'static str = func;
    let v = ctx
        .record(op, json!({ "url": url, "opts": opts_json }), || {
            send(&ctx, func, method, parsed, o)
        })
        .await
        .map_err(OpError::into_lua)?;
    crate::runtime::value::to_lua(&lua, &v)
}

async fn send(
    ctx: &RunCtx,
    func: &str,
    method: &str,
    url: reqwest::Url,
    o: HttpOpts,
) -> Result<serde_json::Value, OpError> {
    let o_max_size = o.max_size;
    let host = url.host_str().unwrap_or_default().to_string();
    ctx.require(func, &Request::Net(&host), &format!("net:{host}"))?;
    let grants = ctx.grants.clone();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let host = attempt.url().host_str().unwrap_or_default().to_string();
        if attempt.previous().len() >= 10 {
            attempt.error("too many redirects")
        } else if grants.allows(&Request::Net(&host)) {
            attempt.follow()
        } else {
            attempt.error(format!("redirect to {host} needs capability net:{host}"))
        }
    });
    let client = reqwest::Client::builder()
        .redirect(policy)
        .timeout(Duration::from_secs_f64(
            o.timeout.unwrap_or(30.0).max(0.001),
        ))
        .build()
        .map_err(|e| OpError::new(kinds::NETWORK, format!("{func}: {e}")))?;
    let mut req = client.request(method.parse().unwrap_or(reqwest::Method::GET), url.clone());
    for (k, v) in &o.headers {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            other => {
                let h = SecretHandle::from_reference(other).ok_or_else(|| {
                    OpError::invalid(format!(
                        "{func}: header {k} must be a string or a secret handle"
                    ))
                })?;
                ctx.secrets.resolve(&h).ok_or_else(|| {
                    OpError::new(
                        kinds::NOT_FOUND,
                        format!("{func}: secret {} is not loaded", h.name),
                    )
                })?
            }
        };
        req = req.header(k, value);
    }
    if let Some(j) = &o.json {
        req = req.json(j);
    } else if let Some(b) = o.body {
        req = req.body(b);
    }
    let mut resp = req.send().await.map_err(|e| {
        let kind = if e.is_timeout() {
            kinds::TIMEOUT
        } else {
            kinds::NETWORK
        };
        OpError::new(
            kind,
            format!("{func}: {url}: {}", crate::util::error_chain(&e)),
        )
        .hint("is the server up and the URL right?")
    })?;
    let status = resp.status().as_u16();
    let mut headers = serde_json::Map::new();
    for (k, v) in resp.headers() {
        headers.insert(k.as_str().to_string(), json!(v.to_str().unwrap_or("")));
    }
    // Read at most `max_size` bytes: a huge or endless body is an error, not an exhausted process.
    let limit = o_max_size.unwrap_or(DEFAULT_MAX_BODY);
    let too_big = || {
        OpError::new(
            kinds::NETWORK,
            format!("{func}: the response body is larger than {limit} bytes"),
        )
        .hint("raise the max_size option if this is expected")
    };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| OpError::new(kinds::NETWORK, format!("{func}: reading body: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    let body = String::from_utf8_lossy(&body);
    Ok(json!({ "status": status, "headers": headers, "body": body }))
}
