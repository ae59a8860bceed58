//! `healthcheck`: GETs a probe URL and succeeds on 200, so a container image needs no HTTP
//! client of its own for its `HEALTHCHECK`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The whole exchange must finish within this.
const TIMEOUT: Duration = Duration::from_secs(2);

/// `Ok` when `url` (plain `http://`) answers 200; otherwise why not.
pub fn check(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}`: only http:// is supported"));
    }
    let authority = uri.authority().ok_or(format!("`{url}` has no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let address = (authority.host(), port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {authority}: {e}"))?
        .next()
        .ok_or(format!("{authority} has no address"))?;
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = [0u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("reading the answer: {e}"))?;
    match &head {
        b"HTTP/1.1 200" | b"HTTP/1.0 200" => Ok(()),
        other => Err(format!("answered `{}`", String::from_utf8_lossy(other))),
    }
}
