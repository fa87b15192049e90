//! The uids sandboxes run as: one per sandbox, from the configured range.

use std::collections::HashSet;

pub(super) struct UidPool {
    base: u32,
    count: u32,
    next: u32,
    used: HashSet<u32>,
}

impl UidPool {
    pub(super) fn new(base: u32, count: u32) -> UidPool {
        UidPool {
            base,
            count: count.max(1),
            next: 0,
            used: HashSet::new(),
        }
    }

    /// Hands out uids round-robin so a just-freed uid is not reused at once.
    pub(super) fn alloc(&mut self) -> Option<u32> {
        for i in 0..self.count {
            let uid = self.base + (self.next + i) % self.count;
            if self.used.insert(uid) {
                self.next = (uid - self.base + 1) % self.count;
                return Some(uid);
            }
        }
        None
    }

    pub(super) fn free(&mut self, uid: u32) {
        self.used.remove(&uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_pool_round_robin_and_exhaustion() {
        let mut p = UidPool::new(100, 3);
        assert_eq!(p.alloc(), Some(100));
        assert_eq!(p.alloc(), Some(101));
        p.free(100);
        assert_eq!(p.alloc(), Some(102));
        assert_eq!(p.alloc(), Some(100));
        assert_eq!(p.alloc(), None);
    }
}
