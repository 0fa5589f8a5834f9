//! The visibility rule, written once: an entry born before a purge, or before the last
//! invalidation of one of its tags, is never seen.
//!
//! A store does not apply the rule. Each read returns a [`Read`]: the entry as stored and the
//! [`Marks`] the store's invalidation records hold for it (the purge floor, and either the
//! stamps of the entry's tags or the stamp before which no tag was invalidated). The cache
//! applies the rule to every read with [`Read::visible`]; the entry cannot be taken out of a
//! `Read` any other way. A store that reports no records for an entry's tags hides it: a
//! missing record never revives an entry.

use std::sync::Arc;

use arrayvec::ArrayVec;

use crate::Entry;

/// How many tag stamps a [`Marks`] holds without allocating.
const INLINE_STAMPS: usize = 4;

/// What one read found: the entry as stored, and the marks that decide whether it may be seen.
#[derive(Debug, Clone)]
#[must_use = "a read's entry is reached through `visible`"]
pub struct Read {
    entry: Option<Arc<Entry>>,
    marks: Marks,
}

/// What a store's invalidation records say about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    /// Entries born before this stamp were purged.
    floor: u64,
    tags: TagMarks,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TagMarks {
    /// No tag was invalidated at or after this stamp (the store's newest tag invalidation).
    NoneSince(u64),
    /// The stamps of the entry's tags, in the order of [`Entry::tags`].
    Stamps(ArrayVec<u64, INLINE_STAMPS>),
    /// The same, for an entry with many tags.
    ManyStamps(Vec<u64>),
}

impl Read {
    /// A read of `entry` (`None`: nothing is stored under the key) with its `marks`.
    pub fn new(entry: Option<Arc<Entry>>, marks: Marks) -> Self {
        Read { entry, marks }
    }

    /// Nothing is stored under the key.
    pub fn miss() -> Self {
        Read {
            entry: None,
            marks: Marks::newest_tag_invalidation(0, 0),
        }
    }

    /// The entry, unless an invalidation hides it: hidden when born before the purge floor,
    /// or before the stamp of one of its tags (when a tag may have been invalidated since it
    /// was born), or when the marks do not cover all of its tags.
    #[inline]
    pub fn visible(self) -> Option<Arc<Entry>> {
        self.entry.filter(|e| self.marks.allow(e))
    }

    /// Whether the read found an entry that [`visible`](Self::visible) would return.
    pub fn is_visible(&self) -> bool {
        self.visible_entry().is_some()
    }

    /// The entry [`visible`](Self::visible) would return, borrowed (for a store's own
    /// bookkeeping, such as filling an L1 from what its L2 answered).
    pub(crate) fn visible_entry(&self) -> Option<&Arc<Entry>> {
        self.entry.as_ref().filter(|e| self.marks.allow(e))
    }

    /// Whether an entry was stored under the key, visible or not (for stores' own
    /// bookkeeping: an L1 that holds a hidden entry reads its L2 instead).
    pub fn is_stored(&self) -> bool {
        self.entry.is_some()
    }
}

impl Marks {
    /// Marks for a store whose newest tag invalidation has the stamp `newest`: an entry born
    /// at or after it needs no tag records; one born before it is hidden (give its tags'
    /// stamps with [`tag_stamps`](Self::tag_stamps) instead).
    pub fn newest_tag_invalidation(floor: u64, newest: u64) -> Self {
        Marks {
            floor,
            tags: TagMarks::NoneSince(newest),
        }
    }

    /// Marks with the stamp of each of the entry's tags, in the order of [`Entry::tags`]
    /// (0 for a tag never invalidated).
    pub fn tag_stamps(floor: u64, stamps: impl IntoIterator<Item = u64>) -> Self {
        let mut inline = ArrayVec::new();
        let mut stamps = stamps.into_iter();
        for stamp in stamps.by_ref() {
            if let Err(full) = inline.try_push(stamp) {
                let mut many: Vec<u64> = inline.to_vec();
                many.push(full.element());
                many.extend(stamps);
                return Marks {
                    floor,
                    tags: TagMarks::ManyStamps(many),
                };
            }
        }
        Marks {
            floor,
            tags: TagMarks::Stamps(inline),
        }
    }

    /// The rule itself: whether these marks let `entry` be seen.
    pub(crate) fn allow(&self, entry: &Entry) -> bool {
        if entry.born < self.floor {
            return false;
        }
        let stamps: &[u64] = match &self.tags {
            TagMarks::NoneSince(newest) => return *newest <= entry.born,
            TagMarks::Stamps(stamps) => stamps,
            TagMarks::ManyStamps(stamps) => stamps,
        };
        stamps.len() == entry.tags.len() && stamps.iter().all(|&stamp| stamp <= entry.born)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(born: u64, tags: usize) -> Arc<Entry> {
        let mut e = Entry::for_tests();
        e.born = born;
        e.tags = (0..tags)
            .map(|i| format!("t{i}").into_boxed_str())
            .collect();
        Arc::new(e)
    }

    fn seen(entry: &Arc<Entry>, marks: Marks) -> bool {
        Read::new(Some(Arc::clone(entry)), marks)
            .visible()
            .is_some()
    }

    #[test]
    fn born_before_a_purge_or_a_tags_invalidation_is_hidden() {
        let e = entry(10, 2);
        assert!(seen(&e, Marks::newest_tag_invalidation(10, 10)));
        assert!(!seen(&e, Marks::newest_tag_invalidation(11, 0)), "purged");
        assert!(
            !seen(&e, Marks::newest_tag_invalidation(0, 11)),
            "a tag may have been invalidated since: without its stamps, hidden"
        );
        assert!(seen(&e, Marks::tag_stamps(0, [3, 10])));
        assert!(
            !seen(&e, Marks::tag_stamps(0, [3, 11])),
            "one tag invalidated after"
        );
        assert!(
            !seen(&e, Marks::tag_stamps(0, [3])),
            "a tag without its record"
        );
        assert!(Read::miss().visible().is_none());
    }

    #[test]
    fn many_tags_are_judged_like_few() {
        let e = entry(10, 9);
        assert!(seen(&e, Marks::tag_stamps(0, [1; 9])));
        let mut stamps = [1; 9];
        stamps[8] = 12;
        assert!(!seen(&e, Marks::tag_stamps(0, stamps)));
        assert!(!seen(&e, Marks::tag_stamps(0, [1; 8])));
    }
}
