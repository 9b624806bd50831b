//! A plain HTTP/1.1 file server for tests of feeds read by URL: HEAD and
//! ranged GET of one object, with an ETag, and faults on demand (a
//! connection dropped mid-answer, the object replaced between requests),
//! and the signature check of a presigned URL on demand.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What the server does, changed by the test while it runs.
#[derive(Default)]
pub struct Behaviour {
    /// The object's bytes and its ETag.
    pub body: Vec<u8>,
    pub etag: String,
    /// GETs to cut short: each sends this many bytes of its answer, then
    /// closes the connection (taken front first).
    pub cut_after: Vec<usize>,
    /// After this many GETs, the object becomes `replacement` (new ETag).
    pub replace_after: Option<(usize, Vec<u8>, String)>,
    /// Every request's method and Range header, in order.
    pub seen: Vec<(String, Option<String>)>,
    /// Every request's target (path and query), in order.
    pub targets: Vec<String>,
    /// The query of a presigned URL: a request with another query, or
    /// none, is answered 403, and so is a HEAD (the URL is signed for GET).
    pub signed_query: Option<String>,
    /// Answer every GET with the whole object (200), as a server that does
    /// not take ranges does.
    pub ignore_range: bool,
}

pub struct HttpFile {
    addr: SocketAddr,
    pub behaviour: Arc<Mutex<Behaviour>>,
}

impl HttpFile {
    pub fn start(body: Vec<u8>, etag: &str) -> HttpFile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let behaviour = Arc::new(Mutex::new(Behaviour {
            body,
            etag: etag.to_string(),
            ..Behaviour::default()
        }));
        let shared = behaviour.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        HttpFile { addr, behaviour }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    pub fn gets(&self) -> Vec<Option<String>> {
        self.behaviour
            .lock()
            .unwrap()
            .seen
            .iter()
            .filter(|(m, _)| m == "GET")
            .map(|(_, r)| r.clone())
            .collect()
    }
}

fn serve(stream: TcpStream, shared: &Mutex<Behaviour>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let method = line.split_whitespace().next().unwrap_or("").to_string();
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("range") {
                    range = Some(v.trim().to_string());
                }
            }
        }
        let (body, etag, cut, range) = {
            let mut b = shared.lock().unwrap();
            b.seen.push((method.clone(), range.clone()));
            b.targets.push(target.clone());
            if let Some(signed) = &b.signed_query {
                let query = target.split_once('?').map(|(_, q)| q);
                if method != "GET" || query != Some(signed.as_str()) {
                    let why = "<Error><Code>SignatureDoesNotMatch</Code></Error>";
                    let head = format!(
                        "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n",
                        why.len()
                    );
                    drop(b);
                    let body = if method == "HEAD" { "" } else { why };
                    if out.write_all(format!("{head}{body}").as_bytes()).is_err() {
                        return;
                    }
                    continue;
                }
            }
            let gets = b.seen.iter().filter(|(m, _)| m == "GET").count();
            if let Some((after, _, _)) = &b.replace_after {
                if method == "GET" && gets > *after {
                    let (_, body, etag) = b.replace_after.take().unwrap();
                    b.body = body;
                    b.etag = etag;
                }
            }
            let cut = if method == "GET" && !b.cut_after.is_empty() {
                Some(b.cut_after.remove(0))
            } else {
                None
            };
            let range = range.filter(|_| !b.ignore_range);
            (b.body.clone(), b.etag.clone(), cut, range)
        };
        let len = body.len();
        let (status, start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) => {
                let (a, b) = r.split_once('-').unwrap();
                let a: usize = a.parse().unwrap();
                let b: usize = if b.is_empty() {
                    len - 1
                } else {
                    b.parse::<usize>().unwrap().min(len - 1)
                };
                ("206 Partial Content", a, b + 1)
            }
            None => ("200 OK", 0, len),
        };
        let mut head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nETag: \"{etag}\"\r\n\
             Last-Modified: Wed, 02 Dec 2026 10:00:00 GMT\r\nAccept-Ranges: bytes\r\n",
            end - start
        );
        if status.starts_with("206") {
            head.push_str(&format!(
                "Content-Range: bytes {start}-{}/{len}\r\n",
                end - 1
            ));
        }
        head.push_str("\r\n");
        if out.write_all(head.as_bytes()).is_err() {
            return;
        }
        if method == "HEAD" {
            continue;
        }
        let part = &body[start..end];
        match cut {
            Some(n) => {
                let _ = out.write_all(&part[..n.min(part.len())]);
                let _ = out.flush();
                let _ = out.shutdown(std::net::Shutdown::Both);
                return;
            }
            None => {
                if out.write_all(part).is_err() {
                    return;
                }
            }
        }
    }
}
