//! Named lists: items written once (programs, directories, ranges, ports) and named by many
//! rules as `$name`. A list may use lists defined before it, so there are no cycles to find.

use std::collections::HashMap;

use super::schema::{ListSpec, Scalar};

/// The lists known so far, each with its references expanded.
#[derive(Debug, Clone, Default)]
pub struct Lists {
    by_name: HashMap<String, Vec<Scalar>>,
}

/// The list name an item refers to, if it is a reference.
fn reference(item: &str) -> Option<&str> {
    item.strip_prefix('$')
}

impl Lists {
    /// Adds `spec`, whose items may name lists defined before it.
    pub fn define(&mut self, spec: &ListSpec) -> Result<(), String> {
        let name = spec.name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!(
                "list name `{}`: letters, digits, `_`, `-` and `.` only",
                spec.name
            ));
        }
        if self.by_name.contains_key(name) {
            return Err(format!("list `{name}` is defined twice"));
        }
        let items = self.expand(&spec.items)?;
        self.by_name.insert(name.to_owned(), items);
        Ok(())
    }

    /// `items` with every `$name` replaced by the items of that list.
    pub fn expand(&self, items: &[Scalar]) -> Result<Vec<Scalar>, String> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Scalar::Text(t) => match reference(t) {
                    Some(name) => out.extend_from_slice(self.get(name)?),
                    None => out.push(item.clone()),
                },
                Scalar::Number(_) => out.push(item.clone()),
            }
        }
        Ok(out)
    }

    /// `items` (texts) with every `$name` replaced by the items of that list, as texts.
    pub fn expand_texts(&self, items: &[String]) -> Result<Vec<String>, String> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match reference(item) {
                Some(name) => out.extend(self.get(name)?.iter().map(|s| s.text().into_owned())),
                None => out.push(item.clone()),
            }
        }
        Ok(out)
    }

    fn get(&self, name: &str) -> Result<&[Scalar], String> {
        self.by_name
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("no list `{name}` (lists are defined before they are used)"))
    }

    /// Adds `other`'s lists; a name in both is an error.
    pub fn merge(&mut self, other: &Lists) -> Result<(), String> {
        for (name, items) in &other.by_name {
            if self.by_name.get(name).is_some_and(|mine| mine != items) {
                return Err(format!("list `{name}` is already defined"));
            }
            self.by_name.insert(name.clone(), items.clone());
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(name: &str, items: &[&str]) -> ListSpec {
        ListSpec {
            name: name.into(),
            items: items.iter().map(|&i| i.into()).collect(),
        }
    }

    #[test]
    fn lists_expand_lists_defined_before_them() {
        let mut lists = Lists::default();
        lists
            .define(&list("shells", &["/bin/sh", "/bin/bash"]))
            .unwrap();
        lists
            .define(&list("programs", &["$shells", "/usr/bin/python3*"]))
            .unwrap();
        assert_eq!(
            lists
                .expand_texts(&["$programs".into(), "/bin/true".into()])
                .unwrap(),
            ["/bin/sh", "/bin/bash", "/usr/bin/python3*", "/bin/true"]
        );
        assert!(lists.define(&list("later", &["$nope"])).is_err());
        assert!(lists.define(&list("shells", &["x"])).is_err(), "twice");
        assert!(lists.define(&list("bad name", &["x"])).is_err());
        assert!(lists.expand_texts(&["$unknown".into()]).is_err());
    }
}
