//! A static file server on loopback: enough HTTP/1.1 for Nix to use a
//! directory as a binary cache (GET and HEAD, one request per connection).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::thread;

pub struct HttpServer {
    pub port: u16,
}

/// Serves the files under `root` until the test process ends.
pub fn serve(root: &Path) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = root.to_owned();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let root = root.clone();
            thread::spawn(move || answer(stream, &root));
        }
    });
    HttpServer { port }
}

fn answer(stream: TcpStream, root: &Path) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // The headers say nothing we need.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let mut words = request.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    let file = local_path(root, target).and_then(|p| std::fs::read(p).ok());
    let mut out = stream;
    let _ = match file {
        Some(body) => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            out.write_all(head.as_bytes()).and_then(|()| if method == "HEAD" { Ok(()) } else { out.write_all(&body) })
        }
        None => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    };
}

/// The file a URL path names under `root`; never a way out of it.
fn local_path(root: &Path, target: &str) -> Option<PathBuf> {
    let relative = Path::new(target.split('?').next()?.trim_start_matches('/'));
    relative.components().all(|c| matches!(c, Component::Normal(_))).then(|| root.join(relative))
}

/// The body of `GET path` from 127.0.0.1:`port` (HTTP/1.0: the server
/// closes when it is done), or what failed.
pub fn try_get(port: u16, path: &str) -> Result<String, String> {
    use std::io::Read;
    let failed = |e: &dyn std::fmt::Display| format!("GET {path} on {port}: {e}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| failed(&e))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).map_err(|e| failed(&e))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| failed(&e))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| failed(&e))?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| failed(&format!("{response:?}")))?;
    match head.starts_with("HTTP/1.") && head.contains(" 200 ") {
        true => Ok(body.to_owned()),
        false => Err(failed(&head)),
    }
}

/// Waits (up to a minute) until `GET path` on 127.0.0.1:`port` answers
/// `body`, as someone refreshing a page would: a service that was just
/// restarted may not listen yet, or still serve the old page.
pub fn wait_for_page(port: u16, path: &str, body: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = try_get(port, path);
        if got.as_deref() == Ok(body) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "GET {path} on {port} never gave {body:?}: last {got:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
