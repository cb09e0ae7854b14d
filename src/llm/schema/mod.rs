//! JSON Schema -> GBNF, for `"format": "json"` with a schema: the answer must
//! be JSON that validates against the schema. Modelled on llama.cpp's own
//! `json-schema-to-grammar` (same primitive rules, `space` after every token,
//! properties in a fixed order), but only for a well-defined subset. A keyword
//! that restricts values and is outside the subset is refused with an error
//! naming it, never ignored: a grammar that silently allowed more than the
//! schema would hand automations answers that fail validation.
//!
//! Supported:
//! - `type`: `object`, `array`, `string`, `number`, `integer`, `boolean`,
//!   `null`, or a list of them (alternatives); without `type`, the type is
//!   inferred from the type-specific keywords, and with none any JSON value;
//! - `properties` + `required`: keys in the order `serde_json` yields them
//!   (the schema's order with its `preserve_order` feature, else sorted);
//!   optional ones may be absent. `additionalProperties` must be absent or
//!   `false`, and absent is treated as `false`: no keys beyond `properties`
//!   (a subset of what the schema allows, so still valid). An object schema
//!   with none of the three is any JSON object;
//! - `items` (one schema), `minItems`/`maxItems` (at most [`MAX_ITEMS`]);
//! - `enum`/`const` of strings, numbers, booleans and null, emitted as their
//!   compact JSON text (so `1.0` must be written `1.0`);
//! - string `minLength`/`maxLength` (at most [`MAX_STRING_LENGTH`]);
//! - `anyOf`, and `oneOf` approximated as `anyOf` (a value matching several
//!   alternatives is not excluded);
//! - `$ref` to `#/$defs/NAME` or `#/definitions/NAME`; recursion is allowed
//!   through an object or array (GBNF rules may recurse), not before one
//!   (llama.cpp refuses left-recursive grammars);
//! - annotations (`title`, `description`, `$schema`, `$id`, `$comment`,
//!   `default`, `examples`, `readOnly`, `writeOnly`, `deprecated`, `$defs`,
//!   `definitions`) are ignored.
//!
//! Refused: `pattern`, `format`, numeric bounds (`minimum`, `maximum`, ...),
//! `allOf`/`not`/`if`, tuple `items`, `additionalProperties` other than false,
//! siblings of `$ref`/`anyOf`/`oneOf` (they would intersect), and anything else.
//! Schemas arrive in requests, so size is capped: nesting depth, rules,
//! repetitions (llama.cpp expands `x{m,n}` into n rules) and bytes.

use super::constraint::literal;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

mod gen;
use gen::Gen;

/// Deepest nesting of schemas (each `$ref` hop counts as a level).
pub const MAX_DEPTH: usize = 16;
/// Most GBNF rules in one grammar, the primitive ones included.
pub const MAX_RULES: usize = 256;
/// Longest grammar text.
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;
/// Largest `minItems`/`maxItems`.
pub const MAX_ITEMS: u64 = 16;
/// Largest `minLength`/`maxLength`.
pub const MAX_STRING_LENGTH: u64 = 256;
/// Most repetitions (`{m,n}` bounds) in one grammar, summed.
pub const MAX_REPEATS: u64 = 4096;

/// Why a schema has no grammar. `at` is a JSON pointer into the schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("JSON Schema keyword `{keyword}` at {at} is not supported: {why}")]
    Unsupported {
        keyword: String,
        at: String,
        why: &'static str,
    },
    #[error("JSON Schema keyword `{keyword}` at {at}: {why}")]
    BadValue {
        keyword: String,
        at: String,
        why: String,
    },
    #[error("the JSON Schema nests deeper than {MAX_DEPTH} levels at {at}")]
    TooDeep { at: String },
    #[error("the JSON Schema is too large for a grammar: {what}")]
    TooLarge { what: String },
    #[error("JSON Schema `$ref` {reference:?} at {at}: {why}")]
    BadRef {
        reference: String,
        at: String,
        why: &'static str,
    },
}

type Result<T> = std::result::Result<T, SchemaError>;

/// llama.cpp's primitive rules (name, body, rules it uses), emitted on
/// demand in this order. Digits and whitespace are bounded so that no token
/// run is endless; `char` excludes raw control characters, as JSON does.
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    // One optional space, unlike llama.cpp's (which allows a newline and
    // indentation): a small model otherwise spends its token budget on
    // whitespace, and automations want compact JSON.
    ("space", r#"| " ""#, &[]),
    (
        "char",
        r#"[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})"#,
        &[],
    ),
    ("string", r#""\"" char* "\"" space"#, &["char", "space"]),
    ("integral-part", "[0] | [1-9] [0-9]{0,15}", &[]),
    ("decimal-part", "[0-9]{1,16}", &[]),
    (
        "number",
        r#""-"? integral-part ("." decimal-part)? ([eE] [-+]? integral-part)? space"#,
        &["integral-part", "decimal-part", "space"],
    ),
    (
        "integer",
        r#""-"? integral-part space"#,
        &["integral-part", "space"],
    ),
    ("boolean", r#"("true" | "false") space"#, &["space"]),
    ("null", r#""null" space"#, &["space"]),
    (
        "value",
        "object | array | string | number | boolean | null",
        &["object", "array", "string", "number", "boolean", "null"],
    ),
    (
        "object",
        r#""{" space ( string ":" space value ("," space string ":" space value)* )? "}" space"#,
        &["string", "value", "space"],
    ),
    (
        "array",
        r#""[" space ( value ("," space value)* )? "]" space"#,
        &["value", "space"],
    ),
];

const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "$schema",
    "$id",
    "$comment",
    "default",
    "examples",
    "readOnly",
    "writeOnly",
    "deprecated",
    "$defs",
    "definitions",
];
const TYPES: &[&str] = &[
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// GBNF rules for JSON valid against `schema`. The start rule is `answer`
/// (to follow `root ::= " "? answer`); helper rules are named `answer-...`,
/// `def-...` or after a primitive (`string`, `space`, ...), never `root`.
pub fn grammar_rules(schema: &Value) -> Result<String> {
    let mut g = Gen {
        root: schema,
        rules: Vec::new(),
        taken: PRIMITIVES.iter().map(|p| p.0.to_string()).collect(),
        refs: HashMap::new(),
        guard: Vec::new(),
        lefts: Vec::new(),
        prims: vec![false; PRIMITIVES.len()],
        bytes: 0,
        repeats: 0,
    };
    g.taken.insert("root".into());
    let slot = g.reserve("answer")?;
    let body = g.expr(schema, "answer", "#", 1)?;
    g.fill(slot, body)?;
    if let Some(def) = left_cycle(&g.lefts) {
        return Err(SchemaError::BadRef {
            reference: format!("#/{def}"),
            at: format!("#/{def}"),
            why: "it recurses before any object or array",
        });
    }
    g.finish()
}

/// A definition on a cycle of `lefts` edges, if any.
fn left_cycle(edges: &[(String, String)]) -> Option<&str> {
    fn visit<'a>(
        n: &'a str,
        g: &BTreeMap<&'a str, Vec<&'a str>>,
        st: &mut BTreeMap<&'a str, bool>,
    ) -> Option<&'a str> {
        match st.get(n) {
            Some(true) => return Some(n),
            Some(false) => return None,
            None => {}
        }
        st.insert(n, true);
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, st) {
                return Some(c);
            }
        }
        st.insert(n, false);
        None
    }
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a).or_default().push(b);
    }
    let mut state = BTreeMap::new();
    graph.keys().find_map(|n| visit(n, &graph, &mut state))
}

/// `type` as a list of known, distinct type names (`None` when absent).
fn types<'v>(obj: &'v Map<String, Value>, at: &str) -> Result<Option<Vec<&'v str>>> {
    let list: Vec<&Value> = match obj.get("type") {
        None => return Ok(None),
        Some(Value::Array(a)) if !a.is_empty() => a.iter().collect(),
        Some(v @ Value::String(_)) => vec![v],
        Some(_) => {
            return Err(bad(
                "type",
                at,
                "must be a type name or a non-empty list of them",
            ))
        }
    };
    let mut out = Vec::new();
    for v in list {
        match v.as_str() {
            Some(t) if TYPES.contains(&t) && !out.contains(&t) => out.push(t),
            _ => {
                return Err(bad(
                    "type",
                    at,
                    &format!("{v} is not a known type, or is repeated"),
                ))
            }
        }
    }
    Ok(Some(out))
}

/// A non-negative integer keyword, at most `cap`.
fn count(obj: &Map<String, Value>, kw: &str, cap: u64, at: &str) -> Result<Option<u64>> {
    let Some(v) = obj.get(kw) else {
        return Ok(None);
    };
    let n = v
        .as_u64()
        .ok_or_else(|| bad(kw, at, "must be a non-negative integer"))?;
    if n > cap {
        return Err(too_large(format!("`{kw}` {n} at {at} is over {cap}")));
    }
    Ok(Some(n))
}

fn unsupported(keyword: &str, at: &str) -> SchemaError {
    let why = match keyword {
        "pattern" | "patternProperties" | "format" => {
            "patterns and formats are not turned into grammars"
        }
        "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" | "multipleOf" => {
            "numeric bounds cannot be expressed cheaply in a grammar"
        }
        "allOf" | "not" | "if" | "then" | "else" => "only anyOf and oneOf combine schemas",
        _ => "it is outside the supported subset",
    };
    SchemaError::Unsupported {
        keyword: keyword.into(),
        at: at.into(),
        why,
    }
}

fn bad(keyword: &str, at: &str, why: &str) -> SchemaError {
    SchemaError::BadValue {
        keyword: keyword.into(),
        at: at.into(),
        why: why.into(),
    }
}

fn too_large(what: String) -> SchemaError {
    SchemaError::TooLarge { what }
}

/// The non-empty parts joined by spaces.
fn seq(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A rule-name piece: GBNF names are `[a-zA-Z0-9-]+`.
fn sanitize(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().take(32) {
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(schema: Value) -> String {
        let g = grammar_rules(&schema).expect("grammar");
        g.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn small_object_exact_grammar() {
        let schema = json!({
            "title": "Scene", "type": "object",
            "properties": {
                "color": {"enum": ["red", "blue"], "description": "main colour"},
                "count": {"type": "integer"},
                "note": {"type": "string", "maxLength": 8}
            },
            "required": ["color", "count"]
        });
        let expected = r#"answer ::= "{" space "\"color\"" space ":" space answer-color "," space "\"count\"" space ":" space integer ("," space "\"note\"" space ":" space answer-note)? "}" space
answer-color ::= ("\"red\"" | "\"blue\"") space
answer-note ::= "\"" char{0,8} "\"" space
space ::= | " "
char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})
integral-part ::= [0] | [1-9] [0-9]{0,15}
integer ::= "-"? integral-part space
"#;
        assert_eq!(grammar_rules(&schema).expect("grammar"), expected);
    }

    #[test]
    fn optional_properties_and_commas() {
        let kv = |k: &str| format!(r#""\"{k}\"" space ":" space boolean"#);
        let (a, b, c) = (kv("a"), kv("b"), kv("c"));
        let props =
            json!({"a": {"type": "boolean"}, "b": {"type": "boolean"}, "c": {"type": "boolean"}});
        let all_optional = answer(json!({"type": "object", "properties": props}));
        let want = format!(
            r#"answer ::= "{{" space ({a} ("," space {b})? ("," space {c})? | {b} ("," space {c})? | {c})? "}}" space"#
        );
        assert_eq!(all_optional, want);
        let b_required = answer(json!({"properties": props, "required": ["b"]}));
        let want = format!(
            r#"answer ::= "{{" space ({a} "," space {b} ("," space {c})? | {b} ("," space {c})?) "}}" space"#
        );
        assert_eq!(b_required, want);
        let closed = json!({"type": "object", "additionalProperties": false});
        assert_eq!(answer(closed), r#"answer ::= "{" space "}" space"#);
        assert_eq!(answer(json!({"type": "object"})), "answer ::= object");
    }

    #[test]
    fn enum_and_const_literals_are_escaped() {
        let schema = json!({"enum": ["a\"b", "c\\d", "e\nf", 1.5, null, true]});
        let want = r#"answer ::= ("\"a\\\"b\"" | "\"c\\\\d\"" | "\"e\\nf\"" | "1.5" | "null" | "true") space"#;
        assert_eq!(answer(schema), want);
        assert_eq!(
            answer(json!({"const": "ü"})),
            "answer ::= \"\\\"ü\\\"\" space"
        );
        assert!(matches!(
            grammar_rules(&json!({"type": "string", "enum": ["a", 1]})),
            Err(SchemaError::BadValue { keyword, .. }) if keyword == "enum"
        ));
        assert_eq!(
            answer(json!({"type": "number", "enum": [1, 2.5]})),
            r#"answer ::= ("1" | "2.5") space"#
        );
    }

    #[test]
    fn arrays_strings_and_alternatives() {
        let cases = [
            (
                json!({"type": "array", "items": {"type": "integer"}}),
                r#"answer ::= "[" space (integer ("," space integer)*)? "]" space"#,
            ),
            (
                json!({"items": {"type": "string"}, "minItems": 1, "maxItems": 3}),
                r#"answer ::= "[" space string ("," space string){0,2} "]" space"#,
            ),
            (
                json!({"type": "array", "items": {"type": "null"}, "minItems": 2}),
                r#"answer ::= "[" space null ("," space null)+ "]" space"#,
            ),
            (
                json!({"type": "array", "maxItems": 0}),
                r#"answer ::= "[" space "]" space"#,
            ),
            (
                json!({"type": "string", "minLength": 2, "maxLength": 2}),
                r#"answer ::= "\"" char{2} "\"" space"#,
            ),
            (
                json!({"type": "string", "minLength": 1}),
                r#"answer ::= "\"" char+ "\"" space"#,
            ),
            (
                json!({"type": ["string", "null"]}),
                "answer ::= string | null",
            ),
            (
                json!({"oneOf": [{"type": "boolean"}, {"type": "array"}], "default": null}),
                "answer ::= boolean | answer-1",
            ),
            (
                json!({"title": "anything", "examples": [1]}),
                "answer ::= value",
            ),
            (json!(true), "answer ::= value"),
        ];
        for (schema, want) in cases {
            assert_eq!(answer(schema), want);
        }
    }

    #[test]
    fn refs_and_recursion() {
        let tree = json!({
            "$defs": {"Node": {"type": "object", "properties": {
                "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                "name": {"type": "string"}
            }, "required": ["name"]}},
            "$ref": "#/$defs/Node"
        });
        let g = grammar_rules(&tree).expect("grammar");
        let name = r#""\"name\"" space ":" space string"#;
        let kids = r#""\"kids\"" space ":" space def-Node-kids"#;
        let lines: Vec<&str> = g.lines().take(3).collect();
        assert_eq!(lines[0], "answer ::= def-Node");
        assert_eq!(
            lines[1],
            format!(r#"def-Node ::= "{{" space ({kids} "," space {name} | {name}) "}}" space"#)
        );
        assert_eq!(
            lines[2],
            r#"def-Node-kids ::= "[" space (def-Node ("," space def-Node)*)? "]" space"#
        );
        let shared = json!({"definitions": {"n": {"type": "integer"}},
            "properties": {"a": {"$ref": "#/definitions/n"}, "b": {"$ref": "#/definitions/n"}}});
        assert_eq!(
            grammar_rules(&shared)
                .expect("grammar")
                .matches("def-n ::= integer")
                .count(),
            1
        );

        let direct = json!({"$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "null"}]}}, "$ref": "#/$defs/A"});
        let indirect = json!({"$defs": {
            "Y": {"anyOf": [{"properties": {"p": {"$ref": "#/$defs/X"}}}, {"$ref": "#/$defs/X"}]},
            "X": {"anyOf": [{"$ref": "#/$defs/Y"}, {"type": "null"}]}
        }, "$ref": "#/$defs/Y"});
        for s in [direct, indirect] {
            let e = grammar_rules(&s).expect_err("left recursion");
            assert!(
                matches!(e, SchemaError::BadRef { why, .. } if why.contains("recurses")),
                "{e}"
            );
        }
        for r in [
            "#/properties/a",
            "other.json#/$defs/a",
            "#/$defs/a/b",
            "#/$defs/missing",
        ] {
            let s = json!({"$defs": {"a": {}}, "$ref": r});
            assert!(
                matches!(grammar_rules(&s), Err(SchemaError::BadRef { reference, .. }) if reference == r)
            );
        }
    }

    #[test]
    fn refusals_name_the_keyword() {
        let unsupported = [
            (json!({"type": "string", "pattern": "^a$"}), "pattern"),
            (json!({"type": "string", "format": "date"}), "format"),
            (json!({"type": "integer", "minimum": 0}), "minimum"),
            (json!({"type": "number", "maximum": 1}), "maximum"),
            (
                json!({"type": "number", "exclusiveMinimum": 1}),
                "exclusiveMinimum",
            ),
            (json!({"allOf": [{}]}), "allOf"),
            (
                json!({"type": "object", "unevaluatedProperties": false}),
                "unevaluatedProperties",
            ),
            (
                json!({"type": "object", "additionalProperties": true}),
                "additionalProperties",
            ),
            (
                json!({"properties": {}, "additionalProperties": {"type": "string"}}),
                "additionalProperties",
            ),
            (json!({"type": "array", "items": [{}, {}]}), "items"),
            (json!({"enum": [{"a": 1}]}), "enum"),
            (
                json!({"$ref": "#/$defs/a", "type": "object", "$defs": {"a": {}}}),
                "type",
            ),
            (json!({"anyOf": [{}], "oneOf": [{}]}), "oneOf"),
            (json!({"enum": ["a"], "maxLength": 3}), "maxLength"),
            (
                json!({"properties": {"x": {"type": "integer", "multipleOf": 2}}}),
                "multipleOf",
            ),
        ];
        for (schema, kw) in unsupported {
            match grammar_rules(&schema) {
                Err(SchemaError::Unsupported { keyword, .. }) if keyword == kw => {}
                other => panic!("{schema}: expected Unsupported {kw}, got {other:?}"),
            }
        }
        let bad = [
            (json!(false), "false"),
            (json!(3), "(schema)"),
            (json!({"type": "float"}), "type"),
            (json!({"type": ["string", "string"]}), "type"),
            (json!({"type": "string", "minItems": 1}), "minItems"),
            (json!({"minLength": 1, "items": {}}), "type"),
            (
                json!({"properties": {"a": {}}, "required": ["b"]}),
                "required",
            ),
            (
                json!({"type": "string", "minLength": 3, "maxLength": 2}),
                "minLength",
            ),
            (json!({"type": "array", "minItems": -1}), "minItems"),
            (json!({"enum": []}), "enum"),
            (json!({"anyOf": []}), "anyOf"),
        ];
        for (schema, kw) in bad {
            match grammar_rules(&schema) {
                Err(SchemaError::BadValue { keyword, .. }) if keyword == kw => {}
                other => panic!("{schema}: expected BadValue {kw}, got {other:?}"),
            }
        }
        let e =
            grammar_rules(&json!({"properties": {"a/b": {"minimum": 1}}})).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "JSON Schema keyword `minimum` at #/properties/a~1b is not supported: \
             numeric bounds cannot be expressed cheaply in a grammar"
        );
    }

    #[test]
    fn depth_and_size_limits() {
        let nested =
            |levels: usize| (1..levels).fold(json!({"type": "null"}), |s, _| json!({"items": s}));
        assert!(grammar_rules(&nested(MAX_DEPTH)).is_ok());
        assert!(matches!(
            grammar_rules(&nested(MAX_DEPTH + 1)),
            Err(SchemaError::TooDeep { .. })
        ));
        let too_large = |s: Value| matches!(grammar_rules(&s), Err(SchemaError::TooLarge { .. }));
        assert!(too_large(
            json!({"type": "array", "maxItems": MAX_ITEMS + 1})
        ));
        assert!(too_large(
            json!({"type": "string", "maxLength": MAX_STRING_LENGTH + 1})
        ));
        let many: Map<String, Value> = (0..MAX_RULES)
            .map(|i| (format!("p{i}"), json!({"enum": [i]})))
            .collect();
        assert!(too_large(json!({"properties": many})));
        let long: Vec<String> = (0..100)
            .map(|i| format!("{i}{}", "x".repeat(1000)))
            .collect();
        assert!(too_large(json!({"enum": long})));
        let strings: Map<String, Value> = (0..20)
            .map(|i| (format!("s{i}"), json!({"maxLength": 256})))
            .collect();
        assert!(too_large(json!({"properties": strings, "required": []})));
        // Quadratic comma alternatives stop at the byte limit.
        let optional: Map<String, Value> = (0..5000)
            .map(|i| (format!("k{i}"), json!({"type": "null"})))
            .collect();
        assert!(too_large(json!({"properties": optional})));
    }

    /// llama.cpp's own parser accepts the grammars (no vocabulary is needed
    /// to parse and to check for left recursion).
    #[test]
    fn llama_cpp_parses_the_grammars() {
        let parses = crate::llm::ffi::grammar_parses;
        assert!(
            !parses("root ::= a\na ::= a \"x\" | \"y\"\n"),
            "control: left recursion is refused"
        );
        let schemas = [
            json!(true),
            json!({"type": "object", "properties": {"a": {"type": "string", "minLength": 1, "maxLength": 5},
                "b": {"type": ["number", "null"]}, "c": {"enum": ["x\"y", 2, false]}}, "required": ["b"]}),
            json!({"$defs": {"N": {"properties": {"kids": {"items": {"$ref": "#/$defs/N"}, "maxItems": 4}}}},
                "anyOf": [{"$ref": "#/$defs/N"}, {"type": "array", "minItems": 2, "items": {"const": "é"}}]}),
            json!({"type": "array", "minItems": 1, "maxItems": 1, "items": {"type": "object", "additionalProperties": false}}),
        ];
        for schema in schemas {
            let g = format!(
                "root ::= \" \"? answer\n{}",
                grammar_rules(&schema).expect("grammar")
            );
            assert!(parses(&g), "llama.cpp refused:\n{g}");
        }
    }
}
