//! The YAML rule loader fed thousands of rule files mutated from the default ones, seeded so a
//! failure is found again: each is either a valid rule set or an error that names its line,
//! and none panics. No kernel needed.

use std::panic::{AssertUnwindSafe, catch_unwind};

use monitor_rules::{DEFAULT_RULES, RuleSet};
use serde_yaml_ng::Value;

/// xorshift64*: enough randomness for mutations, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// In `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pieces of YAML syntax and of the rule schema that byte mutations splice in.
const TOKENS: &[&str] = &[
    ":",
    ": ",
    "- ",
    "-",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "\n  ",
    "    ",
    "\t",
    "#",
    "&a ",
    "*a",
    "!!binary ",
    "!!str ",
    "!tag ",
    "~",
    "null",
    "'",
    "\"",
    "\\u0000",
    "\u{feff}",
    "|\n",
    ">-\n",
    "? ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "<<: *a",
    "0o777",
    "0x",
    "1e999",
    "-1",
    "18446744073709551616",
    "id: ",
    "severity: ",
    "match: ",
    "syscalls: ",
    "path: ",
    "**",
    "[!",
    "{a,",
    "critical",
    "phases: [",
    "result: ",
    "family: ",
    "port: ",
    "flags_any: [",
    "mode_any: ",
    "classes: [",
    "é",
    "\u{0}",
];

fn mutate_bytes(rng: &mut Rng, text: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        if text.is_empty() {
            text.extend_from_slice(rng.pick(TOKENS).as_bytes());
            continue;
        }
        let at = rng.below(text.len());
        match rng.below(6) {
            0 => text[at] = rng.next() as u8,
            1 => {
                let end = (at + 1 + rng.below(64)).min(text.len());
                text.drain(at..end);
            }
            2 => {
                let end = (at + 1 + rng.below(200)).min(text.len());
                let copy = text[at..end].to_vec();
                let to = rng.below(text.len());
                text.splice(to..to, copy);
            }
            3 => {
                let token = rng.pick(TOKENS).as_bytes();
                text.splice(at..at, token.iter().copied());
            }
            4 => text.truncate(at),
            _ => {
                // A line swapped with another: indentation and structure move.
                let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
                let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                let mut lines: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
                lines.swap(a, b);
                *text = lines.join(&b'\n');
            }
        }
    }
}

/// A value of any YAML kind, sometimes big.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => Value::Number((rng.next() as i64).into()),
        3 => Value::Number((-(rng.below(1000) as i64)).into()),
        4 => Value::String(rng.pick(TOKENS).repeat(1 + rng.below(3))),
        5 => Value::String(
            rng.pick(&[
                "execve", "openat", "high", "load", "/etc/*", "AF_INET", "0o7777", "",
            ])
            .to_string(),
        ),
        6 => Value::Sequence(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_yaml_ng::Mapping::new();
            for _ in 0..rng.below(4) {
                let key = rng.pick(&["id", "match", "path", "severity", "x", "syscalls"]);
                map.insert(Value::String(key.to_string()), random_value(rng, depth + 1));
            }
            Value::Mapping(map)
        }
    }
}

/// Replaces, removes or duplicates one node somewhere in the tree.
fn mutate_tree(rng: &mut Rng, value: &mut Value, depth: usize) {
    let descend = depth < 6 && rng.below(4) != 0;
    match value {
        Value::Mapping(map) if !map.is_empty() => {
            let keys: Vec<Value> = map.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            if descend {
                mutate_tree(rng, map.get_mut(&key).expect("a key of it"), depth + 1);
            } else {
                match rng.below(3) {
                    0 => {
                        map.remove(&key);
                    }
                    1 => {
                        map.insert(key, random_value(rng, depth));
                    }
                    _ => {
                        map.insert(
                            Value::String(rng.pick(TOKENS).to_string()),
                            random_value(rng, depth),
                        );
                    }
                }
            }
        }
        Value::Sequence(items) if !items.is_empty() => {
            let at = rng.below(items.len());
            if descend {
                mutate_tree(rng, &mut items[at], depth + 1);
            } else {
                match rng.below(3) {
                    0 => {
                        items.remove(at);
                    }
                    // Two rules with one id, or a list item doubled.
                    1 => items.push(items[at].clone()),
                    _ => items[at] = random_value(rng, depth),
                }
            }
        }
        other => *other = random_value(rng, depth),
    }
}

/// Parses `text`; fails the test when it panics, or is refused without a line. Returns whether
/// it was accepted.
fn check(case: usize, text: &str) -> bool {
    let parsed = catch_unwind(AssertUnwindSafe(|| RuleSet::parse(text, "fuzz.yaml")));
    match parsed {
        Err(_) => panic!("case {case}: the rule loader panicked on:\n{text}"),
        Ok(Err(e)) => {
            // One past the last line: the end of the file (a rule cut short).
            assert!(
                e.line >= 1 && e.line <= text.lines().count() + 1,
                "case {case}: refused without its line ({e}):\n{text}"
            );
            assert_eq!(e.source_name, "fuzz.yaml");
            false
        }
        Ok(Ok(_)) => true,
    }
}

#[test]
fn mutated_rule_files_load_or_are_refused_with_their_line_and_never_panic() {
    let tree: Value = serde_yaml_ng::from_str(DEFAULT_RULES).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..6000 {
        let text = if case % 2 == 0 {
            let mut bytes = DEFAULT_RULES.as_bytes().to_vec();
            mutate_bytes(&mut rng, &mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            let mut tree = tree.clone();
            for _ in 0..=rng.below(3) {
                mutate_tree(&mut rng, &mut tree, 0);
            }
            serde_yaml_ng::to_string(&tree).unwrap()
        };
        if check(case, &text) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // Both sides of the loader were reached: mutations that keep a valid file, and ones that
    // break it.
    assert!(
        accepted > 100 && refused > 1000,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn hostile_yaml_is_refused_with_its_line() {
    let laughs = {
        // Each level nine aliases of the one before: 9^9 strings if expanded.
        let mut text = String::from("a0: &a0 [\"lol\"]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 9].join(", ")));
        }
        text.push_str("rules: *a9\n");
        text
    };
    let cases = [
        ("billion laughs", laughs),
        ("deep sequences", format!("rules: {}{}\n", "[".repeat(10_000), "]".repeat(10_000))),
        (
            "deep mappings",
            format!("rules:\n{}\n", (0..2_000).map(|i| format!("{}k:", " ".repeat(i))).collect::<Vec<_>>().join("\n")),
        ),
        ("a rule that is a number", "rules: [7]\n".to_string()),
        ("rules a string", "rules: all of them\n".to_string()),
        (
            "a huge port",
            "rules:\n  - id: p\n    description: d\n    severity: low\n    match: { syscalls: [connect], port: [99999999999999999999] }\n"
                .to_string(),
        ),
        (
            "an unknown syscall",
            "rules:\n  - id: s\n    description: d\n    severity: low\n    match: { syscalls: [not_a_syscall] }\n"
                .to_string(),
        ),
        (
            "an unclosed glob",
            "rules:\n  - id: g\n    description: d\n    severity: low\n    match: { path: [\"/a/[b\"] }\n"
                .to_string(),
        ),
        ("a tab for indentation", "rules:\n\t- id: t\n".to_string()),
        ("two documents", "rules: []\n---\nrules: []\n".to_string()),
        ("an empty file", String::new()),
    ];
    for (what, text) in cases {
        let refused = catch_unwind(AssertUnwindSafe(|| RuleSet::parse(&text, "hostile.yaml")))
            .unwrap_or_else(|_| panic!("{what}: the rule loader panicked"));
        let e = refused.err().unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.line >= 1, "{what}: refused without its line: {e}");
    }
}
