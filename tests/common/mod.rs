//! Helpers shared by the native integration tests: a minimal HTTP/1.1 client over
//! a plain socket (loopback only) and a guard for `glia` child processes.

#![allow(dead_code)] // Each test crate uses its own subset.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("response body is JSON")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The JSON body of a 200 response; anything else fails the test with the body.
    #[track_caller]
    pub fn ok(&self) -> serde_json::Value {
        assert_eq!(self.status, 200, "expected 200, got {}: {}", self.status, self.text());
        self.json()
    }

    /// Asserts a Matrix error with this status and `errcode`, and returns its body.
    #[track_caller]
    pub fn err(&self, status: u16, errcode: &str) -> serde_json::Value {
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("expected {status} {errcode}, got {} {:?}", self.status, self.text()));
        assert_eq!(
            (self.status, body["errcode"].as_str()),
            (status, Some(errcode)),
            "expected {status} {errcode}, got {}: {body}",
            self.status
        );
        body
    }
}

/// A Matrix client of one node: its address and, once logged in, an access
/// token. Paths that do not start with `/` are under `/_matrix/client/v3/`.
#[derive(Clone, Debug)]
pub struct Client {
    pub addr: String,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

impl Client {
    /// A client with no access token.
    pub fn anonymous(addr: &str) -> Self {
        Self { addr: addr.to_owned(), token: None, user_id: String::new(), device_id: String::new() }
    }

    /// A client for the session a register or login response handed out.
    #[track_caller]
    pub fn from_login(addr: &str, response: &serde_json::Value) -> Self {
        let field =
            |name: &str| response[name].as_str().unwrap_or_else(|| panic!("no {name} in {response}")).to_owned();
        Self {
            addr: addr.to_owned(),
            token: Some(field("access_token")),
            user_id: field("user_id"),
            device_id: field("device_id"),
        }
    }

    /// A request with the access token as a bearer token, the body as JSON.
    pub fn request(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Response {
        self.raw(method, path, &body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default())
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> Response {
        self.request("POST", path, Some(&body))
    }

    pub fn put(&self, path: &str, body: serde_json::Value) -> Response {
        self.request("PUT", path, Some(&body))
    }

    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, None)
    }

    /// A request with a raw (possibly malformed) body.
    pub fn raw(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let path = match path.starts_with('/') {
            true => path.to_owned(),
            false => format!("/_matrix/client/v3/{path}"),
        };
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        request_with(&self.addr, method, &path, &headers, body)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for path
/// segments (`#alias:server`) and query values (JSON filters).
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One request on a fresh connection to `addr` (`127.0.0.1:port`), read to the end.
pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Response {
    request_with(addr, method, path, &[], body)
}

/// As [`request`], with extra headers; a `Host` among them replaces the default.
pub fn request_with(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
        head += &format!("Host: {addr}\r\n");
    }
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += &format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before taking the whole body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let response = Response { status, headers, body: raw[split + 4..].to_vec() };
    assert_ne!(response.header("transfer-encoding"), Some("chunked"), "this client reads whole bodies only");
    response
}

/// A running `glia` command, killed when dropped so no test leaves it behind.
pub struct Glia {
    child: Child,
    /// What it prints, kept open so it can be read further.
    stdout: BufReader<ChildStdout>,
    /// `127.0.0.1:port`, as the command printed it.
    pub addr: String,
}

impl Glia {
    /// Starts `glia args...` and waits for the line announcing its address.
    pub fn start(args: &[&str]) -> Self {
        Self::start_announcing(args, "http://")
    }

    /// Starts `glia args...` and waits for the first line with a `scheme` URL
    /// (`"ws://"` for `glia relay`); `addr` is that URL's host and port.
    pub fn start_announcing(args: &[&str], scheme: &str) -> Self {
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_glia")).args(args).stdout(Stdio::piped()).spawn().expect("spawn glia");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut glia = Self { child, stdout, addr: String::new() };
        let url = glia.next_url(scheme);
        glia.addr = url[scheme.len()..].split('/').next().unwrap().to_owned();
        glia
    }

    /// Reads what the command prints up to the next `scheme` URL, and returns it.
    pub fn next_url(&mut self, scheme: &str) -> String {
        loop {
            let mut line = String::new();
            self.stdout.read_line(&mut line).unwrap();
            assert!(!line.is_empty(), "glia printed no {scheme} address");
            if let Some(at) = line.find(scheme) {
                return line[at..].trim_end().to_owned();
            }
        }
    }
}

impl Drop for Glia {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
