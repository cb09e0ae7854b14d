//! Answers an automation can branch on: a request may constrain the answer
//! to one of a few `choices`, a number, or JSON. Each becomes a GBNF grammar
//! for llama.cpp's grammar sampler, and decoding stays greedy within it
//! (argmax over the tokens the grammar allows), so a constrained answer is
//! the reference model's most likely answer among the allowed ones. It can
//! therefore differ from the unconstrained (reference-identical) answer; that
//! is the point.

use std::fmt::Write;

/// What the answer must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// Exactly one of these strings.
    Choices(Vec<String>),
    /// A decimal number (`-12`, `3.5`).
    Number,
    /// One JSON object.
    Json,
    /// JSON valid against a JSON Schema: the GBNF rules
    /// [`super::schema::grammar_rules`] made of it (start rule `answer`).
    JsonSchema(String),
}

/// LLaMA tokenizers mark a word start with a space (`▁yes` is " yes"), so
/// every grammar allows one leading space, removed from the answer.
const LEAD: &str = "root ::= \" \"? answer\n";

const JSON: &str = r#"answer ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]) )* "\"" ws
number ::= "-"? ([0-9] | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws
ws     ::= | " "
"#;

/// Fewest new tokens a JSON answer is given.
pub const JSON_MIN_TOKENS: usize = 48;

/// Most choices an answer may be constrained to, and longest choice in bytes.
pub const MAX_CHOICES: usize = 32;
pub const MAX_CHOICE_BYTES: usize = 64;

impl Constraint {
    /// The constraint of a request or watch: `choices` or `format`
    /// (`"number"`, `"json"`, the latter with an optional JSON `schema`),
    /// checked; `None` for free text.
    pub fn from_parts(
        choices: Option<&[String]>,
        format: Option<&str>,
        schema: Option<&serde_json::Value>,
    ) -> Result<Option<Self>, String> {
        let short = |s: &str| s.chars().take(40).collect::<String>();
        if let Some(schema) = schema {
            if format != Some("json") || choices.is_some() {
                return Err("a `schema` goes with `\"format\": \"json\"`".into());
            }
            let rules = super::schema::grammar_rules(schema).map_err(|e| e.to_string())?;
            let c = Constraint::JsonSchema(rules);
            // A generator slip must be this request's error, not a failed answer.
            if !super::ffi::grammar_parses(&c.grammar()) {
                return Err("the JSON Schema gave a grammar llama.cpp refuses".into());
            }
            return Ok(Some(c));
        }
        match (choices, format) {
            (Some(_), Some(_)) => Err("give `choices` or `format`, not both".into()),
            (None, None) => Ok(None),
            (None, Some("number")) => Ok(Some(Constraint::Number)),
            (None, Some("json")) => Ok(Some(Constraint::Json)),
            (None, Some(f)) => Err(format!(
                "`format` must be \"number\" or \"json\", not {:?}",
                short(f)
            )),
            (Some(c), None) => {
                if c.is_empty() || c.len() > MAX_CHOICES {
                    return Err(format!("`choices` must hold 1 to {MAX_CHOICES} strings"));
                }
                let mut seen = std::collections::BTreeSet::new();
                for choice in c {
                    let ok = !choice.trim().is_empty()
                        && choice.trim() == choice
                        && choice.len() <= MAX_CHOICE_BYTES
                        && !choice.chars().any(char::is_control);
                    if !ok {
                        return Err(format!(
                            "each choice must be 1 to {MAX_CHOICE_BYTES} bytes of text without \
                             control characters or surrounding spaces, not {:?}",
                            short(choice)
                        ));
                    }
                    if !seen.insert(choice.as_str()) {
                        return Err(format!("choice {:?} is given twice", short(choice)));
                    }
                }
                Ok(Some(Constraint::Choices(c.to_vec())))
            }
        }
    }

    /// The GBNF grammar (root rule `root`).
    pub fn grammar(&self) -> String {
        let mut g = String::from(LEAD);
        match self {
            Constraint::Choices(choices) => {
                g.push_str("answer ::= ");
                for (i, c) in choices.iter().enumerate() {
                    if i > 0 {
                        g.push_str(" | ");
                    }
                    g.push_str(&literal(c));
                }
                g.push('\n');
            }
            Constraint::Number => {
                g.push_str("answer ::= \"-\"? [0-9]+ (\".\" [0-9]+)?\n");
            }
            Constraint::Json => g.push_str(JSON),
            Constraint::JsonSchema(rules) => g.push_str(rules),
        }
        g
    }

    /// Enough new tokens for any allowed answer that is not open-ended
    /// (each token is at least one byte; one more for the space, one for
    /// the end of sequence); for JSON, room for a small object (an answer
    /// cut short by the limit is not valid JSON: its `stop` says `length`).
    pub fn min_tokens(&self) -> usize {
        match self {
            Constraint::Choices(c) => c.iter().map(String::len).max().unwrap_or(0) + 2,
            Constraint::Number => 0,
            Constraint::Json | Constraint::JsonSchema(_) => JSON_MIN_TOKENS,
        }
    }

    /// The answer as the automation sees it: the grammar's leading space
    /// removed; a JSON answer without its trailing whitespace.
    pub fn clean(&self, text: &str) -> String {
        text.trim().to_string()
    }
}

/// A GBNF string literal (quotes, backslashes and controls escaped).
pub(super) fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_become_escaped_alternatives() {
        let c = Constraint::Choices(vec!["yes".into(), "no \"way\"\\".into()]);
        assert_eq!(
            c.grammar(),
            "root ::= \" \"? answer\nanswer ::= \"yes\" | \"no \\\"way\\\"\\\\\"\n"
        );
        assert_eq!(c.min_tokens(), 2 + 9);
        assert_eq!(c.clean(" yes"), "yes");
    }
}
