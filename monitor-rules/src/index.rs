//! Which rules an event is tested against: for each syscall, the rules that can fire on it,
//! and every path glob of those rules compiled into one set, so an event's paths are matched
//! once for all its rules instead of once per rule.

use std::{
    collections::HashMap,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use globset::{Candidate, GlobSet, GlobSetBuilder};
use monitor_common::{event::CAPTURE_ENTRIES, syscall::SYSCALLS};
use smallvec::SmallVec;

use super::{Rule, matcher::Facts};

/// For each syscall number, its [`Candidates`]; syscalls with the same rules share one.
#[derive(Debug, Clone, Default)]
pub(super) struct Index(Vec<Option<Arc<Candidates>>>);

impl Index {
    pub(super) fn build(rules: &[Arc<Rule>]) -> Self {
        let mut shared: HashMap<Vec<u16>, Arc<Candidates>> = HashMap::new();
        let mut index = vec![None; CAPTURE_ENTRIES as usize];
        for sc in SYSCALLS {
            let Some(slot) = index.get_mut(sc.nr as usize) else {
                continue;
            };
            let about: Vec<u16> = (0..rules.len())
                .filter(|&i| rules[i].is_about(sc))
                .map(|i| i as u16)
                .collect();
            if about.is_empty() {
                continue;
            }
            let candidates = shared
                .entry(about)
                .or_insert_with_key(|about| Arc::new(Candidates::new(about.clone(), rules)));
            *slot = Some(candidates.clone());
        }
        Index(index)
    }

    /// The rules that can fire on syscall number `nr`, if any.
    pub(super) fn get(&self, nr: u32) -> Option<&Candidates> {
        self.0.get(nr as usize)?.as_deref()
    }
}

/// The rules about one syscall (indexes into the rule set), and their path globs.
#[derive(Debug)]
pub(super) struct Candidates {
    /// Unique among all candidate lists ever built (what a [`PathMemo`] keys them by).
    id: u64,
    pub(super) rules: Vec<u16>,
    /// `None` when no candidate has a path condition, or the combined set could not be built
    /// (then each rule's own globs judge).
    paths: Option<PathGlobs>,
    /// The positions in `rules` of the candidates without `path` globs: the only ones that
    /// can fire on an event whose paths match no glob at all (most events: a loop's data
    /// file, a server's model).
    pathless: Vec<u16>,
}

#[derive(Debug)]
struct PathGlobs {
    set: GlobSet,
    /// For each candidate, in the order of `rules`: the ids in `set` of its `path` globs, and
    /// of its `path_not` globs.
    spans: Vec<[Range<usize>; 2]>,
    /// For each glob id in `set`: the candidate (its position in `rules`) whose `path` glob it
    /// is; `None` for a `path_not` glob.
    path_owner: Vec<Option<u16>>,
}

/// The candidates worth testing on an event (see [`Candidates::worth_testing`]).
pub(super) enum Worth<'a> {
    /// All of them (so many).
    All(usize),
    /// Those without `path` globs (the event's paths matched none).
    Pathless(&'a [u16]),
    /// Those and the ones with a `path` glob the event's paths matched (apart from them).
    Some {
        pathless: &'a [u16],
        hit: SmallVec<[u16; 8]>,
    },
}

impl Worth<'_> {
    /// The positions to test, in order: the two lists merged as they are walked, not into a
    /// third list first (a policy's rule about the event's path is one such candidate on
    /// every event).
    pub(super) fn slots(&self) -> Slots<'_> {
        match self {
            Worth::All(n) => Slots::All(0..*n),
            Worth::Pathless(pathless) => Slots::Merged(pathless, &[]),
            Worth::Some { pathless, hit } => Slots::Merged(pathless, hit),
        }
    }
}

/// Positions in a [`Candidates`]' `rules`, in order: all, or two ordered lists apart merged.
pub(super) enum Slots<'a> {
    All(Range<usize>),
    Merged(&'a [u16], &'a [u16]),
}

impl Iterator for Slots<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let (a, b) = match self {
            Slots::All(range) => return range.next(),
            Slots::Merged(a, b) => (a, b),
        };
        let side = match (a.first(), b.first()) {
            (Some(x), Some(y)) if x < y => a,
            (Some(_), Some(_)) | (None, Some(_)) => b,
            (Some(_), None) => a,
            (None, None) => return None,
        };
        let (&first, rest) = side.split_first()?;
        *side = rest;
        Some(first.into())
    }
}

/// The ids of the globs an event's paths matched, found on first need.
pub(super) type Matched = std::cell::OnceCell<SmallVec<[usize; 8]>>;

impl Candidates {
    fn new(rules: Vec<u16>, all: &[Arc<Rule>]) -> Self {
        let mut builder = GlobSetBuilder::new();
        let mut spans = Vec::with_capacity(rules.len());
        let mut next = 0;
        let mut any = false;
        for &i in &rules {
            let matcher = &all[i as usize].matcher;
            let span = [matcher.path_globs(), matcher.path_not_globs()].map(|globs| {
                for glob in globs {
                    builder.add(glob.clone());
                }
                any |= !globs.is_empty();
                next += globs.len();
                next - globs.len()..next
            });
            spans.push(span);
        }
        let paths = any.then(|| builder.build().ok()).flatten().map(|set| {
            let mut path_owner = vec![None; next];
            for (slot, [path, _]) in spans.iter().enumerate() {
                for id in path.clone() {
                    path_owner[id] = Some(slot as u16);
                }
            }
            PathGlobs {
                set,
                spans,
                path_owner,
            }
        });
        let pathless = match &paths {
            Some(paths) => (0..rules.len())
                .filter(|&slot| paths.spans[slot][0].is_empty())
                .map(|slot| slot as u16)
                .collect(),
            None => Vec::new(),
        };
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Candidates {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rules,
            paths,
            pathless,
        }
    }

    /// The positions in `rules` of the candidates worth testing on the event with `facts`
    /// (`None`: all of them): those without `path` globs, and those with one the event's
    /// paths matched; the others' paths cannot hold (see [`Candidates::paths_hold`]). Most
    /// events' paths match no glob at all (a loop's data file, a server's model), and a
    /// policy's rule about a path is one candidate among many. `matched` and `memo` as there.
    pub(super) fn worth_testing(
        &self,
        facts: &Facts,
        matched: &Matched,
        memo: &mut PathMemo,
    ) -> Worth<'_> {
        let Some(paths) = &self.paths else {
            return Worth::All(self.rules.len());
        };
        let ids = self.matched(paths, facts, matched, memo);
        let mut hit: SmallVec<[u16; 8]> = SmallVec::new();
        for &id in ids {
            if let Some(owner) = paths.path_owner[id] {
                hit.push(owner);
            }
        }
        if hit.is_empty() {
            return Worth::Pathless(&self.pathless);
        }
        hit.sort_unstable();
        hit.dedup();
        Worth::Some {
            pathless: &self.pathless,
            hit,
        }
    }

    /// The ids of the globs the event's paths matched, found once per event.
    fn matched<'m>(
        &self,
        paths: &PathGlobs,
        facts: &Facts,
        matched: &'m Matched,
        memo: &mut PathMemo,
    ) -> &'m SmallVec<[usize; 8]> {
        matched.get_or_init(|| {
            let mut ids = SmallVec::new();
            for p in &facts.paths {
                memo.matches_into(self.id, &paths.set, p, &mut ids);
            }
            ids
        })
    }

    /// Whether the path conditions of the candidate at `slot` (a position in `rules`) hold
    /// for the event with `facts`: one of its `path` globs matches one of the paths (or it has
    /// none), and none of its `path_not` globs does. `matched` keeps the event's matches for
    /// the next candidate; `memo`, each path's matches for the next event.
    pub(super) fn paths_hold(
        &self,
        slot: usize,
        rule: &Rule,
        facts: &Facts,
        matched: &Matched,
        memo: &mut PathMemo,
    ) -> bool {
        let Some(paths) = &self.paths else {
            return rule.matcher.paths_hold(facts);
        };
        let [path, path_not] = &paths.spans[slot];
        if path.is_empty() && path_not.is_empty() {
            return true;
        }
        let matched = self.matched(paths, facts, matched, memo);
        let any_in = |span: &Range<usize>| matched.iter().any(|id| span.contains(id));
        (path.is_empty() || any_in(path)) && !any_in(path_not)
    }
}

/// Which globs each path matched, per combined set, kept by a judge from one event to the
/// next: a process reads the same files again and again (a server its model and libraries,
/// a loop its data), and matching a path against every glob costs more than the rest of the
/// judging. Bounded: emptied when full, so a stream of paths never seen again costs a lookup
/// and an insert each, and no memory beyond the bound.
#[derive(Debug, Default)]
pub struct PathMemo {
    by_set: foldhash::HashMap<u64, foldhash::HashMap<Box<str>, SmallVec<[usize; 4]>>>,
    entries: usize,
}

impl PathMemo {
    /// Paths remembered at most.
    const ENTRIES: usize = 4096;
    /// Longer paths are matched every time, not remembered: the memo stays under 1 MiB of
    /// paths whatever a process opens (PATH_MAX is 4096).
    const LONGEST: usize = 256;

    /// Adds to `out` the ids of the globs of `set` (the combined set of candidates `id`) that
    /// `path` matches.
    fn matches_into(&mut self, id: u64, set: &GlobSet, path: &str, out: &mut SmallVec<[usize; 8]>) {
        let find = || {
            let mut ids = Vec::new();
            set.matches_candidate_into(&Candidate::new(path), &mut ids);
            ids
        };
        if path.len() > Self::LONGEST {
            out.extend(find());
            return;
        }
        if self.entries >= Self::ENTRIES {
            self.by_set.clear();
            self.entries = 0;
        }
        let paths = self.by_set.entry(id).or_default();
        match paths.get(path) {
            Some(ids) => out.extend_from_slice(ids),
            None => {
                let ids: SmallVec<[usize; 4]> = find().into_iter().collect();
                out.extend_from_slice(&ids);
                paths.insert(path.into(), ids);
                self.entries += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::RuleSet;

    /// Paths a glob matches (its wildcards filled in), and near misses (a character changed,
    /// a component added).
    fn paths_near(glob: &str) -> Vec<String> {
        let mut filled = vec![String::new()];
        let mut chars = glob.chars().peekable();
        while let Some(c) = chars.next() {
            let pieces: Vec<String> = match c {
                '*' if chars.peek() == Some(&'*') => {
                    chars.next();
                    vec!["".into(), "d/e".into()]
                }
                '*' => vec!["f".into()],
                '?' => vec!["g".into()],
                '[' => {
                    let class: String = chars.by_ref().take_while(|&c| c != ']').collect();
                    vec![
                        class
                            .trim_start_matches(['!', '^'])
                            .chars()
                            .take(1)
                            .collect(),
                    ]
                }
                '{' => {
                    let alternatives: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    alternatives.split(',').map(str::to_owned).collect()
                }
                c => vec![c.to_string()],
            };
            filled = filled
                .iter()
                .flat_map(|f| pieces.iter().map(move |p| format!("{f}{p}")))
                .collect();
        }
        let mut near = Vec::new();
        for f in filled {
            near.push(format!("{f}/x"));
            near.push(format!("/y{f}"));
            near.push(f.replacen('e', "E", 1));
            near.push(f);
        }
        near
    }

    /// The combined set of each syscall's candidates says what each rule's own globs say, for
    /// every rule of the defaults, on paths their globs match and narrowly miss, alone and
    /// in pairs (as a rename gives).
    #[test]
    fn combined_globs_judge_as_each_rules_own() {
        let rules = RuleSet::defaults();
        let mut paths: Vec<String> = rules
            .rules()
            .flat_map(|r| {
                r.matcher
                    .path_globs()
                    .iter()
                    .chain(r.matcher.path_not_globs())
            })
            .flat_map(|g| paths_near(g.glob()))
            .collect();
        paths.extend(["/", "/tmp/model.pkl", "relative/x", "/usr/bin/id"].map(String::from));
        // Longer than the memo keeps.
        let deep = "/d".repeat(PathMemo::LONGEST);
        paths.extend([format!("{deep}/.ssh/id_rsa"), format!("/etc/cron.d{deep}")]);
        let (mut held, mut failed) = (0, 0);
        let mut memo = PathMemo::default();
        for sc in SYSCALLS {
            let Some(candidates) = rules.index.get(sc.nr) else {
                continue;
            };
            let any_globs = candidates.rules.iter().any(|&i| {
                let m = &rules.rules[i as usize].matcher;
                !m.path_globs().is_empty() || !m.path_not_globs().is_empty()
            });
            assert_eq!(candidates.paths.is_some(), any_globs, "{}", sc.name);
            for (first, second) in paths.iter().zip(paths.iter().cycle().skip(7)) {
                for both in [false, true] {
                    let mut facts = Facts::default();
                    facts.paths.push(Cow::Borrowed(first));
                    if both {
                        facts.paths.push(Cow::Borrowed(second));
                    }
                    let matched = Matched::new();
                    let worth = candidates.worth_testing(&facts, &matched, &mut memo);
                    let worth: Vec<usize> = worth.slots().collect();
                    // In the candidates' order, each once: findings come out in that order.
                    assert!(worth.windows(2).all(|w| w[0] < w[1]), "{worth:?}");
                    for (slot, &i) in candidates.rules.iter().enumerate() {
                        let rule = &rules.rules[i as usize];
                        let combined =
                            candidates.paths_hold(slot, rule, &facts, &matched, &mut memo);
                        // A candidate left out as not worth testing is one whose paths fail.
                        if !worth.contains(&slot) {
                            assert!(!combined, "{} on {}: {first}", rule.id(), sc.name);
                        }
                        assert_eq!(
                            combined,
                            rule.matcher.paths_hold(&facts),
                            "{} on {}: {first} {}",
                            rule.id(),
                            sc.name,
                            if both { second.as_str() } else { "" }
                        );
                        if combined { held += 1 } else { failed += 1 }
                    }
                }
            }
        }
        assert!(held > 1000 && failed > 1000, "held {held}, failed {failed}");
    }
}
