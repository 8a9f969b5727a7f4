//! Resets, refusals, balancing, failover, retries and reconciliation.

use super::*;
