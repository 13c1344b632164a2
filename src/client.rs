//! Where a request comes from, for address allow-lists.
//!
//! For a direct connection it is the connection's peer (`inet_client_addr()`). Behind PostgREST
//! the peer is PostgREST, so the client is the last address of the `X-Forwarded-For` header that
//! PostgREST passes in `request.headers` — but only when the peer is listed in
//! `apikey.trusted_proxies` (CIDR blocks, or `local` for a Unix socket): from anyone else a
//! forwarding header is the client's own claim and is ignored. The proxy must overwrite the header
//! (nginx: `proxy_set_header X-Forwarded-For $remote_addr;`), never append to what the client sent.

use std::net::IpAddr;

use pg_apikey_core::ipnet::{normalize, Cidr};
use pgrx::prelude::*;

use crate::errors::spi;

/// The connection's peer: Some(address) over TCP, None over a Unix socket. Read with a
/// read-only SPI call: this is the request path, which must not assign a transaction id (that
/// would write a commit record, and fail on a hot standby).
fn peer() -> Option<IpAddr> {
    let text: Option<String> = crate::privilege::with_pinned_search_path(|| {
        spi(Spi::connect(|c| {
            c.select(
                "SELECT pg_catalog.host(pg_catalog.inet_client_addr())",
                Some(1),
                &[],
            )?
            .first()
            .get_one()
        }))
    });
    text.and_then(|t| t.parse().ok()).map(normalize)
}

fn trusted(peer: Option<IpAddr>) -> bool {
    let list = crate::gucs::TRUSTED_PROXIES
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| match (entry, peer) {
            ("local", None) => true,
            (_, Some(p)) => Cidr::parse(entry).is_ok_and(|c| c.contains(p)),
            _ => false,
        })
}

fn forwarded_for() -> Option<IpAddr> {
    // SAFETY: GetConfigOption(missing_ok = true) returns NULL or a string owned by the GUC
    // machinery; it is copied at once.
    let headers = unsafe {
        let raw = pgrx::pg_sys::GetConfigOption(c"request.headers".as_ptr(), true, false);
        (!raw.is_null()).then(|| std::ffi::CStr::from_ptr(raw).to_string_lossy().into_owned())
    }?;
    let headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&headers).ok()?;
    let xff = headers.get("x-forwarded-for")?.as_str()?;
    xff.rsplit(',').next()?.trim().parse().ok().map(normalize)
}

/// The request's client address, or None when it is unknown (a Unix socket, no trusted header):
/// an allow-list then refuses.
pub fn address() -> Option<IpAddr> {
    let peer = peer();
    if trusted(peer) {
        if let Some(client) = forwarded_for() {
            return Some(client);
        }
    }
    peer
}
