//! The harness's fault tools, on a [`Net`]: cuts and heals between two sites, blackholes, packet
//! loss and packet counters (nftables in the sites' namespaces and the hub's bridge), link
//! flaps (`ip link set`) and bandwidth limits (`tc tbf`).

use std::process::Command;

use super::{Net, sh, sh_quiet, text};

impl Net {
    /// Runs an nft script inside the site's namespace.
    pub fn nft(&self, name: &str, script: &str) {
        let o = self.exec(name, "nft", &[script]);
        assert!(
            o.status.success(),
            "nft at {name} failed: {}\n{script}",
            text(&o)
        );
    }

    /// Drops all traffic between `a` and `b` on the hub, both directions, at both ends.
    pub fn cut(&self, a: &str, b: &str) {
        let (ia, ib) = (self.site(a).hub_ip, self.site(b).hub_ip);
        self.nft(a, &format!("add element inet skiff cut {{ {ib} }}"));
        self.nft(b, &format!("add element inet skiff cut {{ {ia} }}"));
    }

    /// Undoes [`Net::cut`].
    pub fn heal(&self, a: &str, b: &str) {
        let (ia, ib) = (self.site(a).hub_ip, self.site(b).hub_ip);
        self.nft(a, &format!("delete element inet skiff cut {{ {ib} }}"));
        self.nft(b, &format!("delete element inet skiff cut {{ {ia} }}"));
    }

    /// Drops every packet in and out of the site's hub veth (the interface stays up).
    pub fn blackhole(&self, name: &str) {
        self.nft(name, "add element inet skiff holes { \"hub0\" }");
    }

    /// Undoes [`Net::blackhole`].
    pub fn restore(&self, name: &str) {
        self.nft(name, "delete element inet skiff holes { \"hub0\" }");
    }

    /// Drops `percent` % of the packets to and from the site on the wire (in the bridge),
    /// at random (0 ends the loss). Replaces any earlier loss setting of the site. Packets
    /// are MTU-sized there (senders segment), so this is per-packet loss for TCP and QUIC.
    pub fn loss(&self, name: &str, percent: f64) {
        let port = &self.site(name).bridge_port;
        let chain = format!("loss_{port}");
        let mut script = format!(
            "add table bridge skiff\n\
             add chain bridge skiff {chain} {{ type filter hook forward priority 0; policy accept; }}\n\
             flush chain bridge skiff {chain}\n"
        );
        let per_million = (percent * 10_000.0).round() as u64;
        if per_million > 0 {
            // Every sender segments (as a real NIC puts MTU-sized packets on the wire), so the
            // bridge drops single packets, not 64 KiB TSO/GSO batches. Costs throughput, so
            // only once some loss is asked for.
            for s in &self.sites {
                sh(
                    "ip",
                    &[
                        "-n",
                        &s.ns,
                        "link",
                        "set",
                        "dev",
                        "hub0",
                        "gso_max_segs",
                        "1",
                    ],
                );
            }
            script += &format!(
                "add rule bridge skiff {chain} iifname \"{port}\" numgen random mod 1000000 < {per_million} counter drop\n\
                 add rule bridge skiff {chain} oifname \"{port}\" numgen random mod 1000000 < {per_million} counter drop\n"
            );
        }
        let o = Command::new("ip")
            .args(["netns", "exec", &self.hub, "nft", &script])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "nft in the hub failed: {}\n{script}",
            text(&o)
        );
    }

    /// Packets dropped so far by [`Net::loss`] to and from the site.
    pub fn lost(&self, name: &str) -> u64 {
        let chain = format!("loss_{}", self.site(name).bridge_port);
        let o = Command::new("ip")
            .args([
                "netns", "exec", &self.hub, "nft", "list", "chain", "bridge", "skiff", &chain,
            ])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "packets")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum()
    }

    /// Sets the site's hub veth administratively down (the bridge end sees no carrier).
    pub fn link_down(&self, name: &str) {
        sh(
            "ip",
            &["-n", &self.site(name).ns, "link", "set", "hub0", "down"],
        );
    }

    /// Undoes [`Net::link_down`].
    pub fn link_up(&self, name: &str) {
        sh(
            "ip",
            &["-n", &self.site(name).ns, "link", "set", "hub0", "up"],
        );
    }

    /// Limits the site's hub veth to `kbit` kbit/s in each direction (token bucket on both
    /// ends of the veth). Replaces an earlier throttle.
    pub fn throttle(&self, name: &str, kbit: u64) {
        let s = self.site(name);
        let rate = format!("{kbit}kbit");
        // Burst: 20 ms of traffic, at least 16 KiB; queue: up to 200 ms.
        let burst = (kbit * 1000 / 8 / 50).max(16 * 1024).to_string();
        for (ns, dev) in [(&s.ns, "hub0"), (&self.hub, s.bridge_port.as_str())] {
            sh(
                "tc",
                &[
                    "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", &rate,
                    "burst", &burst, "latency", "200ms",
                ],
            );
        }
    }

    /// Undoes [`Net::throttle`].
    pub fn unthrottle(&self, name: &str) {
        let s = self.site(name);
        sh_quiet("tc", &["-n", &s.ns, "qdisc", "del", "dev", "hub0", "root"]);
        sh_quiet(
            "tc",
            &[
                "-n",
                &self.hub,
                "qdisc",
                "del",
                "dev",
                &s.bridge_port,
                "root",
            ],
        );
    }

    /// Starts counting packets `from` sends to `to`'s hub address (see [`Net::packets`]).
    pub fn watch(&mut self, from: &str, to: &str) {
        let counter = format!("to_{to}");
        let ip = self.site(to).hub_ip;
        self.nft(
            from,
            &format!(
                "add counter inet skiff {counter}\n\
                 add rule inet skiff watch_out ip daddr {ip} counter name \"{counter}\""
            ),
        );
        self.watches.push((from.into(), to.into()));
    }

    /// Packets `from` sent (or tried to send: counted before any drop) to `to`'s hub address
    /// since [`Net::watch`].
    pub fn packets(&self, from: &str, to: &str) -> u64 {
        let o = self.exec(
            from,
            "nft",
            &["list", "counter", "inet", "skiff", &format!("to_{to}")],
        );
        assert!(
            o.status.success(),
            "no counter {from} -> {to}: {}",
            text(&o)
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        out.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the counter: {out}"))
    }
}
