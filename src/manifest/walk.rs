//! Reading a YAML tree with the path of every value at hand, so that each
//! refusal names the field it is about, whatever shape the input has.

use serde_yaml_ng::Value;

/// Why one field cannot be converted: its path in the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.why)
    }
}

pub type Result<T> = std::result::Result<T, Refusal>;

/// A value and where it sits (`spec.template.spec.containers[0]`).
#[derive(Debug, Clone)]
pub struct At<'a> {
    pub value: &'a Value,
    pub path: String,
}

/// What a value is, for "expected a list, found a number".
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a map",
        Value::Tagged(_) => "a tagged value",
    }
}

impl<'a> At<'a> {
    pub fn root(value: &'a Value, path: &str) -> Self {
        At {
            value,
            path: path.to_string(),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn refuse<T>(&self, why: impl Into<String>) -> Result<T> {
        Err(Refusal {
            field: self.path.clone(),
            why: why.into(),
        })
    }

    fn expected<T>(&self, what: &str) -> Result<T> {
        self.refuse(format!("expected {what}, found {}", kind(self.value)))
    }

    pub fn is_null(&self) -> bool {
        self.value.is_null()
    }

    /// The entries of a map, in the order written; keys must be text.
    pub fn entries(&self) -> Result<Vec<(String, At<'a>)>> {
        let Value::Mapping(map) = self.value else {
            return self.expected("a map");
        };
        let mut out = Vec::with_capacity(map.len());
        for (key, value) in map {
            let key = match key {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => return self.refuse(format!("a key is {}, not text", kind(other))),
            };
            let path = self.key(&key);
            out.push((key, At { value, path }));
        }
        Ok(out)
    }

    /// The map's fields, to be taken one by one (see [`Fields`]).
    pub fn fields(&self) -> Result<Fields<'a>> {
        let entries = self.entries()?;
        let used = vec![false; entries.len()];
        Ok(Fields { entries, used })
    }

    /// The items of a list.
    pub fn items(&self) -> Result<Vec<At<'a>>> {
        let Value::Sequence(items) = self.value else {
            return self.expected("a list");
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, value)| At {
                value,
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }

    pub fn str(&self) -> Result<&'a str> {
        match self.value {
            Value::String(s) => Ok(s),
            _ => self.expected("a string"),
        }
    }

    /// Text, or a number or boolean read as text (`'0.5'` and `0.5` alike).
    pub fn text(&self) -> Result<String> {
        match self.value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => self.expected("a string or number"),
        }
    }

    pub fn bool(&self) -> Result<bool> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            _ => self.expected("true or false"),
        }
    }

    /// A whole number from `min` to `max`.
    pub fn number(&self, min: u64, max: u64) -> Result<u64> {
        match self.value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            _ if matches!(self.value, Value::Number(_)) => {
                self.refuse(format!("must be a whole number from {min} to {max}"))
            }
            _ => self.expected("a number"),
        }
    }

    /// A list of strings.
    pub fn strings(&self) -> Result<Vec<String>> {
        self.items()?
            .iter()
            .map(|item| item.text())
            .collect::<Result<Vec<_>>>()
    }
}

/// A map whose fields are taken by name; whatever is left over when it is
/// finished is refused, each leftover naming its own path.
pub struct Fields<'a> {
    entries: Vec<(String, At<'a>)>,
    used: Vec<bool>,
}

impl<'a> Fields<'a> {
    /// The field, if present (a `null` value counts as absent).
    pub fn take(&mut self, key: &str) -> Option<At<'a>> {
        let index = self.entries.iter().position(|(k, _)| k == key)?;
        self.used[index] = true;
        let at = &self.entries[index].1;
        (!at.is_null()).then(|| at.clone())
    }

    /// Accepts the field without reading it.
    pub fn ignore(&mut self, key: &str) {
        let _ = self.take(key);
    }

    /// Accepts every field whose name starts with `prefix` (`x-`).
    pub fn ignore_prefixed(&mut self, prefix: &str) {
        for (i, (key, _)) in self.entries.iter().enumerate() {
            if key.starts_with(prefix) {
                self.used[i] = true;
            }
        }
    }

    /// Refuses the first field nobody took, saying `why(name)`.
    pub fn finish(self, why: impl Fn(&str) -> String) -> Result<()> {
        for ((key, at), used) in self.entries.iter().zip(&self.used) {
            if !used {
                return at.refuse(why(key));
            }
        }
        Ok(())
    }
}

/// Splits a command written as one string into words the way a shell
/// would, without running one: blanks separate words, single quotes keep
/// everything, double quotes keep everything but `\"` and `\\`, and a
/// backslash outside quotes keeps the next character. Nothing is expanded.
pub fn split_words(text: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("the text ends with a lone backslash".into()),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_like_a_shell_without_one() {
        let split = |t: &str| split_words(t).unwrap();
        assert_eq!(split("sleep  1000"), ["sleep", "1000"]);
        assert_eq!(
            split("sh -c 'echo a && echo b'"),
            ["sh", "-c", "echo a && echo b"]
        );
        assert_eq!(
            split(r#"echo "a \"b\" $HOME" c\ d"#),
            ["echo", r#"a "b" $HOME"#, "c d"]
        );
        assert_eq!(split("''"), [""]);
        assert!(split("").is_empty());
        assert!(split_words("echo 'open").is_err());
        assert!(split_words("echo \"open").is_err());
        assert!(split_words("echo \\").is_err());
    }
}
