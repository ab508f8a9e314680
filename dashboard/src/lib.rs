//! PolicyBind's dashboard: what auditors and platform engineers look at instead
//! of reading YAML (`policybind dashboard`).
//!
//! A read-only HTTP server that talks to the API server with its own identity
//! and renders plain HTML pages with inline CSS and inline SVG pictures: no
//! script, no external request, one small document per page.
//!
//! - [`auth`]: who is looking (a Kubernetes bearer token, checked with a
//!   TokenReview, kept as a server-side session) and what they may see (a
//!   SubjectAccessReview per namespace and kind shown).
//! - [`data`]: one snapshot of the cluster's PolicyBind objects and audit
//!   trails, refreshed at most every few seconds and shared by every viewer;
//!   each page filters it by what the viewer may see.
//! - [`views`]: one module per page, pure functions from a snapshot to HTML, so
//!   they are tested without any server.
//! - [`server`]: the routes, sessions, CSRF and header rules.
#![forbid(unsafe_code)]

pub mod auth;
pub mod data;
mod html;
pub mod server;
mod svg;
pub mod views;

#[cfg(test)]
mod mock_tests;

pub use server::{Options, State, router, serve};

/// Why the dashboard cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be opened.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("serving the dashboard failed: {0}")]
    Serve(#[source] std::io::Error),
    /// No randomness for session ids.
    #[error("no random numbers for session ids: {0}")]
    Random(String),
}
