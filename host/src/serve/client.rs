//! A small blocking HTTP/1.1 client for the load test (`llmlab bench serve`): one connection
//! per request (`Connection: close`), chunked bodies, server-sent events read line by line as
//! they arrive so the time to the first token can be taken. Loopback addresses only.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `127.0.0.1:8080`, `localhost:8080` or `http://127.0.0.1:8080`, refused unless it is loopback.
pub fn loopback_addr(url: &str) -> Result<SocketAddr, String> {
    let hostport = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if url.starts_with("https://") || hostport.contains('/') {
        return Err(format!(
            "{url}: give http://HOST:PORT of a local server (no path, no https)"
        ));
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .collect();
    addrs
        .into_iter()
        .find(|a| a.ip().is_loopback())
        .ok_or_else(|| {
            format!("{url}: the load test only runs against this machine (127.0.0.1, localhost)")
        })
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    Ok(stream)
}

fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok((status, headers))
}

/// The body's bytes as they arrive, de-chunked, to `on_bytes`.
fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    mut on_bytes: impl FnMut(&[u8]),
) -> std::io::Result<()> {
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if !chunked {
        // A server may keep the connection open despite `Connection: close` (Chromium's
        // DevTools does): read what Content-Length says, to EOF only without one.
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let mut buf = Vec::new();
        match length {
            Some(n) => {
                buf.resize(n, 0);
                reader.read_exact(&mut buf)?;
            }
            None => {
                reader.read_to_end(&mut buf)?;
            }
        }
        on_bytes(&buf);
        return Ok(());
    }
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            return Ok(());
        }
        let mut chunk = vec![0; size];
        reader.read_exact(&mut chunk)?;
        on_bytes(&chunk);
        line.clear();
        reader.read_line(&mut line)?;
    }
}

pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<Response> {
    let mut reader = BufReader::new(send(addr, method, path, body)?);
    let (status, headers) = read_head(&mut reader)?;
    let mut bytes = Vec::new();
    read_body(&mut reader, &headers, |b| bytes.extend_from_slice(b))?;
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// POSTs `body` and calls `on_data` with each server-sent event's `data` as it arrives.
/// Returns the status (the body of a non-200 answer goes to `on_data` whole).
pub fn post_events(
    addr: SocketAddr,
    path: &str,
    body: &str,
    mut on_data: impl FnMut(&str),
) -> std::io::Result<u16> {
    let mut reader = BufReader::new(send(addr, "POST", path, body)?);
    let (status, headers) = read_head(&mut reader)?;
    let mut pending = Vec::new();
    read_body(&mut reader, &headers, |bytes| {
        if status != 200 {
            on_data(&String::from_utf8_lossy(bytes));
            return;
        }
        pending.extend_from_slice(bytes);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(data) = line.trim_end().strip_prefix("data:") {
                on_data(data.trim_start());
            }
        }
    })?;
    Ok(status)
}
