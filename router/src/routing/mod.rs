//! Routing: the link-state database, shortest paths and target choice of one router. No I/O,
//! no tasks, no clock: events go in with `now` passed in, actions come out of `poll_*`.
//!
//! Every router floods an [`Advertisement`] (its links with costs, its routing keys with
//! connector counts) to the whole network over the links' control streams
//! ([`ControlFrame::LinkState`](crate::wire::ControlFrame::LinkState)). Each router keeps the
//! newest advertisement per router in a [`Topology`], computes shortest paths from itself
//! (Dijkstra; edge routers are never transit hops) and answers "where do flows for this key
//! go" ([`Topology::targets`], [`Topology::choose`]). The protocol, its timers, limits and
//! measured convergence are described in `docs/routing.md`.
//!
//! # Layout
//! - `key`: [`RoutingKey`], [`Protocol`], [`KeyAd`], [`Advertisement`].
//! - `topology`: [`Topology`]: the database, flooding, sequence numbers, ageing.
//! - `spf`: shortest paths from this router (two-way link check, edge routers never transit).
//! - `choose`: [`Target`], [`Strategy`]: balanced, priority and weighted target choice.
//! - `affinity`: [`Affinity`]: keeping a client on one site (rendezvous hashing).
//! - `view`: [`RouterView`]: everything known, for `skiff network status`.
//! - `sim` (tests only): a deterministic simulator of many routers on a virtual clock;
//!   `sim_tests`: scenarios on it; `tests`: unit tests of one topology and of target choice.

mod affinity;
mod choose;
mod key;
mod spf;
mod topology;
mod view;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use affinity::{Affinity, affinity_order, client_ip_hash, value_hash};
pub use choose::{Strategy, Target};
pub use key::{Advertisement, Family, InvalidRoutingKey, KeyAd, MAX_KEY_LEN, Protocol, RoutingKey};
pub use skiff_certs::SiteId;
pub use topology::Topology;
pub use view::{LinkView, RouterView};

pub use crate::wire::{MAX_KEYS_PER_AD, MAX_LINKS_PER_AD, RouterMode};

/// How often a router re-floods its own advertisement (with a new sequence number) even when
/// nothing changed. This is what repairs a database after lost messages and what keeps other
/// routers from ageing the advertisement out. Cost: every router's advertisement crosses every
/// link once per interval, i.e. `routers x links x 2` frames per interval network-wide.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How long another router's advertisement is kept without a newer one. Unreachable routers'
/// advertisements are kept this long so a healed partition routes again at once; after it
/// they are forgotten. Four refresh intervals, so three lost refreshes in a row are survived.
pub const MAX_AGE: Duration = Duration::from_secs(120);

/// Most routers (this one included) one database holds; advertisements from further new
/// routers are dropped (and counted, [`Topology::dropped_ads`]). With the per-advertisement
/// limits of the wire format (64 KiB) this bounds the database at about 640 MiB in the worst
/// case; a typical advertisement (a few links, a few keys) is a few hundred bytes.
pub const MAX_ROUTERS: usize = 10_000;
