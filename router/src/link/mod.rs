//! Links between routers: transports, per-link driver tasks, dialers and the link port.
