//! The metrics endpoint's HTTP, decided on bytes: which answer a request head gets, and the
//! bytes of that answer. One request per connection (`Connection: close`), `GET /metrics`
//! only; the IO (bounded reads, deadline, few connections) is `sys::metrics_http`'s.

/// Bytes a request head may take, request line and headers together; a longer one is refused
/// (431) without reading on.
pub const MAX_HEAD: usize = 8 << 10;

/// The only path served.
pub const METRICS_PATH: &str = "/metrics";

/// The Prometheus (OpenMetrics) text format, as `prometheus-client` writes it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// Another path.
    NotFound,
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Not an HTTP/1 request line.
    BadRequest,
    /// No end of the head within [`MAX_HEAD`] bytes.
    TooLarge,
}

/// The route for the bytes read so far, or `None` while the head is incomplete (no blank line
/// yet) and still within [`MAX_HEAD`].
pub fn route(head: &[u8]) -> Option<Route> {
    let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (head.len() >= MAX_HEAD).then_some(Route::TooLarge);
    };
    let Ok(text) = std::str::from_utf8(&head[..end]) else {
        return Some(Route::BadRequest);
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Route::BadRequest);
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Route::BadRequest);
    }
    let path = target.split('?').next().unwrap_or("");
    Some(match (method, path == METRICS_PATH) {
        ("GET", true) => Route::Metrics,
        (_, true) => Route::MethodNotAllowed,
        (_, false) => Route::NotFound,
    })
}

/// The whole response for `route`; `body` is the exposition for [`Route::Metrics`].
pub fn response(route: Route, body: &str) -> Vec<u8> {
    let (status, content_type, body) = match route {
        Route::Metrics => ("200 OK", CONTENT_TYPE, body),
        Route::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n",
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n",
        ),
        Route::BadRequest => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "not an HTTP/1 request\n",
        ),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain; charset=utf-8",
            "request head too large\n",
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if route == Route::MethodNotAllowed { "Allow: GET\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_requests() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(r("GET /metrics?a=b HTTP/1.0\r\n\r\n"), Some(Route::Metrics));
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(r("GET /metricsx HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            r("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(r("GET /metrics\r\n\r\n"), Some(Route::BadRequest));
        assert_eq!(r("GET /metrics SPDY/3\r\n\r\n"), Some(Route::BadRequest));
        assert_eq!(r("GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(route(&[b'a'; MAX_HEAD]), Some(Route::TooLarge));
        assert_eq!(
            route(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::BadRequest)
        );
    }

    #[test]
    fn responses_carry_length_and_close() {
        let ok = String::from_utf8(response(Route::Metrics, "a 1\n# EOF\n")).unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 10\r\n"), "{ok}");
        assert!(ok.contains("Connection: close\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n# EOF\n"), "{ok}");
        let nf = String::from_utf8(response(Route::NotFound, "ignored")).unwrap();
        assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nf}");
        assert!(!nf.contains("ignored"), "{nf}");
        let na = String::from_utf8(response(Route::MethodNotAllowed, "")).unwrap();
        assert!(na.contains("Allow: GET\r\n"), "{na}");
    }
}
