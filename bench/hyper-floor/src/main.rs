//! The floor under Keyway's HTTP proxy, for `bench/run`: the same crates Keyway
//! proxies with (hyper's HTTP/1 server, hyper-util's pooled keep-alive client,
//! tokio's current-thread scheduler, `TCP_NODELAY` both ways) and the check nginx and
//! HAProxy are given in the suite (one `Authorization` header compared with a fixed
//! string), and nothing else: no token index, grant, rate limit, header rewriting or
//! audit trail. Keyway, on the same crates with all of that on top, is not expected
//! to be faster than this: how far it is from it is the cost of what Keyway does per
//! request, and how far this is from nginx is the cost of the stack. Not part of
//! Keyway.
//!
//! Given a database as well, each answer waits for a row of its own to be committed
//! there ([`audit`]): the floor of Keyway's default, `durability = "commit"`.
//!
//! With `--bound`, a leaner upstream path than the pool ([`bound`]): each client
//! connection gets an upstream connection of its own, driven in the client
//! connection's task, so a request crosses no task and no pool.
//!
//!     keyway-bench-floor [--bound] LISTEN UPSTREAM AUTHORIZATION [AUDIT_DB]
//!     keyway-bench-floor 127.0.0.1:8080 127.0.0.1:9000 "Bearer abc"
//!     keyway-bench-floor 127.0.0.1:8080 127.0.0.1:9000 "Bearer abc" /tmp/floor.db
//!     keyway-bench-floor --bound 127.0.0.1:8080 127.0.0.1:9000 "Bearer abc"

#![forbid(unsafe_code)]

mod audit;
mod bound;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let bound = args.first().is_some_and(|a| a == "--bound");
    if bound {
        args.remove(0);
    }
    let (listen, upstream, authorization, db) = match args.as_slice() {
        [l, u, a] => (l, u, a, None),
        [l, u, a, db] => (l, u, a, Some(db)),
        _ => {
            eprintln!(
                "usage: keyway-bench-floor [--bound] LISTEN UPSTREAM AUTHORIZATION [AUDIT_DB]"
            );
            return ExitCode::from(2);
        }
    };
    let audit = match db {
        None => None,
        Some(db) => match audit::Audit::open(std::path::Path::new(db)) {
            Ok(audit) => Some(audit),
            Err(e) => {
                eprintln!("cannot open {db}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse::<SocketAddr>())
    else {
        eprintln!("LISTEN and UPSTREAM are ip:port");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let authorization: Arc<str> = authorization.as_str().into();
    let served = if bound {
        runtime.block_on(bound::serve(listen, upstream, authorization, audit))
    } else {
        runtime.block_on(serve(listen, upstream, authorization, audit))
    };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    listen: SocketAddr,
    upstream: SocketAddr,
    authorization: Arc<str>,
    audit: Option<audit::Audit>,
) -> std::io::Result<()> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    accept_each(listen, move |stream| {
        let (client, authorization, audit) = (client.clone(), authorization.clone(), audit.clone());
        async move {
            let service = hyper::service::service_fn(move |req| {
                let (client, authorization, audit) =
                    (client.clone(), authorization.clone(), audit.clone());
                async move {
                    Ok::<_, Infallible>(
                        forward(&client, upstream, &authorization, audit.as_ref(), req).await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

/// Accepts connections on `listen` for ever and serves each, with `TCP_NODELAY`, in
/// a task of its own: the one accept loop of both floors.
async fn accept_each<F, Fut>(listen: SocketAddr, serve_one: F) -> std::io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_one(stream));
    }
}

/// Whether `req` carries the one `Authorization` value let through.
fn allowed(req: &Request<Incoming>, authorization: &str) -> bool {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == authorization.as_bytes())
}

/// `resp`, once its row is committed where there is a database (503 if it was not).
async fn committed(
    audit: Option<&audit::Audit>,
    path: Option<String>,
    resp: Response<Body>,
) -> Response<Body> {
    if let (Some(audit), Some(path)) = (audit, path) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let row = audit::Row {
            at_ms,
            path,
            status: resp.status().as_u16(),
        };
        if !audit.commit(row).await {
            return plain(StatusCode::SERVICE_UNAVAILABLE);
        }
    }
    resp
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: SocketAddr,
    authorization: &str,
    audit: Option<&audit::Audit>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if !allowed(&req, authorization) {
        return plain(StatusCode::UNAUTHORIZED);
    }
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(upstream.to_string())
        .path_and_query(pq)
        .build()
    else {
        return plain(StatusCode::BAD_REQUEST);
    };
    let path = audit.map(|_| req.uri().path().to_owned());
    *req.uri_mut() = uri;
    let resp = match client.request(req).await {
        Ok(resp) => resp.map(BodyExt::boxed_unsync),
        Err(_) => plain(StatusCode::BAD_GATEWAY),
    };
    committed(audit, path, resp).await
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(b"\n"))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}
