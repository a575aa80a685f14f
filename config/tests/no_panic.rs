//! No input makes the parser panic: mutated examples, truncated ones and
//! random text all end in a config or in errors that say something.

use std::path::Path;
use std::sync::OnceLock;

use fulcrum_config::parse;
use proptest::prelude::*;

fn examples() -> &'static [String] {
    static EXAMPLES: OnceLock<Vec<String>> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut texts: Vec<String> = std::fs::read_dir(dir)
            .expect("examples/")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| std::fs::read_to_string(p).expect("readable"))
            .collect();
        texts.sort();
        texts
    })
}

/// Parses, and checks what came out is coherent.
fn parse_checked(text: &str) {
    match parse(text, "fuzz.toml") {
        Ok(config) => assert_eq!(parse(text, "fuzz.toml"), Ok(config), "parsing is deterministic"),
        Err(errors) => {
            assert!(!errors.is_empty(), "rejected without saying why:\n{text}");
            let lines = text.split('\n').count();
            for e in &errors {
                assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "line {:?} of {lines}: {e}", e.line);
                assert!(!e.message.is_empty());
            }
            let _ = errors.to_string();
        }
    }
}

/// Pieces that matter to TOML or to the schema.
const TOKENS: &[&str] = &[
    "\"",
    "'",
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\n",
    "{",
    "}",
    ",",
    ".",
    "-",
    "#",
    "\\",
    "\"\"\"",
    " ",
    "0",
    "-1",
    "65536",
    "99999999999999999999",
    "1e9",
    "inf",
    "nan",
    "0x1F",
    "true",
    "1979-05-27T07:32:00Z",
    "é",
    "\u{0}",
    "\r",
    "[vip]",
    "[[vip]]",
    "[[vip.backend]]",
    "[vip.health]",
    "[[interface]]",
    "[daemon]",
    "backend = []",
    "port = 0",
    "weight = 70000",
    "mode = \"dsr\"",
    "mode = \"gue\"",
    "mode = \"full-nat\"",
    "kind = \"icmp\"",
    "kind = \"http-content\"",
    "protocol = \"udp\"",
    "address = \"2001:db8::1\"",
    "address = \"198.18.0.100\"",
    "health = { port = 1 }",
    "role = \"client\"",
    "role = \"server\"",
    "snat = \"::\"",
    "tunnel_source = \"198.18.0.0/0\"",
    "interval = \"1ns\"",
    "timeout = \"99999999999999999999s\"",
    "cores = [1, [2]]",
    "expect_status = \"99-1\"",
];

#[derive(Clone, Debug)]
enum Edit {
    Insert(usize, &'static str),
    Delete(usize, usize),
    Replace(usize, usize, &'static str),
    SwapLines(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = proptest::sample::select(TOKENS);
    prop_oneof![
        (any::<usize>(), token.clone()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (any::<usize>(), 1..40usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 1..10usize, token).prop_map(|(at, n, t)| Edit::Replace(at, n, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &mut String, edit: &Edit) {
    match *edit {
        Edit::Insert(at, t) => text.insert_str(boundary(text, at), t),
        Edit::Delete(at, n) | Edit::Replace(at, n, _) => {
            let start = boundary(text, at);
            let end = boundary(text, start + n.min(text.len() - start));
            let with = if let Edit::Replace(.., t) = edit { t } else { "" };
            text.replace_range(start..end, with);
        }
        Edit::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.split('\n').collect();
            let n = lines.len();
            lines.swap(a % n, b % n);
            *text = lines.join("\n");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_examples(which in any::<usize>(), edits in proptest::collection::vec(edit(), 1..8)) {
        let mut text = examples()[which % examples().len()].clone();
        for e in &edits {
            apply(&mut text, e);
        }
        parse_checked(&text);
    }

    #[test]
    fn random_text(text in ".{0,400}") {
        parse_checked(&text);
    }

    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        parse_checked(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn every_truncation_of_every_example() {
    for text in examples() {
        for at in (0..text.len()).filter(|&i| text.is_char_boundary(i) && (i % 5 == 0 || text.as_bytes()[i] == b'\n')) {
            parse_checked(&text[..at]);
        }
    }
}
