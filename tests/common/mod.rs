//! Helpers shared by the native integration tests: a minimal HTTP/1.1 client over
//! a plain socket (loopback only) and a guard for `glia` child processes.

#![allow(dead_code)] // Each test crate uses its own subset.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
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
}

/// One request on a fresh connection to `addr` (`127.0.0.1:port`), read to the end.
pub fn request(addr: &str, method: &str, path: &str, body: &[u8]) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
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
    /// `127.0.0.1:port`, as the command printed it.
    pub addr: String,
}

impl Glia {
    /// Starts `glia args...` and waits for the line announcing its address.
    pub fn start(args: &[&str]) -> Self {
        let mut child =
            Command::new(env!("CARGO_BIN_EXE_glia")).args(args).stdout(Stdio::piped()).spawn().expect("spawn glia");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap_or_else(|| panic!("glia printed no address: {line:?}"))
            .trim_end_matches(['/', '\n'])
            .to_owned();
        Self { child, addr }
    }
}

impl Drop for Glia {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
