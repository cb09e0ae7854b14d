//! The grammar generator: one pass over the schema, a rule per named
//! subschema, with the limits counted as rules are made.

use super::*;
use std::collections::HashSet;
use std::fmt::Write;

pub(super) struct Gen<'a> {
    pub(super) root: &'a Value,
    /// Rules in creation order; the body is `None` while being built.
    pub(super) rules: Vec<(String, Option<String>)>,
    pub(super) taken: HashSet<String>,
    /// `$defs/NAME` -> its rule.
    pub(super) refs: HashMap<String, String>,
    /// `$ref`s entered since the last object or array, innermost last.
    pub(super) guard: Vec<String>,
    /// `(a, b)`: definition `a` can start with definition `b` (nothing
    /// consumed in between). A cycle is left recursion, which llama.cpp
    /// refuses.
    pub(super) lefts: Vec<(String, String)>,
    pub(super) prims: Vec<bool>,
    pub(super) bytes: usize,
    pub(super) repeats: u64,
}

impl Gen<'_> {
    pub(super) fn reserve(&mut self, hint: &str) -> Result<usize> {
        if self.rules.len() + PRIMITIVES.len() >= MAX_RULES {
            return Err(too_large(format!("more than {MAX_RULES} rules")));
        }
        let mut name = hint.to_string();
        for n in 1.. {
            if !self.taken.contains(&name) {
                break;
            }
            name = format!("{hint}-{n}");
        }
        self.taken.insert(name.clone());
        self.rules.push((name, None));
        Ok(self.rules.len() - 1)
    }

    pub(super) fn fill(&mut self, slot: usize, body: String) -> Result<()> {
        self.grow(self.rules[slot].0.len() + body.len() + 6)?;
        self.rules[slot].1 = Some(body);
        Ok(())
    }

    fn grow(&mut self, n: usize) -> Result<()> {
        self.bytes += n;
        if self.bytes > MAX_GRAMMAR_BYTES {
            return Err(too_large(format!("more than {MAX_GRAMMAR_BYTES} bytes")));
        }
        Ok(())
    }

    /// Marks a primitive rule (and those it uses) as needed.
    fn p(&mut self, name: &'static str) -> &'static str {
        if let Some(i) = PRIMITIVES.iter().position(|p| p.0 == name) {
            if !self.prims[i] {
                self.prims[i] = true;
                for dep in PRIMITIVES[i].2 {
                    self.p(dep);
                }
            }
        }
        name
    }

    /// A rule name for `schema`: a new rule named after `hint`, or the
    /// existing rule its body would only refer to.
    fn rule(&mut self, schema: &Value, hint: &str, at: &str, depth: usize) -> Result<String> {
        let slot = self.reserve(hint)?;
        let name = self.rules[slot].0.clone();
        let body = self.expr(schema, &name, at, depth)?;
        if body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !body.is_empty() {
            // Rules after `slot` are our finished descendants; nobody holds
            // their indices, so removing ours shifts nothing in use.
            self.rules.remove(slot);
            self.taken.remove(&name);
            return Ok(body);
        }
        self.fill(slot, body)?;
        Ok(name)
    }

    /// The GBNF expression for `schema`: a sequence, or alternatives at its
    /// top level only when it is a whole rule's body (anyOf, type lists).
    pub(super) fn expr(
        &mut self,
        schema: &Value,
        name: &str,
        at: &str,
        depth: usize,
    ) -> Result<String> {
        if depth > MAX_DEPTH {
            return Err(SchemaError::TooDeep { at: at.into() });
        }
        let obj = match schema {
            Value::Bool(true) => return Ok(self.p("value").into()),
            Value::Bool(false) => return Err(bad("false", at, "the false schema matches nothing")),
            Value::Object(o) => o,
            _ => {
                return Err(bad(
                    "(schema)",
                    at,
                    "a schema must be an object or a boolean",
                ))
            }
        };
        // Keywords that restrict values, and the type each belongs to.
        let mut restricting = Vec::new();
        let mut families: Vec<(&str, &str)> = Vec::new();
        for key in obj.keys().map(String::as_str) {
            let family = match key {
                k if ANNOTATIONS.contains(&k) => continue,
                "type" | "enum" | "const" | "anyOf" | "oneOf" | "$ref" => None,
                "properties" | "required" | "additionalProperties" => Some("object"),
                "items" | "minItems" | "maxItems" => Some("array"),
                "minLength" | "maxLength" => Some("string"),
                k => return Err(unsupported(k, at)),
            };
            restricting.push(key);
            if let Some(f) = family {
                families.push((f, key));
            }
        }
        let alone = |kw: &str, allowed: &[&str]| match restricting
            .iter()
            .find(|k| **k != kw && !allowed.contains(k))
        {
            Some(k) => Err(SchemaError::Unsupported {
                keyword: k.to_string(),
                at: at.into(),
                why: "it would intersect with $ref/anyOf/oneOf/enum/const next to it",
            }),
            None => Ok(()),
        };
        if let Some(r) = obj.get("$ref") {
            alone("$ref", &[])?;
            return self.reference(r, at, depth);
        }
        for kw in ["anyOf", "oneOf"] {
            if let Some(alts) = obj.get(kw) {
                alone(kw, &[])?;
                let alts = match alts.as_array() {
                    Some(a) if !a.is_empty() => a,
                    _ => return Err(bad(kw, at, "must be a non-empty list of schemas")),
                };
                let mut names = Vec::new();
                for (i, alt) in alts.iter().enumerate() {
                    let hint = format!("{name}-{i}");
                    names.push(self.rule(alt, &hint, &format!("{at}/{kw}/{i}"), depth + 1)?);
                }
                return Ok(names.join(" | "));
            }
        }
        let types = types(obj, at)?;
        for kw in ["enum", "const"] {
            if let Some(v) = obj.get(kw) {
                alone(kw, &["type"])?;
                let values = match (kw, v) {
                    ("const", v) => std::slice::from_ref(v),
                    (_, Value::Array(a)) if !a.is_empty() => a.as_slice(),
                    _ => return Err(bad(kw, at, "must be a non-empty list")),
                };
                return self.literals(values, types.as_deref(), kw, at);
            }
        }
        let types = match types {
            Some(t) => t,
            None => match families.as_slice() {
                [] => return Ok(self.p("value").into()),
                [(f, _), rest @ ..] if rest.iter().all(|(g, _)| g == f) => vec![*f],
                _ => {
                    return Err(bad(
                        "type",
                        at,
                        "absent, and the keywords are for several types",
                    ))
                }
            },
        };
        if let Some((f, kw)) = families.iter().find(|(f, _)| !types.contains(f)) {
            let why = format!("applies to {f}s, but `type` is {types:?}");
            return Err(bad(kw, at, &why));
        }
        // Each body is a sequence (inner alternatives are parenthesised).
        let mut alts = Vec::new();
        for t in types {
            alts.push(match t {
                "object" => self.object(obj, name, at, depth)?,
                "array" => self.array(obj, name, at, depth)?,
                "string" => self.string(obj, at)?,
                "number" => self.p("number").into(),
                "integer" => self.p("integer").into(),
                "boolean" => self.p("boolean").into(),
                _ => self.p("null").into(),
            });
        }
        Ok(alts.join(" | "))
    }

    fn reference(&mut self, r: &Value, at: &str, depth: usize) -> Result<String> {
        let r = r
            .as_str()
            .ok_or_else(|| bad("$ref", at, "must be a string"))?;
        let bad_ref = |why| SchemaError::BadRef {
            reference: r.into(),
            at: at.into(),
            why,
        };
        let (container, key) = if let Some(k) = r.strip_prefix("#/$defs/") {
            ("$defs", k)
        } else if let Some(k) = r.strip_prefix("#/definitions/") {
            ("definitions", k)
        } else {
            return Err(bad_ref(
                "only #/$defs/NAME and #/definitions/NAME are supported",
            ));
        };
        if key.contains('/') {
            return Err(bad_ref(
                "only #/$defs/NAME and #/definitions/NAME are supported",
            ));
        }
        let memo = format!("{container}/{key}");
        if let Some(top) = self.guard.last() {
            self.lefts.push((top.clone(), memo.clone()));
        }
        if let Some(rule) = self.refs.get(&memo) {
            return Ok(rule.clone());
        }
        let key = key.replace("~1", "/").replace("~0", "~");
        let target = self.root.get(container).and_then(|d| d.get(&key));
        let target = target.ok_or_else(|| bad_ref("no such definition"))?;
        let slot = self.reserve(&format!("def-{}", sanitize(&key)))?;
        let rule = self.rules[slot].0.clone();
        self.refs.insert(memo.clone(), rule.clone());
        self.guard.push(memo);
        let body = self.expr(target, &rule, r, depth + 1)?;
        self.guard.pop();
        self.fill(slot, body)?;
        Ok(rule)
    }

    fn literals(
        &mut self,
        values: &[Value],
        types: Option<&[&str]>,
        kw: &str,
        at: &str,
    ) -> Result<String> {
        let mut lits = Vec::new();
        for v in values {
            let t = match v {
                Value::Null => "null",
                Value::Bool(_) => "boolean",
                Value::String(_) => "string",
                Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0) => "integer",
                Value::Number(_) => "number",
                _ => {
                    return Err(SchemaError::Unsupported {
                        keyword: kw.into(),
                        at: at.into(),
                        why: "only strings, numbers, booleans and null are supported as values",
                    })
                }
            };
            if let Some(types) = types {
                if !(types.contains(&t) || t == "integer" && types.contains(&"number")) {
                    return Err(bad(kw, at, &format!("{v} is not of type {types:?}")));
                }
            }
            let lit = literal(&v.to_string());
            self.grow(lit.len() + 3)?;
            lits.push(lit);
        }
        let sp = self.p("space");
        Ok(match lits.as_slice() {
            [one] => format!("{one} {sp}"),
            _ => format!("({}) {sp}", lits.join(" | ")),
        })
    }

    fn object(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        at: &str,
        depth: usize,
    ) -> Result<String> {
        let (props, req, extra) = (
            obj.get("properties"),
            obj.get("required"),
            obj.get("additionalProperties"),
        );
        match extra {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true) | Value::Object(_)) => {
                return Err(SchemaError::Unsupported {
                    keyword: "additionalProperties".into(),
                    at: at.into(),
                    why: "only false (no keys beyond `properties`) is supported",
                })
            }
            Some(_) => {
                return Err(bad(
                    "additionalProperties",
                    at,
                    "must be a boolean or a schema",
                ))
            }
        }
        if props.is_none() && req.is_none() && extra.is_none() {
            return Ok(self.p("object").into());
        }
        let empty = Map::new();
        let props = match props {
            None => &empty,
            Some(Value::Object(p)) => p,
            Some(_) => return Err(bad("properties", at, "must be an object of schemas")),
        };
        let mut required = HashSet::new();
        let none = Vec::new();
        for r in req
            .map_or(Some(&none), Value::as_array)
            .ok_or_else(|| bad("required", at, "must be a list"))?
        {
            match r.as_str() {
                Some(k) if props.contains_key(k) => required.insert(k),
                _ => {
                    return Err(bad(
                        "required",
                        at,
                        &format!("{r} is not a key of `properties`"),
                    ))
                }
            };
        }
        let sp = self.p("space");
        let saved = std::mem::take(&mut self.guard);
        let mut kvs = Vec::new();
        for (key, sub) in props {
            let hint = format!("{name}-{}", sanitize(key));
            let sub_at = format!(
                "{at}/properties/{}",
                key.replace('~', "~0").replace('/', "~1")
            );
            let value = self.rule(sub, &hint, &sub_at, depth + 1)?;
            let kv = format!(
                "{} {sp} \":\" {sp} {value}",
                literal(&Value::String(key.clone()).to_string())
            );
            self.grow(kv.len())?;
            kvs.push((kv, required.contains(key.as_str())));
        }
        self.guard = saved;
        // A comma precedes every present property but the first, so there is
        // one alternative per property that can come first: the leading
        // optional ones and the first required one.
        let tail = |from: usize| -> String {
            kvs[from..]
                .iter()
                .map(|(kv, req)| match req {
                    true => format!(" \",\" {sp} {kv}"),
                    false => format!(" (\",\" {sp} {kv})?"),
                })
                .collect()
        };
        let first_req = kvs.iter().position(|(_, r)| *r).unwrap_or(kvs.len());
        let mut alts = Vec::new();
        for (j, (kv, _)) in kvs.iter().enumerate().take(first_req + 1) {
            let alt = format!("{kv}{}", tail(j + 1));
            self.grow(alt.len())?;
            alts.push(alt);
        }
        let inner = match (alts.as_slice(), first_req < kvs.len()) {
            ([], _) => String::new(),
            ([one], true) => one.clone(),
            (_, true) => format!("({})", alts.join(" | ")),
            (_, false) => format!("({})?", alts.join(" | ")),
        };
        Ok(seq(&["\"{\"", sp, &inner, "\"}\"", sp]))
    }

    fn array(
        &mut self,
        obj: &Map<String, Value>,
        name: &str,
        at: &str,
        depth: usize,
    ) -> Result<String> {
        let min = count(obj, "minItems", MAX_ITEMS, at)?.unwrap_or(0);
        let max = count(obj, "maxItems", MAX_ITEMS, at)?;
        if max.is_some_and(|max| min > max) {
            return Err(bad("minItems", at, "is more than maxItems"));
        }
        let saved = std::mem::take(&mut self.guard);
        let item = match obj.get("items") {
            None => self.p("value").to_string(),
            Some(Value::Array(_)) => {
                return Err(SchemaError::Unsupported {
                    keyword: "items".into(),
                    at: at.into(),
                    why: "tuple items (a list of schemas) are not supported",
                })
            }
            Some(s) => self.rule(
                s,
                &format!("{name}-item"),
                &format!("{at}/items"),
                depth + 1,
            )?,
        };
        self.guard = saved;
        let sp = self.p("space");
        let more = self.repeat(
            &format!("\",\" {sp} {item}"),
            min.saturating_sub(1),
            max.map(|m| m.saturating_sub(1)),
        )?;
        let list = match (min, max) {
            (_, Some(0)) => String::new(),
            (0, _) => format!("({})?", seq(&[&item, &more])),
            _ => seq(&[&item, &more]),
        };
        Ok(seq(&["\"[\"", sp, &list, "\"]\"", sp]))
    }

    fn string(&mut self, obj: &Map<String, Value>, at: &str) -> Result<String> {
        let min = count(obj, "minLength", MAX_STRING_LENGTH, at)?;
        let max = count(obj, "maxLength", MAX_STRING_LENGTH, at)?;
        if min.is_none() && max.is_none() {
            return Ok(self.p("string").into());
        }
        let min = min.unwrap_or(0);
        if max.is_some_and(|max| min > max) {
            return Err(bad("minLength", at, "is more than maxLength"));
        }
        let ch = self.p("char");
        let chars = self.repeat(ch, min, max)?;
        Ok(seq(&[r#""\"""#, &chars, r#""\"""#, self.p("space")]))
    }

    /// `x` repeated `min..=max` times (`max` None: unbounded), in GBNF.
    fn repeat(&mut self, x: &str, min: u64, max: Option<u64>) -> Result<String> {
        self.repeats += max.unwrap_or(min + 1);
        if self.repeats > MAX_REPEATS {
            return Err(too_large(format!("more than {MAX_REPEATS} repetitions")));
        }
        let x = if x.contains(' ') {
            format!("({x})")
        } else {
            x.to_string()
        };
        Ok(match (min, max) {
            (_, Some(0)) => String::new(),
            (1, Some(1)) => x,
            (0, Some(1)) => format!("{x}?"),
            (0, None) => format!("{x}*"),
            (1, None) => format!("{x}+"),
            (m, None) => format!("{x}{{{m},}}"),
            (m, Some(n)) if m == n => format!("{x}{{{m}}}"),
            (m, Some(n)) => format!("{x}{{{m},{n}}}"),
        })
    }

    pub(super) fn finish(self) -> Result<String> {
        let mut out = String::new();
        for (name, body) in &self.rules {
            let _ = writeln!(out, "{name} ::= {}", body.as_deref().unwrap_or_default());
        }
        for (p, used) in PRIMITIVES.iter().zip(&self.prims) {
            if *used {
                let _ = writeln!(out, "{} ::= {}", p.0, p.1);
            }
        }
        if out.len() > MAX_GRAMMAR_BYTES {
            return Err(too_large(format!("more than {MAX_GRAMMAR_BYTES} bytes")));
        }
        Ok(out)
    }
}
