//! The serving floor: promo's HTTP stack with promo taken out.
//!
//! `make bench` sets promo beside nginx returning a fixed body. nginx is C
//! with its own HTTP parser; promo serves through hyper, which stays its
//! HTTP implementation. This server answers every request with the same
//! fixed body through exactly the stack `promo serve` uses: SO_REUSEPORT
//! listeners from `http::bind`, one single-threaded tokio runtime per
//! listener, `http::connection_builder` with its header timeout, no
//! writev, TCP_NODELAY. No routing, lookup, counting or timing. What it
//! answers a second is what hyper and tokio can do on the machine, so the
//! bench can say how much of promo's gap to nginx is promo's own.
//!
//! Usage: `hyper_floor ADDR THREADS BODY_FILE`; prints the bound address.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use promo::server::http;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, threads, body] = args.as_slice() else {
        eprintln!("usage: hyper_floor ADDR THREADS BODY_FILE");
        std::process::exit(2);
    };
    let addr = addr.parse().expect("ADDR is host:port");
    let threads = threads.parse().expect("THREADS is a number");
    let body = Bytes::from(std::fs::read(body)?);
    let listeners = http::bind(addr, threads)?;
    println!("{}", listeners[0].local_addr()?);
    let handles: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let body = body.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime")
                    .block_on(serve(listener, body))
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a serving thread")?;
    }
    Ok(())
}

async fn serve(listener: std::net::TcpListener, body: Bytes) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut builder = http::connection_builder(Duration::from_secs(10), http::MAX_HEAD_LEN);
    builder.writev(false);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (builder, body) = (builder.clone(), body.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                let mut response = Response::new(Full::new(body.clone()));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
