//! The resolver of a target's HTTP client: the name's addresses, without those that lead
//! into a private network unless the target allows them.
//!
//! The check sits in the resolver, not before the request, so the addresses checked are
//! the ones connected to: a name cannot resolve to a public address for a check and to a
//! private one for the connection. The HTTP client skips the resolver for a host written as
//! an address; [`literal_refusal`] checks those.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use baton_core::address::{restricted_host, restricted_range};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A host's addresses could not be used.
#[derive(Debug)]
pub(crate) enum Unreachable {
    /// Every address is in a restricted range and the target does not allow them.
    Refused {
        /// The host.
        host: String,
        /// Each address and its range.
        addresses: Vec<(IpAddr, &'static str)>,
    },
    /// The name did not resolve.
    Unresolved {
        /// The host.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused { host, addresses } => {
                write!(
                    f,
                    "`{host}` resolves only to addresses refused without `allow_private = true`: "
                )?;
                for (i, (ip, range)) in addresses.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{ip} ({range})")?;
                }
                Ok(())
            }
            Self::Unresolved { host, source } => write!(f, "`{host}` does not resolve: {source}"),
        }
    }
}

impl std::error::Error for Unreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Refused { .. } => None,
            Self::Unresolved { source, .. } => Some(source),
        }
    }
}

/// Resolves with the system's resolver and keeps only the addresses the target may reach.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckedResolver {
    /// Whether loopback, private, link-local and other restricted addresses may be used.
    pub(crate) allow_private: bool,
}

impl CheckedResolver {
    /// The addresses of `host` the target may reach, in the resolver's order.
    pub(crate) async fn lookup(self, host: &str) -> Result<Vec<SocketAddr>, Unreachable> {
        // Port 0: the client puts the URL's port on every address.
        let found =
            tokio::net::lookup_host((host, 0))
                .await
                .map_err(|source| Unreachable::Unresolved {
                    host: host.to_owned(),
                    source,
                })?;
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for address in found {
            match restricted_range(address.ip()) {
                Some(range) if !self.allow_private => {
                    if !refused.contains(&(address.ip(), range)) {
                        refused.push((address.ip(), range));
                    }
                }
                _ => allowed.push(address),
            }
        }
        if allowed.is_empty() {
            if refused.is_empty() {
                return Err(Unreachable::Unresolved {
                    host: host.to_owned(),
                    source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                });
            }
            return Err(Unreachable::Refused {
                host: host.to_owned(),
                addresses: refused,
            });
        }
        Ok(allowed)
    }
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = *self;
        Box::pin(async move {
            let addresses = resolver.lookup(name.as_str()).await?;
            Ok(Box::new(addresses.into_iter()) as Addrs)
        })
    }
}

/// Why a URL host written as an address (`127.0.0.1`, `[::1]`) may not be reached
/// without `allow_private`; `None` for names, which the resolver checks, and for public
/// addresses.
pub(crate) fn literal_refusal(host: &str) -> Option<String> {
    // A URL's host is an IPv4 address in dotted form or an IPv6 one in brackets once
    // parsed, whatever form it was written in.
    let literal = host.starts_with('[') || host.parse::<IpAddr>().is_ok();
    let range = restricted_host(host).filter(|_| literal)?;
    Some(format!(
        "`{host}` is a {range} address, refused without `allow_private = true`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_names_are_refused_with_their_addresses_and_the_way_out() {
        let err = CheckedResolver {
            allow_private: false,
        }
        .lookup("localhost")
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Unreachable::Refused { .. }), "{text}");
        assert!(text.contains("`localhost`"), "{text}");
        assert!(text.contains("127.0.0.1 (loopback)"), "{text}");
        assert!(text.contains("allow_private = true"), "{text}");
    }

    #[tokio::test]
    async fn allow_private_lets_loopback_names_resolve() {
        let addresses = CheckedResolver {
            allow_private: true,
        }
        .lookup("localhost")
        .await
        .unwrap();
        assert!(!addresses.is_empty());
        assert!(
            addresses.iter().all(|a| a.ip().is_loopback()),
            "{addresses:?}"
        );
    }

    #[tokio::test]
    async fn names_that_do_not_resolve_say_so() {
        // `.invalid` never resolves (RFC 6761).
        let err = CheckedResolver {
            allow_private: true,
        }
        .lookup("relay-target.invalid")
        .await
        .unwrap_err();
        assert!(matches!(err, Unreachable::Unresolved { .. }));
        assert!(
            err.to_string()
                .starts_with("`relay-target.invalid` does not resolve: "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_resolve_trait_gives_the_checked_addresses() {
        let refused = CheckedResolver {
            allow_private: false,
        }
        .resolve("localhost".parse().unwrap())
        .await;
        let Err(err) = refused else {
            panic!("localhost resolved without allow_private")
        };
        assert!(err.downcast_ref::<Unreachable>().is_some(), "{err}");
        let allowed = CheckedResolver {
            allow_private: true,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .unwrap();
        assert!(allowed.into_iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn address_hosts_are_judged_here_and_names_left_to_the_resolver() {
        assert_eq!(
            literal_refusal("127.0.0.1").as_deref(),
            Some("`127.0.0.1` is a loopback address, refused without `allow_private = true`")
        );
        assert_eq!(
            literal_refusal("[::1]").as_deref(),
            Some("`[::1]` is a loopback address, refused without `allow_private = true`")
        );
        assert!(
            literal_refusal("[fd00::1]")
                .unwrap()
                .contains("private (unique local)")
        );
        assert!(
            literal_refusal("169.254.169.254")
                .unwrap()
                .contains("link-local")
        );
        assert_eq!(literal_refusal("localhost"), None);
        assert_eq!(literal_refusal("hooks.example.net"), None);
        assert_eq!(literal_refusal("93.184.216.34"), None);
        assert_eq!(literal_refusal("[2606:4700::1111]"), None);
    }
}
