//! Backend-local lists whose entries belong to the (sub)transaction that made them: the
//! transaction identity, and credits spent. A subtransaction's abort takes its entries (and those
//! of subtransactions it contained, which have larger ids); its commit hands them to its parent.

/// Remove and return the entries made in subtransaction `sub` or any inside it.
pub fn abort<T>(entries: &mut Vec<(u32, T)>, sub: u32) -> Vec<T> {
    let (gone, kept): (Vec<_>, Vec<_>) = entries.drain(..).partition(|(s, _)| *s >= sub);
    *entries = kept;
    gone.into_iter().map(|(_, t)| t).collect()
}

/// Hand the entries of committed subtransaction `sub` to `parent`.
pub fn commit<T>(entries: &mut [(u32, T)], sub: u32, parent: u32) {
    for (s, _) in entries.iter_mut().filter(|(s, _)| *s == sub) {
        *s = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_takes_the_subtransaction_and_what_it_contained() {
        let mut v = vec![(1, 'a'), (2, 'b'), (3, 'c'), (2, 'd')];
        assert_eq!(abort(&mut v, 2), vec!['b', 'c', 'd']);
        assert_eq!(v, vec![(1, 'a')]);
    }

    #[test]
    fn commit_hands_entries_to_the_parent() {
        let mut v = vec![(1, 'a'), (3, 'b')];
        commit(&mut v, 3, 2);
        assert_eq!(v, vec![(1, 'a'), (2, 'b')]);
        assert_eq!(abort(&mut v, 2), vec!['b']);
    }
}
