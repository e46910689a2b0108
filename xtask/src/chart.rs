//! The Helm chart (dist/helm/monitor) and the plain manifest
//! (dist/kubernetes/monitord-daemonset.yaml) describe the same DaemonSet: what can drift
//! between them is checked here. Debian has no helm package, so the chart is not rendered by
//! helm: values.yaml is parsed, and the templates' plain `{{ .Values.x.y }}` substitutions are
//! made, which is all the facts compared here go through.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};

/// What must be the same in the chart's DaemonSet (as its default values make it) and the
/// manifest's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Facts {
    image: String,
    command: Vec<String>,
    container_port: String,
    scrape_port: String,
    privileged: bool,
    /// Volume name to host path.
    host_paths: BTreeMap<String, String>,
    pod_security: String,
}

/// `text` with each `{{ .Values.a.b }}` replaced by that scalar of `values`.
pub fn substitute(text: &str, values: &serde_yaml_ng::Value) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").context("an unclosed {{")? + start + 2;
        let inner = rest[start + 2..end - 2].trim();
        out.push_str(&rest[..start]);
        match inner.strip_prefix(".Values.") {
            Some(path) if !path.contains(' ') => {
                let mut value = values;
                for key in path.split('.') {
                    value = value
                        .get(key)
                        .with_context(|| format!("values.yaml has no {path}"))?;
                }
                out.push_str(&match value {
                    serde_yaml_ng::Value::String(s) => s.clone(),
                    serde_yaml_ng::Value::Number(n) => n.to_string(),
                    serde_yaml_ng::Value::Bool(b) => b.to_string(),
                    other => bail!("{path} is not a scalar: {other:?}"),
                });
            }
            _ => out.push_str(&rest[start..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The facts of a DaemonSet (and its Namespace) written as the manifest and the chart's
/// templates write them, read line by line.
pub fn facts(text: &str) -> Facts {
    let mut facts = Facts::default();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let value = |line: &str, key: &str| {
        line.strip_prefix(key)
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    for (i, line) in lines.iter().enumerate() {
        if let Some(v) = value(line, "image:") {
            facts.image = v;
        } else if let Some(v) = value(line, "containerPort:") {
            facts.container_port = v;
        } else if let Some(v) = value(line, "prometheus.io/port:") {
            facts.scrape_port = v;
        } else if let Some(v) = value(line, "pod-security.kubernetes.io/enforce:") {
            facts.pod_security = v;
        } else if *line == "privileged: true" {
            facts.privileged = true;
        } else if let Some(v) = value(line, "command:")
            && v.contains("monitord")
        {
            facts.command = serde_json::from_str(&v).unwrap_or_default();
        } else if *line == "hostPath:"
            && let Some(name) = i.checked_sub(1).and_then(|p| value(lines[p], "- name:"))
            && let Some(path) = lines.get(i + 1).and_then(|l| value(l, "path:"))
        {
            facts.host_paths.insert(name, path);
        }
    }
    facts
}

/// The chart's DaemonSet facts as its default values make them.
pub fn chart_facts(chart: &std::path::Path) -> Result<Facts> {
    let values: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart.join("values.yaml"))?)?;
    let mut text = String::new();
    for template in crate::dist::walk(&chart.join("templates"))? {
        text.push_str(&substitute(&std::fs::read_to_string(&template)?, &values)?);
        text.push('\n');
    }
    Ok(facts(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root;

    #[test]
    fn the_chart_and_the_manifest_run_the_same_daemon() {
        let manifest =
            std::fs::read_to_string(root().join("dist/kubernetes/monitord-daemonset.yaml"))
                .unwrap();
        let plain = facts(&manifest);
        // The facts were found, not left empty on both sides.
        assert_eq!(plain.image, "monitor:0.1.0");
        assert_eq!(plain.command.first().map(String::as_str), Some("nsenter"));
        assert_eq!(plain.container_port, "9464");
        assert!(plain.privileged);
        assert_eq!(plain.pod_security, "privileged");
        assert_eq!(plain.host_paths.len(), 6, "{:?}", plain.host_paths);
        let chart = chart_facts(&root().join("dist/helm/monitor")).unwrap();
        assert_eq!(chart, plain);
    }

    #[test]
    fn a_drift_is_seen() {
        let values: serde_yaml_ng::Value =
            serde_yaml_ng::from_str("image: {tag: \"0.2.0\"}\nmetrics: {port: 9000}\n").unwrap();
        let template = "image: \"monitor:{{ .Values.image.tag }}\"\n\
                        containerPort: {{ .Values.metrics.port }}\n\
                        values: {{ toJson .Values.architectures }}\n";
        let text = substitute(template, &values).unwrap();
        assert_eq!(
            text,
            "image: \"monitor:0.2.0\"\ncontainerPort: 9000\nvalues: {{ toJson .Values.architectures }}\n"
        );
        let f = facts(&text);
        assert_eq!(
            (f.image.as_str(), f.container_port.as_str()),
            ("monitor:0.2.0", "9000")
        );
        assert!(substitute("{{ .Values.nope }}", &values).is_err());
        let volumes = "      - name: export\n        hostPath:\n          path: /var/log/x\n";
        assert_eq!(
            facts(volumes).host_paths,
            BTreeMap::from([("export".to_owned(), "/var/log/x".to_owned())])
        );
    }
}
