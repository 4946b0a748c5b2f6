//! HTTP routes: the embedded web client, `/ws`, `/healthz`, and the security
//! headers every response carries.
//!
//! The web client is compiled into the binary (`web/`), so a running server
//! reads nothing from disk and serves nothing from anyone else's origin.

use std::sync::Arc;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use earshot_core::ConnInfo;
use earshot_core::protocol::IceServer;

use crate::{App, ws};

/// One embedded file of the web client.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/", $file)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/app.js", "app.js", JS),
    asset!("/protocol.js", "protocol.js", JS),
    asset!("/call.js", "call.js", JS),
    asset!("/meter.js", "meter.js", JS),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// Only our own origin, for everything; no inline script or style.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const PERMISSIONS: &str = "microphone=(self), camera=(), geolocation=(), payment=(), usb=(), \
    interest-cohort=(), browsing-topics=()";

pub fn router(app: Arc<App>) -> Router {
    let mut router = Router::new()
        .route("/ws", get(websocket))
        .route("/healthz", get(healthz));
    for asset in ASSETS {
        router = router.route(
            asset.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, asset.content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    asset.body,
                )
            }),
        );
    }
    router
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert("permissions-policy", HeaderValue::from_static(PERMISSIONS));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn websocket(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let info = ConnInfo {
        country: None,
        ice_servers: ice_servers(&app, &headers),
    };
    let permit = app.connections.clone().try_acquire_owned().ok();
    ws::configure(upgrade, app.settings.max_frame_bytes)
        .on_upgrade(move |socket| {
            let tracker = app.tracker.clone();
            tracker.track_future(ws::serve(socket, app, info, permit))
        })
        .into_response()
}

/// The STUN URL for a client: the configured one, or our STUN port on the
/// host name the client used to reach us (so it works on any interface).
fn ice_servers(app: &App, headers: &HeaderMap) -> Vec<IceServer> {
    let url = match (&app.settings.stun_url, app.stun_addr) {
        (Some(url), _) => url.clone(),
        (None, Some(stun)) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(host_of)
                .unwrap_or_else(|| match crate::config::display_addr(stun).ip() {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                });
            format!("stun:{host}:{}", stun.port())
        }
        (None, None) => return Vec::new(),
    };
    vec![IceServer {
        urls: vec![url],
        username: None,
        credential: None,
    }]
}

/// The host part of a `Host` header, if it is a plain name or address.
fn host_of(value: &str) -> Option<String> {
    let host = if let Some(rest) = value.strip_prefix('[') {
        let end = rest.find(']')?;
        &value[..end + 2]
    } else {
        value.rsplit_once(':').map_or(value, |(h, _)| h)
    };
    let plain = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    plain.then(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::host_of;

    proptest! {
        /// The Host header is client input that ends up in a URL we hand out.
        #[test]
        fn host_of_never_panics_and_returns_only_plain_hosts(value in ".{0,300}") {
            if let Some(host) = host_of(&value) {
                prop_assert!(!host.is_empty() && host.len() <= 253);
                prop_assert!(host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)));
            }
        }
    }

    #[test]
    fn host_header_parsing() {
        assert_eq!(host_of("127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            host_of("chat.example.org").as_deref(),
            Some("chat.example.org")
        );
        assert_eq!(host_of("[::1]:8080").as_deref(), Some("[::1]"));
        assert_eq!(host_of("evil\"host:1"), None);
        assert_eq!(host_of("a b"), None);
        assert_eq!(host_of("[::1"), None);
        assert_eq!(host_of(""), None);
    }
}
