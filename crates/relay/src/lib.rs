//! baton's webhook relays: every stored delivery of a relay's sources that passes its `if`
//! is forwarded to each of its targets, signed, on a retry schedule, at least once.
//!
//! | module | does |
//! |---|---|
//! | [`route`] | which messages a delivery makes (the matcher calls it) |
//! | `dispatch` | one worker per target: claims due messages, sends them, records each try |
//! | `target` | one try of one message: the body, the headers, the signature, the answer |
//! | `sign` | GitHub's and Standard Webhooks' signatures |
//! | `resolve` | the resolver that refuses private addresses unless a target allows them |
//! | `headers` | which of a delivery's headers are passed on |
//! | `schedule` | when the next try is due (jitter, `Retry-After`) |
//! | `circuit` | the breaker that stops sending to a target that fails everything |
//! | `rate` | a target's rate limit |

mod circuit;
mod dispatch;
mod headers;
mod rate;
mod resolve;
pub mod route;
mod schedule;
mod sign;
mod target;

use baton_core::secret::SecretError;

/// A relay could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A target's secret (its signing secret, a header value) could not be read.
    #[error("relays.{relay}.to `{target}`: {what} cannot be read")]
    Secret {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// Which secret (`sign.secret`, `headers.Authorization`).
        what: String,
        /// Why.
        #[source]
        source: SecretError,
    },
    /// A Standard Webhooks secret is not `whsec_<base64>`.
    #[error(
        "relays.{relay}.to `{target}`: sign.secret is not a Standard Webhooks secret: {reason}"
    )]
    StandardWebhooksSecret {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// What is wrong with it (never the secret itself).
        reason: String,
    },
    /// A target's URL cannot be sent to.
    #[error("relays.{relay}.to `{target}`: url cannot be used: {reason}")]
    Url {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A header value from a secret cannot be sent in a header.
    #[error("relays.{relay}.to `{target}`: headers.{name} cannot be sent: {reason}")]
    Header {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// The header.
        name: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("relays.{relay}.to `{target}`: the HTTP client cannot be built")]
    Client {
        /// The relay.
        relay: String,
        /// The target.
        target: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}
