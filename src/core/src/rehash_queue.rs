//! Rehashes that could not be written where they happened (a READ ONLY transaction), kept in
//! shared memory for the usage worker of their database.
//!
//! Losing one is harmless: the key is still stored with its bcrypt hash, and its next verify in
//! a read-write transaction (or the next queued one) rehashes it. So the queue is a small ring
//! that overwrites its oldest entry rather than refusing or growing.

use crate::digest::DIGEST_LEN;

pub const QUEUE_LEN: usize = 64;

/// A key's SHA-256 and the last characters shown in listings, learnt when its bcrypt matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Rehash {
    /// 0 marks a free entry.
    pub db: u32,
    pub key_id: i64,
    pub digest: [u8; DIGEST_LEN],
    pub last4: [u8; 4],
    pub last4_len: u8,
}

impl Rehash {
    pub const FREE: Rehash = Rehash {
        db: 0,
        key_id: 0,
        digest: [0; DIGEST_LEN],
        last4: [0; 4],
        last4_len: 0,
    };

    pub fn new(db: u32, key_id: i64, digest: [u8; DIGEST_LEN], last: &str) -> Rehash {
        let mut last4 = [0u8; 4];
        let n = last.len().min(4);
        last4[..n].copy_from_slice(&last.as_bytes()[last.len() - n..]);
        Rehash {
            db,
            key_id,
            digest,
            last4,
            last4_len: n as u8,
        }
    }

    pub fn last4(&self) -> String {
        String::from_utf8_lossy(&self.last4[..self.last4_len as usize]).into_owned()
    }
}

#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Queue {
    pub entries: [Rehash; QUEUE_LEN],
    pub next: u32,
}

impl Queue {
    pub const EMPTY: Queue = Queue {
        entries: [Rehash::FREE; QUEUE_LEN],
        next: 0,
    };

    /// Queue `r`, once per key: a key verified again before the worker ran is not queued twice.
    pub fn push(&mut self, r: Rehash) {
        if r.db == 0 {
            return;
        }
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.db == r.db && e.key_id == r.key_id)
        {
            *e = r;
            return;
        }
        let i = self.next as usize % QUEUE_LEN;
        self.entries[i] = r;
        self.next = ((i + 1) % QUEUE_LEN) as u32;
    }

    /// Take every entry of database `db`, leaving the others.
    pub fn take(&mut self, db: u32) -> Vec<Rehash> {
        let mut taken = Vec::new();
        for e in self.entries.iter_mut().filter(|e| e.db == db && db != 0) {
            taken.push(*e);
            *e = Rehash::FREE;
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(db: u32, id: i64) -> Rehash {
        Rehash::new(db, id, [id as u8; DIGEST_LEN], "cafe1234")
    }

    #[test]
    fn a_key_is_queued_once_and_taken_by_its_database_only() {
        let mut q = Queue::EMPTY;
        q.push(r(1, 10));
        q.push(r(1, 10));
        q.push(r(2, 10));
        assert_eq!(q.take(2), vec![r(2, 10)]);
        let mine = q.take(1);
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].last4(), "1234");
        assert!(q.take(1).is_empty());
        q.push(Rehash::FREE);
        assert!(q.entries.iter().all(|e| e.db == 0));
    }

    #[test]
    fn a_full_queue_forgets_its_oldest_entries() {
        let mut q = Queue::EMPTY;
        for id in 0..(QUEUE_LEN as i64 + 5) {
            q.push(r(7, id));
        }
        let ids: Vec<i64> = q.take(7).iter().map(|e| e.key_id).collect();
        assert_eq!(ids.len(), QUEUE_LEN);
        assert!(!ids.contains(&0) && !ids.contains(&4));
        assert!(ids.contains(&5) && ids.contains(&(QUEUE_LEN as i64 + 4)));
    }
}
