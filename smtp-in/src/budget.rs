//! The memory every session's message data may take together (`max-data-in-flight-bytes`). A
//! session holds a [`Reservation`] while it reads a message and until the message is delivered
//! or dropped; the reservation covers the buffer's whole capacity, so what is counted is what is
//! allocated. Past the budget a session is refused (`452 4.3.1` before the data, `421 4.3.2`
//! during it), never killed for memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::metrics;

/// How much a buffer grows by at least when it must grow (fewer reallocations and fewer
/// updates of the shared count); clamped to what the message may still take.
const STEP: usize = 64 * 1024;

/// The budget shared by every session of one process.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes not held by anyone now.
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used.load(Ordering::Relaxed))
    }

    /// Bytes held now, by every reservation together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation, to grow as data comes.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            held: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok();
        if ok {
            metrics::DATA_IN_FLIGHT.add(n as i64);
        }
        ok
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        metrics::DATA_IN_FLIGHT.sub(n as i64);
    }
}

/// Part of the budget held by one message; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Budget>,
    held: usize,
}

impl Reservation {
    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Hold at least `total` bytes; false (and nothing changed) when the budget has no room.
    pub fn grow_to(&mut self, total: usize) -> bool {
        if total <= self.held {
            return true;
        }
        if !self.budget.take(total - self.held) {
            return false;
        }
        self.held = total;
        true
    }

    /// Make room in `buf` for `extra` more bytes, its new capacity covered by this reservation.
    /// The buffer grows by doubling (at least [`STEP`]) up to `max`, the most it may ever hold,
    /// or by just enough when the budget has no room for more. False when not even that fits:
    /// `buf` is left as it was.
    pub fn make_room(&mut self, buf: &mut Vec<u8>, extra: usize, max: usize) -> bool {
        let need = buf.len().saturating_add(extra);
        if need <= buf.capacity() {
            return self.grow_to(buf.capacity());
        }
        let generous = buf
            .capacity()
            .saturating_mul(2)
            .max(buf.capacity().saturating_add(STEP))
            .min(max)
            .max(need);
        for cap in [generous, need] {
            if self.grow_to(cap) {
                buf.reserve_exact(cap - buf.len());
                // The allocator may have given more than asked; count that too, if it fits.
                self.grow_to(buf.capacity());
                return true;
            }
        }
        false
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.give_back(self.held);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_back_on_drop() {
        let b = Budget::new(1000);
        let mut r1 = b.reservation();
        assert!(r1.grow_to(600));
        let mut r2 = b.reservation();
        assert!(!r2.grow_to(500), "600 + 500 is over 1000");
        assert_eq!(r2.held(), 0);
        assert!(r2.grow_to(400));
        assert_eq!((b.used(), b.available()), (1000, 0));
        assert!(r1.grow_to(300), "holding more already");
        drop(r1);
        assert_eq!(b.used(), 400);
        drop(r2);
        assert_eq!((b.used(), b.available()), (0, 1000));
    }

    #[test]
    fn a_buffer_grows_only_inside_the_budget() {
        let b = Budget::new(10_000);
        let mut r = b.reservation();
        let mut buf = Vec::new();
        assert!(r.make_room(&mut buf, 100, 8_000));
        assert!(buf.capacity() >= 100 && r.held() >= buf.capacity());
        assert!(r.held() <= 8_000, "never more than the message may hold");
        buf.resize(100, b'x');
        // Up to the budget, one exact step at a time once doubling does not fit.
        while r.make_room(&mut buf, 1000, 100_000) {
            buf.resize(buf.len() + 1000, b'x');
            assert!(r.held() >= buf.capacity() && b.used() <= 10_000);
        }
        assert!(buf.len() > 8_000, "{}", buf.len());
        let before = (buf.len(), buf.capacity());
        assert!(!r.make_room(&mut buf, 10_000, 100_000));
        assert_eq!((buf.len(), buf.capacity()), before);
        drop(r);
        assert_eq!(b.used(), 0);
    }
}
