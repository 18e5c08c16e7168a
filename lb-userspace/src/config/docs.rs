//! The README's configuration table against the schema: every key the schema accepts is listed,
//! nothing else is, and every default the table shows is the one the schema applies. The keys
//! come from the schema's own `Deserialize` (a deserializer that walks every field), the
//! defaults from a minimal file parsed by the schema and written back out.

use std::{cell::RefCell, collections::BTreeMap, collections::BTreeSet};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::schema::RawConfig;

type Error = de::value::Error;

/// Every key path of the schema (`vip.backend.weight`; arrays of tables flattened), and the
/// optional tables (`announce`).
#[derive(Default)]
pub struct Keys {
    pub leaves: BTreeSet<String>,
    pub optional: BTreeSet<String>,
}

pub fn schema_keys() -> Keys {
    let keys = RefCell::new(Keys::default());
    let w = Walk {
        path: String::new(),
        keys: &keys,
    };
    if let Err(e) = <RawConfig as serde::Deserialize>::deserialize(w) {
        eprintln!("walk: {e}");
    }
    keys.into_inner()
}

struct Walk<'a> {
    path: String,
    keys: &'a RefCell<Keys>,
}

impl<'a> Walk<'a> {
    fn at(&self, field: &str) -> Walk<'a> {
        let path = if self.path.is_empty() {
            field.to_string()
        } else {
            format!("{}.{field}", self.path)
        };
        Walk {
            path,
            keys: self.keys,
        }
    }
    fn leaf(&self) {
        self.keys.borrow_mut().leaves.insert(self.path.clone());
    }
}

const SPANNED: &str = "$__serde_spanned_private_Spanned";

impl<'de> Deserializer<'de> for Walk<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_str("")
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_bool(false)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_i64(0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_f64(1.0)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.keys.borrow_mut().optional.insert(self.path.clone());
        v.visit_some(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        // One element, at the same path: an array of tables reads as its table's keys.
        v.visit_seq(One(Some(self)))
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_map(Fields {
            walk: self,
            fields: &[],
            next: 0,
        })
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        if name == SPANNED {
            return v.visit_map(Spanned {
                walk: Some(self),
                next: 0,
            });
        }
        v.visit_map(Fields {
            walk: self,
            fields,
            next: 0,
        })
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i32 i128 u8 u16 u32 u64 u128 f32 char str string bytes byte_buf unit
        unit_struct newtype_struct tuple tuple_struct enum identifier ignored_any
    }
}

struct One<'a>(Option<Walk<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|w| seed.deserialize(w)).transpose()
    }
}

struct Fields<'a> {
    walk: Walk<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(f) = self.fields.get(self.next) else {
            return Ok(None);
        };
        seed.deserialize(de::value::BorrowedStrDeserializer::<Error>::new(f))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let f = self.fields[self.next];
        self.next += 1;
        seed.deserialize(self.walk.at(f))
    }
}

/// What `Spanned<T>` asks for: a start, an end, and the value (walked at the same path).
struct Spanned<'a> {
    walk: Option<Walk<'a>>,
    next: usize,
}

impl<'de> MapAccess<'de> for Spanned<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let key = match self.next {
            0 => "$__serde_spanned_private_start",
            1 => "$__serde_spanned_private_end",
            2 => "$__serde_spanned_private_value",
            _ => return Ok(None),
        };
        seed.deserialize(de::value::BorrowedStrDeserializer::<Error>::new(key))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        self.next += 1;
        match self.next {
            1 | 2 => seed.deserialize(de::value::U64Deserializer::<Error>::new(0)),
            _ => seed.deserialize(self.walk.take().expect("one value")),
        }
    }
}

/// The defaults the schema applies: a file with only the required keys (and every optional
/// table present, so their defaults show) parsed and written back out, flattened to key paths.
pub fn schema_defaults() -> BTreeMap<String, toml::Value> {
    let minimal = "[daemon]\ninterfaces = [\"eth0\"]\n[snat]\naddresses = [\"192.0.2.10\"]\n\
                   [announce]\n[conn_log]\n\
                   [[vip]]\nname = \"v\"\naddress = \"192.0.2.1\"\nport = 5100\n\
                   [vip.health_check]\n[vip.failover]\n\
                   [[vip.group]]\nname = \"g\"\n\
                   [[vip.pin]]\nsources = [\"10.0.0.0/8\"]\ngroups = [\"g\"]\n\
                   [[vip.backend]]\naddress = \"192.0.2.11\"\n";
    let raw: RawConfig = toml::from_str(minimal).expect("the minimal file parses");
    let v = toml::Value::try_from(&raw).expect("the schema serializes");
    let mut out = BTreeMap::new();
    flatten("", &v, &mut out);
    out
}

fn flatten(path: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        toml::Value::Table(t) => t.iter().for_each(|(k, x)| flatten(&at(k), x, out)),
        toml::Value::Array(a) if a.iter().all(|x| x.is_table()) && !a.is_empty() => {
            a.iter().for_each(|x| flatten(path, x, out))
        }
        other => {
            out.insert(path.to_string(), other.clone());
        }
    }
}

/// The README's configuration table: (keys of a row, default cells of the row).
pub fn readme_rows(readme: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        if line.starts_with("| key | default | meaning |") {
            inside = true;
            continue;
        }
        if !inside || line.starts_with("|---") {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let (key_cell, default_cell) = (cells[0].trim_start_matches("| "), cells[1]);
        let mut keys: Vec<String> = Vec::new();
        for k in key_cell.split(", ") {
            let k = k.trim_matches('`');
            let full = match keys.first() {
                Some(first) if !k.contains('.') => {
                    format!("{}.{k}", first.rsplit_once('.').map_or("", |(p, _)| p))
                }
                _ => k.to_string(),
            };
            keys.push(full);
        }
        let defaults = split_defaults(default_cell);
        rows.push((keys, defaults));
    }
    rows
}

/// Splits a default cell on ", " outside parentheses.
fn split_defaults(cell: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    let b = cell.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth == 0 && b.get(i + 1) == Some(&b' ') => {
                out.push(std::mem::take(&mut cur));
                i += 2;
                continue;
            }
            _ => {}
        }
        cur.push(b[i] as char);
        i += 1;
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readme() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap()
    }

    #[test]
    fn the_walker_sees_nested_optional_and_spanned_keys() {
        let k = schema_keys();
        for key in [
            "daemon.interfaces",
            "daemon.log_level",
            "conntrack.max_flows",
            "vip.health_check.headers",
            "vip.backend.weight",
            "vip.pin.spill",
            "announce.drain_file",
            "data_path.mss_clamp",
        ] {
            assert!(k.leaves.contains(key), "{key} not in {:?}", k.leaves);
        }
        assert!(k.optional.contains("announce") && k.optional.contains("vip.health_check"));
        assert!(k.leaves.len() > 50, "{}", k.leaves.len());
    }

    #[test]
    fn the_readme_table_lists_exactly_the_schema_keys() {
        let k = schema_keys();
        let rows = readme_rows(&readme());
        assert!(rows.len() > 30, "{rows:?}");
        let listed: BTreeSet<String> = rows.iter().flat_map(|(k, _)| k.clone()).collect();
        let missing: Vec<&String> = k.leaves.difference(&listed).collect();
        assert!(missing.is_empty(), "README's table lacks {missing:?}");
        let extra: Vec<&String> = listed
            .iter()
            .filter(|l| !k.leaves.contains(*l) && !k.optional.contains(*l))
            .collect();
        assert!(
            extra.is_empty(),
            "README lists keys the schema lacks: {extra:?}"
        );
    }

    #[test]
    fn the_readme_table_shows_the_schema_defaults() {
        let defaults = schema_defaults();
        let mut checked = 0;
        for (keys, cells) in readme_rows(&readme()) {
            assert!(
                cells.len() == 1 || cells.len() == keys.len(),
                "{keys:?}: {} defaults for {} keys: {cells:?}",
                cells.len(),
                keys.len()
            );
            for (i, key) in keys.iter().enumerate() {
                let cell = if cells.len() == 1 {
                    &cells[0]
                } else {
                    &cells[i]
                };
                // Only a plain `value` is a default the schema must apply as written.
                let Some(shown) = cell
                    .strip_prefix('`')
                    .and_then(|c| c.split_once('`'))
                    .map(|(v, _)| v)
                else {
                    continue;
                };
                let Some(actual) = defaults.get(key) else {
                    // Optional without a value (e.g. a pin's name, computed when absent).
                    continue;
                };
                let actual = match actual {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert_eq!(shown, actual, "README's default for {key}");
                checked += 1;
            }
        }
        assert!(checked > 30, "only {checked} defaults compared");
    }
}
