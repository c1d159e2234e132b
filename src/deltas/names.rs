//! Device names, each stored once, and dropped again when nothing refers to them.
//!
//! A device keeps the id of its current name and each waiting reading the id of its own. A
//! device whose name changes (a counter in the name, a firmware that appends a version) would
//! otherwise grow the store with every reading, so [`Names::compact`] rebuilds it from the
//! names still referenced once it holds as much garbage as live text. Compaction runs at epoch
//! boundaries and depends only on the state, so a replayed epoch saves the same bytes.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// Index into [`Names`]: the offset of the name's length prefix.
pub(crate) type NameId = u32;

/// Bytes of the length before each name in [`Names::text`].
const NAME_LENGTH_BYTES: usize = 4;

/// Text below which compaction is not worth a pass over the devices.
const COMPACT_MIN_BYTES: usize = 1 << 20;

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Names {
    /// Each name as its byte length (4 bytes, little endian) followed by its UTF-8 bytes. A
    /// name's id is the offset of its length, so checking a reading's name against its
    /// device's touches one place in memory, not an index and then the text.
    text: Vec<u8>,
    /// Names taken on by renames, so a device flipping between names adds nothing. Saved
    /// sorted: a hash map's order depends on its history, and a replayed epoch must write the
    /// same checkpoint bytes as the run it replays.
    #[serde(serialize_with = "sorted_map")]
    renamed: FxHashMap<Box<str>, NameId>,
    /// Length of `text` after the last compaction: compaction runs when the text has doubled
    /// since, so its cost is amortised over the names added.
    compacted_len: usize,
}

fn sorted_map<S: serde::Serializer>(
    map: &FxHashMap<Box<str>, NameId>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.iter().collect::<std::collections::BTreeMap<_, _>>())
}

impl Names {
    /// The UTF-8 bytes of name `id`.
    pub(crate) fn bytes(&self, id: NameId) -> &[u8] {
        let start = id as usize + NAME_LENGTH_BYTES;
        let mut length = [0; NAME_LENGTH_BYTES];
        length.copy_from_slice(&self.text[id as usize..start]);
        &self.text[start..start + u32::from_le_bytes(length) as usize]
    }

    /// Stores a name and returns its id.
    pub(crate) fn add(&mut self, name: &str) -> NameId {
        let id = self.text.len() as NameId;
        self.text
            .extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.text.extend_from_slice(name.as_bytes());
        id
    }

    /// The id of `name` for a device that takes it on, stored once however often devices
    /// switch to it.
    pub(crate) fn rename(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.renamed.get(name) {
            return id;
        }
        let id = self.add(name);
        self.renamed.insert(name.into(), id);
        id
    }

    /// The names text, for laying out an epoch elsewhere (renames are not needed there).
    pub(crate) fn snapshot(&self) -> Names {
        Names {
            text: self.text.clone(),
            renamed: FxHashMap::default(),
            compacted_len: 0,
        }
    }

    /// Whether the text has grown enough since the last compaction to be worth one.
    pub(crate) fn wants_compaction(&self) -> bool {
        self.text.len() >= COMPACT_MIN_BYTES && self.text.len() >= 2 * self.compacted_len
    }

    /// Keeps only the names that `ids` visits, in the order it first visits them, and
    /// rewrites each visited id to the name's new id. `ids` must visit every id still in use.
    pub(crate) fn compact(&mut self, ids: impl FnOnce(&mut dyn FnMut(&mut NameId))) {
        let mut text = Vec::new();
        let mut moved: FxHashMap<NameId, NameId> = FxHashMap::default();
        ids(&mut |id: &mut NameId| {
            let old = *id;
            *id = *moved.entry(old).or_insert_with(|| {
                let new = text.len() as NameId;
                let start = old as usize;
                let end = start + NAME_LENGTH_BYTES + self.bytes(old).len();
                text.extend_from_slice(&self.text[start..end]);
                new
            });
        });
        self.renamed.retain(|_, id| match moved.get(id) {
            Some(&new) => {
                *id = new;
                true
            }
            None => false,
        });
        self.renamed.shrink_to_fit();
        text.shrink_to_fit();
        self.text = text;
        self.compacted_len = self.text.len();
    }

    /// Bytes of name text held.
    pub(crate) fn text_len(&self) -> usize {
        self.text.len()
    }

    /// How many names are stored.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        let mut id = 0;
        let mut count = 0;
        while id < self.text.len() {
            id += NAME_LENGTH_BYTES + self.bytes(id as NameId).len();
            count += 1;
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_keeps_referenced_names_and_renumbers_them() {
        let mut names = Names::default();
        let a = names.add("a");
        let b = names.rename("bb");
        let c = names.rename("ccc");
        let mut live = [c, a, c];
        names.compact(|visit| live.iter_mut().for_each(visit));
        assert_eq!(names.count(), 2);
        assert_eq!(names.bytes(live[0]), b"ccc");
        assert_eq!(names.bytes(live[1]), b"a");
        assert_eq!(live[0], live[2]);
        assert_ne!(b, live[0]);
        // "bb" is gone from the renames too; "ccc" is still found there.
        assert_eq!(names.rename("ccc"), live[0]);
        assert_eq!(names.count(), 2);
    }
}
