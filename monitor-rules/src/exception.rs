//! A rule's exceptions, compiled: the cases it must not fire for, each a tuple of values
//! compared with the act's fields, as Falco's rule exceptions are. An exception is only looked
//! at once its rule matched, so a long list of them costs nothing on the events no rule is
//! about.

use globset::GlobSet;

use super::{
    Context,
    lists::Lists,
    matcher::{Facts, addrs, globs, is_glob, ports},
    net::{AddrRange, PortRange},
    schema::{ExceptionSpec, Field, Phase, Scalar, Value},
};
use monitor_engine::trace::{Event, SyscallEvent};

/// One exception of a rule, ready to test.
#[derive(Debug, Clone)]
pub struct Exception {
    /// As written, with list references expanded (what a policy shows and the kernel's
    /// allow-list is taken from).
    pub spec: ExceptionSpec,
    tuples: Vec<Vec<Values>>,
}

/// The values one field of a tuple may have.
#[derive(Debug, Clone)]
enum Values {
    /// Texts without glob syntax (as learning writes them), compared as they are: cheaper
    /// than a glob set, and an exception is tested on every act its rule matches.
    Texts(Vec<String>),
    Globs(GlobSet),
    Uids(Vec<u32>),
    Addrs(Vec<AddrRange>),
    Ports(Vec<PortRange>),
}

impl Exception {
    pub fn compile(spec: &ExceptionSpec, lists: &Lists) -> Result<Exception, String> {
        let name = &spec.name;
        if name.trim().is_empty() {
            return Err("an exception needs a name".into());
        }
        if spec.fields.is_empty() {
            return Err(format!("exception `{name}`: give its `fields`"));
        }
        if let Some(twice) = spec
            .fields
            .iter()
            .enumerate()
            .find(|(i, f)| spec.fields[..*i].contains(f))
        {
            return Err(format!(
                "exception `{name}`: field `{}` is given twice",
                twice.1.name()
            ));
        }
        let mut expanded = spec.clone();
        let mut tuples = Vec::with_capacity(spec.values.len());
        for (n, tuple) in spec.values.iter().enumerate() {
            if tuple.len() != spec.fields.len() {
                return Err(format!(
                    "exception `{name}`: tuple {} has {} values for {} fields",
                    n + 1,
                    tuple.len(),
                    spec.fields.len()
                ));
            }
            let mut compiled = Vec::with_capacity(tuple.len());
            for (i, (field, value)) in spec.fields.iter().zip(tuple).enumerate() {
                let items = lists
                    .expand(value.items())
                    .map_err(|e| format!("exception `{name}`, tuple {}: {e}", n + 1))?;
                let values = compile_values(*field, &items).map_err(|e| {
                    format!("exception `{name}`, tuple {}, {}: {e}", n + 1, field.name())
                })?;
                expanded.values[n][i] = match items.as_slice() {
                    [one] => Value::One(one.clone()),
                    _ => Value::Any(items),
                };
                compiled.push(values);
            }
            tuples.push(compiled);
        }
        Ok(Exception {
            spec: expanded,
            tuples,
        })
    }

    /// Whether this exception covers the act: its phase is one of the exception's, and every
    /// field of some tuple matches. A field whose value is not known (a program the trace
    /// never saw) matches nothing, so an unknown act is never excused.
    pub fn covers(&self, sc: &SyscallEvent, facts: &Facts, event: &Event, ctx: &Context) -> bool {
        (self.spec.phases.is_empty() || self.spec.phases.contains(&ctx.phase))
            && self.tuples.iter().any(|tuple| {
                self.spec
                    .fields
                    .iter()
                    .zip(tuple)
                    .all(|(field, values)| field_matches(*field, values, sc, facts, event, ctx))
            })
    }

    /// The phases it applies in, for people (`any` for all).
    pub fn phases(&self) -> &[Phase] {
        &self.spec.phases
    }
}

fn compile_values(field: Field, items: &[Scalar]) -> Result<Values, String> {
    if items.is_empty() {
        return Err("an empty list matches nothing".into());
    }
    let texts = || -> Vec<String> { items.iter().map(|s| s.text().into_owned()).collect() };
    Ok(match field {
        Field::Exe
        | Field::Comm
        | Field::ParentExe
        | Field::AncestorExe
        | Field::Path
        | Field::Syscall => {
            let texts = texts();
            if texts.iter().any(|t| is_glob(t)) {
                Values::Globs(globs(&texts)?.expect("not empty"))
            } else {
                Values::Texts(texts)
            }
        }
        Field::Uid => Values::Uids(
            items
                .iter()
                .map(|s| match s {
                    Scalar::Number(n) => {
                        u32::try_from(*n).map_err(|_| format!("`{n}` is not a user id"))
                    }
                    Scalar::Text(t) => t
                        .parse()
                        .map_err(|_| format!("`{t}` is not a user id (a number)")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Field::Addr => Values::Addrs(addrs(&texts())?),
        Field::Port => Values::Ports(ports(items)?),
    })
}

fn field_matches(
    field: Field,
    values: &Values,
    sc: &SyscallEvent,
    facts: &Facts,
    event: &Event,
    ctx: &Context,
) -> bool {
    let view = ctx.process;
    // The text fields, whichever way their values are written.
    let is = |text: &str| match values {
        Values::Texts(texts) => texts.iter().any(|t| t == text),
        Values::Globs(globs) => globs.is_match(text),
        _ => false,
    };
    match (field, values) {
        (Field::Exe, _) => view.and_then(|v| v.exe()).is_some_and(is),
        (Field::ParentExe, _) => view.and_then(|v| v.parent_exe()).is_some_and(is),
        (Field::AncestorExe, _) => view.is_some_and(|v| v.ancestor_exes().flatten().any(is)),
        (Field::Comm, _) => is(&event.comm),
        (Field::Syscall, _) => is(sc.name),
        (Field::Path, _) => facts.paths.iter().any(|p| is(p)),
        (Field::Uid, Values::Uids(uids)) => uids.contains(&event.uid),
        (Field::Addr, Values::Addrs(ranges)) => facts
            .addrs
            .iter()
            .any(|&a| ranges.iter().any(|r| r.contains(a))),
        (Field::Port, Values::Ports(ranges)) => facts
            .ports
            .iter()
            .any(|&p| ranges.iter().any(|r| r.contains(p))),
        // compile_values pairs each field with its kind of values.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values without glob syntax are compared as texts, and judge exactly as their glob set
    /// would: on themselves, their prefixes and extensions, case changes, and other separators.
    #[test]
    fn literal_values_judge_as_their_globs() {
        let literal = [
            "/opt/serving/venv/bin/python3.11",
            "/tmp/x",
            "python3",
            "/etc/ld.so.cache",
            "",
        ];
        let values =
            compile_values(Field::Path, &literal.map(|t| Scalar::Text(t.into()))).expect("valid");
        let Values::Texts(texts) = &values else {
            panic!("literal values compiled to {values:?}")
        };
        let set = globs(texts).unwrap().unwrap();
        let mut tried = 0;
        for text in literal {
            for candidate in [
                text.to_owned(),
                format!("{text}/"),
                format!("{text}x"),
                format!("/{text}"),
                text.to_uppercase(),
                text.replace('.', "/"),
                text.chars().skip(1).collect(),
            ] {
                assert_eq!(
                    texts.contains(&candidate),
                    set.is_match(&candidate),
                    "{candidate:?}"
                );
                tried += 1;
            }
        }
        assert_eq!(tried, 35);
        // Glob syntax anywhere keeps the list a glob set.
        let mixed = compile_values(
            Field::Exe,
            &["/usr/bin/*", "/bin/sh"].map(|t| Scalar::Text(t.into())),
        );
        assert!(matches!(mixed, Ok(Values::Globs(_))));
    }
}
