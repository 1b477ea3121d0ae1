//! The lab's demo backend: answers every HTTP request with the pod's and the node's name (from the
//! downward API: `POD_NAME`, `NODE_NAME`), so a client sees which pod on which node served it. Listens on
//! port 8080 (`PORT` to change it) on every IPv4 and IPv6 address. On SIGTERM it keeps serving for
//! `SHUTDOWN_DELAY_MS` (default 2000) before it exits, as a well-behaved backend does: kube-proxy on every
//! node needs a moment to stop sending it new connections.

use std::io::{Read, Write};

use nix::sys::signal::{SigSet, Signal};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A request that does not arrive within this long is answered anyway: the answer never depends on it.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_SHUTDOWN_DELAY_MS: u64 = 2000;

fn main() {
    // As a container's PID 1 it gets no default SIGTERM handling: exit on it, after the shutdown delay.
    let delay = Duration::from_millis(
        std::env::var("SHUTDOWN_DELAY_MS").ok().and_then(|d| d.parse().ok()).unwrap_or(DEFAULT_SHUTDOWN_DELAY_MS),
    );
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    if stop.thread_block().is_ok() {
        std::thread::spawn(move || {
            let _ = stop.wait();
            std::thread::sleep(delay);
            std::process::exit(0);
        });
    }
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let pod = std::env::var("POD_NAME").unwrap_or_else(|_| "unknown-pod".into());
    let node = std::env::var("NODE_NAME").unwrap_or_else(|_| "unknown-node".into());
    let body = format!("{pod} on {node}\n");
    // `[::]` takes IPv4 too (Linux's default bindv6only=0).
    let listener = match TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("ferrolb-demo-web: cannot listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("ferrolb-demo-web: {pod} on {node}, listening on port {port}");
    for stream in listener.incoming().flatten() {
        let body = body.clone();
        std::thread::spawn(move || answer(stream, &body));
    }
}

fn answer(mut stream: TcpStream, body: &str) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    // Read what the client sent (up to the end of its headers) so closing does not reset the connection.
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}
