//! Tests: stagecraft/http against a local HTTP server on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use crate::harness::Project;

/// A one-thread HTTP/1.1 server answering `count` requests: `/echo` echoes the request head and
/// body; `/redirect` redirects to `http://localhost:PORT/echo`; anything else is 404.
fn serve(count: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, extra, payload) = match path.as_str() {
                "/echo" => (
                    "200 OK",
                    String::new(),
                    format!("{head}\n{}", String::from_utf8_lossy(&body)),
                ),
                "/redirect" => (
                    "302 Found",
                    format!("Location: http://localhost:{port}/echo\r\n"),
                    String::new(),
                ),
                _ => ("404 Not Found", String::new(), "nope".to_string()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nX-Test: yes\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
        }
    });
    port
}

#[test]
fn get_and_post() {
    let port = serve(2);
    let p = Project::new();
    let src = format!(
        r#"local http = require("stagecraft/http")
local r = http.get("http://127.0.0.1:{port}/echo", {{ headers = {{ ["X-Hello"] = "there" }} }})
print(r.status, r.headers["x-test"], r.body:find("x-hello: there", 1, true) ~= nil)
local p = http.post("http://127.0.0.1:{port}/echo", {{ json = {{ a = 1 }} }})
print(p.status, p.body:find('{{"a":1}}', 1, true) ~= nil)
"#
    );
    p.script(&src, &["--allow", "net:127.0.0.1"])
        .ok()
        .stdout_is("200\tyes\ttrue\n200\ttrue\n");
    // Replay serves the recorded responses with the server gone.
    p.run(&["replay", "last"])
        .ok()
        .stderr_has("2 of 2 recorded calls matched");
}

#[test]
fn needs_net_capability_for_the_host() {
    let p = Project::new();
    p.script(
        "require('stagecraft/http').get('http://127.0.0.1:9/x')",
        &["--allow", "net:example.com"],
    )
    .code(3)
    .stderr_has("permission denied: http.get needs capability net:127.0.0.1");
}

#[test]
fn redirect_to_an_ungranted_host_is_refused() {
    let port = serve(1);
    let p = Project::new();
    let src = format!("require('stagecraft/http').get('http://127.0.0.1:{port}/redirect')");
    p.script(&src, &["--allow", "net:127.0.0.1"])
        .code(1)
        .stderr_has("needs capability net:localhost");
}

#[test]
fn secret_header_is_sent_but_never_shown() {
    let port = serve(1);
    let p = Project::new();
    let src = format!(
        r#"local secrets = require("stagecraft/secrets")
local tok = secrets.get("API_TOKEN")
local r = require("stagecraft/http").get("http://127.0.0.1:{port}/echo", {{ headers = {{ Authorization = tok }} }})
print(r.body)
"#
    );
    p.write("script.luau", &src);
    p.cmd(&[
        "run",
        "script.luau",
        "--allow",
        "net:127.0.0.1",
        "--allow",
        "secrets:API_TOKEN",
    ])
    .env("API_TOKEN", "tok-5f3a9c1e77")
    .output()
    .ok()
    .stdout_has("authorization: [REDACTED]")
    .lacks("tok-5f3a9c1e77");
    let db = std::fs::read(p.ledger()).expect("ledger bytes");
    assert!(!String::from_utf8_lossy(&db).contains("tok-5f3a9c1e77"));
}

#[test]
fn bad_urls_are_caller_errors() {
    let p = Project::new();
    p.script(
        "require('stagecraft/http').get('ftp://x/y')",
        &["--allow", "net"],
    )
    .code(1)
    .stderr_has("only http and https");
    p.script(
        "require('stagecraft/http').get('not a url')",
        &["--allow", "net"],
    )
    .code(1)
    .stderr_has("invalid URL");
}

#[test]
fn response_bodies_are_bounded() {
    let port = serve(2);
    let p = Project::new();
    let src = format!(
        r#"local http = require("stagecraft/http")
local ok, err = pcall(http.get, "http://127.0.0.1:{port}/echo", {{ max_size = 10 }})
print(ok, err.kind, err.message:find("larger than 10 bytes", 1, true) ~= nil)
print(#http.get("http://127.0.0.1:{port}/echo").body > 10)
"#
    );
    p.script(&src, &["--allow", "net:127.0.0.1"])
        .ok()
        .stdout_is("false\tnetwork\ttrue\ntrue\n");
}
