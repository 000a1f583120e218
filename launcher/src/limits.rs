//! Connection limits: `--max-connections` (open client connections, counted from accept to
//! close) and `--max-connections-per-ip` (per real client address). A connection over a limit
//! gets `503` with `Retry-After` as soon as its request head is read, with no auth or token
//! work; open connections are never touched.
//!
//! The counts are shared by all connections of a server: an atomic for the total, a map
//! behind a mutex for the per-address counts, each touched once when a connection starts and
//! once when it ends (never per frame).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The limits of one server and what is open now.
#[derive(Debug, Default)]
pub struct Limits {
    max: Option<usize>,
    max_per_ip: Option<usize>,
    open: AtomicUsize,
    /// The most open at once since [`Limits::take_peak`] last looked.
    peak: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// An admitted connection's place in a count; freed on drop.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    ip: Option<IpAddr>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// `--max-connections`.
    Total(usize),
    /// `--max-connections-per-ip`.
    PerIp(usize),
}

impl std::fmt::Display for Over {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Over::Total(max) => write!(f, "--max-connections {max} reached"),
            Over::PerIp(max) => write!(f, "--max-connections-per-ip {max} reached for this client"),
        }
    }
}

impl Limits {
    /// Limits from the command line (`None`: unlimited).
    pub fn new(max: Option<usize>, max_per_ip: Option<usize>) -> Arc<Limits> {
        Arc::new(Limits {
            max,
            max_per_ip,
            ..Limits::default()
        })
    }

    /// Takes a place in the total count (at accept, before the request is read).
    pub fn admit(self: &Arc<Self>) -> Result<Slot, Over> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| match self.max {
                Some(max) if open >= max => None,
                _ => Some(open + 1),
            });
        match taken {
            Ok(before) => {
                self.peak.fetch_max(before + 1, Ordering::AcqRel);
                Ok(Slot {
                    limits: Arc::clone(self),
                    ip: None,
                })
            }
            Err(_) => Err(Over::Total(self.max.unwrap_or(0))),
        }
    }

    /// Whether the total limit is reached (for `/readyz`).
    pub fn full(&self) -> bool {
        self.max
            .is_some_and(|max| self.open.load(Ordering::Acquire) >= max)
    }

    /// Open client connections now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The most connections open at once since the last call (at least as many as are open
    /// now), so that a spike that came and went between two looks is still seen.
    pub fn take_peak(&self) -> usize {
        let open = self.open();
        self.peak.swap(open, Ordering::AcqRel).max(open)
    }
}

impl Slot {
    /// Counts this connection for client `ip` too, once the real client is known.
    pub fn assign(&mut self, ip: IpAddr) -> Result<(), Over> {
        let Some(max) = self.limits.max_per_ip else {
            return Ok(());
        };
        if self.ip.is_some() {
            return Ok(());
        }
        let mut per_ip = self
            .limits
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= max {
            if *count == 0 {
                per_ip.remove(&ip);
            }
            return Err(Over::PerIp(max));
        }
        *count += 1;
        self.ip = Some(ip);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .limits
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_limit_admits_up_to_max_and_frees_on_drop() {
        let limits = Limits::new(Some(2), None);
        let a = limits.admit().unwrap();
        let _b = limits.admit().unwrap();
        assert!(limits.full());
        assert_eq!(limits.admit().unwrap_err(), Over::Total(2));
        drop(a);
        assert!(!limits.full());
        assert!(limits.admit().is_ok());
    }

    #[test]
    fn the_peak_keeps_a_spike_that_closed_before_the_look() {
        let limits = Limits::new(None, None);
        let spike: Vec<Slot> = (0..5).map(|_| limits.admit().unwrap()).collect();
        let kept = limits.admit().unwrap();
        drop(spike);
        assert_eq!(limits.take_peak(), 6);
        // The next look starts from what is open then.
        assert_eq!(limits.take_peak(), 1);
        drop(kept);
        assert_eq!(limits.take_peak(), 1);
        assert_eq!(limits.take_peak(), 0);
    }

    #[test]
    fn the_per_ip_limit_counts_each_address_apart() {
        let limits = Limits::new(None, Some(1));
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        let mut a = limits.admit().unwrap();
        a.assign(one).unwrap();
        let mut b = limits.admit().unwrap();
        assert_eq!(b.assign(one).unwrap_err(), Over::PerIp(1));
        b.assign(two).unwrap();
        drop(a);
        let mut c = limits.admit().unwrap();
        c.assign(one).unwrap();
        drop((b, c));
        assert!(limits.per_ip.lock().unwrap().is_empty());
        assert_eq!(limits.open(), 0);
    }

    #[test]
    fn unlimited_admits_everything() {
        let limits = Limits::new(None, None);
        let slots: Vec<Slot> = (0..1000).map(|_| limits.admit().unwrap()).collect();
        assert!(!limits.full());
        assert_eq!(limits.open(), 1000);
        drop(slots);
    }
}
