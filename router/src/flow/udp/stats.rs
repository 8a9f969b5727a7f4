//! Datagram counters of UDP flows per routing key, for `/metrics`
//! (`skiff_udp_datagrams_total`, `skiff_udp_oversize_total`, `skiff_udp_dropped_total`):
//! every role counts what it passed on and what it lost, with the reason, so a loss shows
//! where it happened. Lock-free atomics per key; the key's counters are found once per flow
//! ([`UdpStats::key`]) or per call ([`UdpStats::count`] and friends).
//!
//! Drops the kernel makes on a listener's socket (its receive buffer was full) are not seen
//! by skiff itself: they are read from the `drops` column of `/proc/net/udp{,6}` for the
//! socket's inode when a snapshot is taken ([`UdpStats::watch_socket`]), and counted under
//! `socket-buffer` for the listener's first key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{DropReason, UdpKeyStats};
use crate::flow::FlowRole;
use crate::flow::stats::{MAX_KEYS, OTHER_KEY};

const ROLES: [FlowRole; 3] = [FlowRole::Ingress, FlowRole::Transit, FlowRole::Egress];

fn role_index(r: FlowRole) -> usize {
    match r {
        FlowRole::Ingress => 0,
        FlowRole::Transit => 1,
        FlowRole::Egress => 2,
    }
}

fn reason_index(r: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|x| *x == r)
        .unwrap_or_default()
}

/// Which way a datagram went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the client towards the backend.
    Forward,
    /// From the backend towards the client.
    Back,
}

/// The counters of one key.
#[derive(Debug, Default)]
pub(crate) struct UdpKeyCounters {
    forward: [AtomicU64; 3],
    back: [AtomicU64; 3],
    oversize: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl UdpKeyCounters {
    /// Counts `n` datagrams this router passed on in `direction`, in its `role`.
    pub(crate) fn count(&self, role: FlowRole, direction: Direction, n: u64) {
        let c = match direction {
            Direction::Forward => &self.forward,
            Direction::Back => &self.back,
        };
        c[role_index(role)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one dropped datagram. (Not named `drop`: on an `Arc` that is `Drop::drop`.)
    pub(crate) fn dropped(&self, reason: DropReason) {
        self.dropped_n(reason, 1);
    }

    /// Counts `n` dropped datagrams.
    pub(crate) fn dropped_n(&self, reason: DropReason, n: u64) {
        self.dropped[reason_index(reason)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one datagram that went whole on a stream of a QUIC link (too large for a
    /// QUIC datagram).
    pub(crate) fn oversize(&self) {
        self.oversize.fetch_add(1, Ordering::Relaxed);
    }
}

/// A listener socket whose kernel drops are counted.
#[derive(Debug)]
struct Watched {
    key: String,
    inode: u64,
    /// Kernel drops of the socket already added to the key's `socket-buffer` count.
    seen: u64,
}

/// The UDP counters of every key seen at this router.
#[derive(Debug, Default)]
pub(crate) struct UdpStats {
    keys: Mutex<HashMap<Box<str>, Arc<UdpKeyCounters>>>,
    sockets: Mutex<HashMap<u64, Watched>>,
    next_watch: AtomicU64,
}

impl UdpStats {
    /// The counters of `key` (made on first use; [`OTHER_KEY`] past [`MAX_KEYS`]). A flow
    /// keeps them rather than looking its key up per datagram.
    pub(crate) fn key(&self, key: &str) -> Arc<UdpKeyCounters> {
        let mut keys = self.keys.lock().unwrap();
        if let Some(s) = keys.get(key) {
            return s.clone();
        }
        let key = if keys.len() >= MAX_KEYS {
            OTHER_KEY
        } else {
            key
        };
        keys.entry(key.into()).or_default().clone()
    }

    /// Counts `n` datagrams of `key` this router passed on in `direction`, in its `role`.
    #[allow(dead_code)] // the roles keep their key's counters ([`UdpStats::key`])
    pub(crate) fn count(&self, key: &str, role: FlowRole, direction: Direction, n: u64) {
        self.key(key).count(role, direction, n);
    }

    /// Counts one dropped datagram of `key` (`""` for drops that belong to no key, such
    /// as a link's `no-flow`).
    #[allow(dead_code)] // the roles keep their key's counters ([`UdpStats::key`])
    pub(crate) fn drop(&self, key: &str, reason: DropReason) {
        self.key(key).dropped(reason);
    }

    /// Counts one datagram of `key` that went whole on a stream of a QUIC link.
    #[allow(dead_code)] // the roles keep their key's counters ([`UdpStats::key`])
    pub(crate) fn oversize(&self, key: &str) {
        self.key(key).oversize();
    }

    /// Starts counting the kernel drops of the listener socket with this `inode` under
    /// `key`; give the returned id to [`UdpStats::unwatch`] before the socket closes.
    pub(crate) fn watch_socket(&self, key: &str, inode: u64) -> u64 {
        let id = self.next_watch.fetch_add(1, Ordering::Relaxed);
        // Drops from before (a reused inode cannot have any: the socket is new).
        let seen = kernel_drops(&[inode]).get(&inode).copied().unwrap_or(0);
        self.sockets.lock().unwrap().insert(
            id,
            Watched {
                key: key.to_owned(),
                inode,
                seen,
            },
        );
        id
    }

    /// Counts the last kernel drops of a watched socket and stops watching it.
    pub(crate) fn unwatch(&self, id: u64) {
        self.read_kernel_drops(Some(id));
        self.sockets.lock().unwrap().remove(&id);
    }

    /// Adds the kernel drops of watched sockets (all, or only `only`) since the last read.
    fn read_kernel_drops(&self, only: Option<u64>) {
        let inodes: Vec<u64> = {
            let sockets = self.sockets.lock().unwrap();
            sockets
                .iter()
                .filter(|(id, _)| only.is_none_or(|o| o == **id))
                .map(|(_, w)| w.inode)
                .collect()
        };
        if inodes.is_empty() {
            return;
        }
        let drops = kernel_drops(&inodes);
        let mut sockets = self.sockets.lock().unwrap();
        for (id, w) in sockets.iter_mut() {
            if only.is_some_and(|o| o != *id) {
                continue;
            }
            if let Some(&now) = drops.get(&w.inode)
                && now > w.seen
            {
                self.key(&w.key)
                    .dropped_n(DropReason::SocketBuffer, now - w.seen);
                w.seen = now;
            }
        }
    }

    /// Every key's counters, sorted by key (kernel drops of listener sockets read now).
    pub(crate) fn snapshot(&self) -> Vec<UdpKeyStats> {
        self.read_kernel_drops(None);
        let mut keys: Vec<(Box<str>, Arc<UdpKeyCounters>)> = {
            let keys = self.keys.lock().unwrap();
            keys.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        keys.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        keys.into_iter()
            .map(|(key, c)| {
                let mut forward = Vec::new();
                let mut back = Vec::new();
                for role in ROLES {
                    let f = c.forward[role_index(role)].load(Ordering::Relaxed);
                    let b = c.back[role_index(role)].load(Ordering::Relaxed);
                    if f > 0 || b > 0 {
                        forward.push((role, f));
                        back.push((role, b));
                    }
                }
                UdpKeyStats {
                    key: key.into(),
                    forward,
                    back,
                    oversize: c.oversize.load(Ordering::Relaxed),
                    dropped: DropReason::ALL
                        .iter()
                        .map(|r| (*r, c.dropped[reason_index(*r)].load(Ordering::Relaxed)))
                        .collect(),
                }
            })
            .collect()
    }
}

/// The kernel's drop counts of the UDP sockets with these inodes (those it lists).
fn kernel_drops(inodes: &[u64]) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
            if fields.len() < 13 {
                continue;
            }
            let (Ok(inode), Ok(drops)) = (fields[9].parse::<u64>(), fields[12].parse::<u64>())
            else {
                continue;
            };
            if inodes.contains(&inode) {
                out.insert(inode, drops);
            }
        }
    }
    out
}

/// The inode of a socket (what `/proc/net/udp` lists it under).
pub(crate) fn socket_inode(fd: &impl std::os::fd::AsRawFd) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_key_role_direction_and_reason() {
        let s = UdpStats::default();
        s.count("dns", FlowRole::Ingress, Direction::Forward, 3);
        s.count("dns", FlowRole::Ingress, Direction::Back, 2);
        s.drop("dns", DropReason::Congested);
        s.oversize("dns");
        s.drop("", DropReason::NoFlow);
        let snap = s.snapshot();
        assert_eq!(
            snap.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
            ["", "dns"]
        );
        let dns = &snap[1];
        assert_eq!(dns.forward, vec![(FlowRole::Ingress, 3)]);
        assert_eq!(dns.back, vec![(FlowRole::Ingress, 2)]);
        assert_eq!(dns.oversize, 1);
        let dropped = |k: &UdpKeyStats, r| k.dropped.iter().find(|d| d.0 == r).unwrap().1;
        assert_eq!(dropped(dns, DropReason::Congested), 1);
        assert_eq!(dropped(dns, DropReason::NoRoute), 0);
        assert_eq!(dropped(&snap[0], DropReason::NoFlow), 1);
        assert_eq!(dns.dropped.len(), DropReason::ALL.len());
    }

    #[test]
    fn keys_past_the_limit_count_together() {
        let s = UdpStats::default();
        for i in 0..MAX_KEYS + 5 {
            s.count(&format!("k{i}"), FlowRole::Egress, Direction::Forward, 1);
        }
        let snap = s.snapshot();
        assert_eq!(snap.len(), MAX_KEYS + 1);
        let other = snap.iter().find(|k| k.key == OTHER_KEY).unwrap();
        assert_eq!(other.forward, vec![(FlowRole::Egress, 5)]);
    }

    #[test]
    fn a_full_socket_buffer_shows_as_socket_buffer_drops() {
        // A socket nobody reads, with a small buffer, sent more than it holds.
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sock = socket2::SockRef::from(&rx);
        sock.set_recv_buffer_size(4096).unwrap();
        let s = UdpStats::default();
        let id = s.watch_socket("dns", socket_inode(&rx).unwrap());
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            tx.send_to(&[7u8; 512], rx.local_addr().unwrap()).unwrap();
        }
        let snap = s.snapshot();
        let dropped = snap[0]
            .dropped
            .iter()
            .find(|d| d.0 == DropReason::SocketBuffer)
            .unwrap()
            .1;
        assert!(dropped > 0, "kernel drops counted: {snap:?}");
        s.unwatch(id);
        // Counted once, not again after the socket is no longer watched.
        let again = s.snapshot()[0]
            .dropped
            .iter()
            .find(|d| d.0 == DropReason::SocketBuffer)
            .unwrap()
            .1;
        assert_eq!(again, dropped);
    }
}
