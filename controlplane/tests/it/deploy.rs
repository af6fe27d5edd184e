//! `deploy/k8s` against the code: the CRD YAML must be what `fedgw-controlplane crdgen` prints,
//! and `kubectl kustomize` of `deploy/k8s/crd`, `deploy/k8s/overlays/org1` and of that overlay
//! with the optional components must render the kinds, image, ports, probes and RBAC the
//! deployment relies on. kubectl is required (CI has it): without it the render tests fail and
//! say so.

use std::path::{Path, PathBuf};
use std::process::Command;

use fedgw_controlplane::k8s::crd::ConsortiumNode;
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_yaml::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

#[test]
fn crd_yaml_matches_crdgen() {
    let want = serde_yaml::to_string(&ConsortiumNode::crd()).expect("yaml");
    let path = deploy().join("crd/crd.yaml");
    if std::env::var_os("UPDATE_CRD").is_some() {
        std::fs::write(&path, &want).expect("write crd.yaml");
    }
    let have = std::fs::read_to_string(&path).expect("deploy/k8s/crd/crd.yaml");
    assert!(
        have == want,
        "deploy/k8s/crd/crd.yaml drifted from the code: run \
         `cargo run -p fedgw-controlplane -- crdgen > deploy/k8s/crd/crd.yaml` \
         (or UPDATE_CRD=1 cargo test -p fedgw-controlplane --test it deploy::)"
    );
}

fn render(overlay: &str) -> Vec<Value> {
    render_dir(&deploy().join("overlays").join(overlay))
}

fn render_dir(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubectl is needed to render deploy/k8s (kubectl kustomize): {e}")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn org1_overlay_renders_the_deployment() {
    let docs = render("org1");
    let mut kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "ConsortiumNode",
            "Deployment",
            "Namespace",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    for d in &docs {
        let cluster_scoped = d["kind"] == "Namespace";
        if !cluster_scoped {
            assert_eq!(d["metadata"]["namespace"], "org1", "{:?}", d["metadata"]);
        }
    }
    assert!(
        docs.iter().all(|d| d["kind"] != "Secret"),
        "no key material is rendered"
    );

    // the gateway: 2 replicas, spread, with the controller beside it
    let dep = find(&docs, "Deployment", "fedgw");
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "fedgw");
    assert!(
        !pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_null()
    );
    let containers = pod["containers"].as_sequence().expect("containers");
    let by_name = |n: &str| {
        containers
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("container {n}"))
    };
    let (gw, cp) = (by_name("gateway"), by_name("controlplane"));
    assert_eq!(gw["image"], "fedgw:dev");
    assert_eq!(cp["image"], "fedgw:dev");
    assert_eq!(strings(&cp["command"]).last(), Some(&"run"));
    assert_eq!(gw["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(gw["readinessProbe"]["httpGet"]["path"], "/readyz");
    // the controller's probes, on the port its --health-listen names
    assert!(strings(&cp["args"]).contains(&"--health-listen=0.0.0.0:9465"));
    assert_eq!(cp["ports"][0]["containerPort"], 9465);
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        assert_eq!(cp[probe]["httpGet"]["path"], path);
        assert_eq!(cp[probe]["httpGet"]["port"], cp["ports"][0]["name"]);
    }
    // metrics: a pod annotation for annotation-based discovery, and a Service
    let annotations = &dep["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9464");
    let metrics = find(&docs, "Service", "fedgw-metrics");
    assert_eq!(metrics["spec"]["ports"][0]["port"], 9464);
    assert_eq!(metrics["spec"]["ports"][0]["targetPort"], "metrics");
    for c in [gw, cp] {
        assert!(!c["resources"]["requests"].is_null() && !c["resources"]["limits"].is_null());
        let mounts = c["volumeMounts"].as_sequence().expect("mounts");
        assert!(
            mounts.iter().any(|m| m["mountPath"] == "/var/lib/fedgw"),
            "the shared data dir with the admin socket"
        );
    }
    let protocols = |v: &Value, port: i64| -> Vec<String> {
        let mut p: Vec<String> = v
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|p| p["port"] == port || p["containerPort"] == port)
            .filter_map(|p| p["protocol"].as_str().map(str::to_owned))
            .collect();
        p.sort();
        p
    };
    assert_eq!(protocols(&gw["ports"], 7443), ["TCP", "UDP"]);

    // the gateway port on TCP and UDP; DNS for CoreDNS
    let lb = find(&docs, "Service", "fedgw");
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    assert_eq!(protocols(&lb["spec"]["ports"], 7443), ["TCP", "UDP"]);
    let dns = find(&docs, "Service", "fedgw-dns");
    assert_eq!(protocols(&dns["spec"]["ports"], 53), ["TCP", "UDP"]);

    let pdb = find(&docs, "PodDisruptionBudget", "fedgw");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // RBAC: a namespaced Role with exactly what the controller does
    assert!(docs.iter().all(|d| d["kind"] != "ClusterRole"));
    let role = find(&docs, "Role", "fedgw-controlplane");
    let rules = role["rules"].as_sequence().expect("rules");
    let verbs = |resource: &str| -> Vec<&str> {
        let mut v: Vec<&str> = rules
            .iter()
            .filter(|r| strings(&r["resources"]).contains(&resource))
            .flat_map(|r| strings(&r["verbs"]))
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(verbs("consortiumnodes"), ["get", "list", "watch"]);
    assert_eq!(verbs("consortiumnodes/status"), ["get", "patch"]);
    assert_eq!(
        verbs("services"),
        ["create", "delete", "get", "list", "patch", "watch"]
    );
    assert_eq!(
        verbs("configmaps"),
        ["create", "get", "list", "patch", "watch"]
    );
    assert_eq!(verbs("secrets"), ["get", "list", "watch"]);
    assert_eq!(
        verbs("leases"),
        ["create", "get", "list", "update", "watch"]
    );
    assert_eq!(verbs("pods"), ["get", "list", "patch"]);
    assert!(rules.iter().all(|r| !strings(&r["verbs"]).contains(&"*")));
    let binding = find(&docs, "RoleBinding", "fedgw-controlplane");
    assert_eq!(binding["subjects"][0]["name"], "fedgw");

    // the example nodes are valid resources of the CRD's group
    let node = find(&docs, "ConsortiumNode", "node1");
    assert_eq!(node["apiVersion"], "fedgw.io/v1alpha1");
    let parsed: ConsortiumNode = serde_yaml::from_value(node.clone()).expect("a ConsortiumNode");
    assert_eq!(parsed.spec.ports.p2p, Some(30303));
}

#[test]
fn the_crd_is_applied_on_its_own() {
    let docs = render_dir(&deploy().join("crd"));
    let [crd] = docs.as_slice() else {
        panic!("one document: {docs:?}")
    };
    assert_eq!(crd["kind"], "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "consortiumnodes.fedgw.io");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(
        spec["x-kubernetes-validations"][0]["rule"],
        fedgw_controlplane::k8s::crd::ONE_TARGET_RULE
    );
}

/// `to` relative to the directory `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    to[common..].iter().for_each(|c| out.push(c));
    out
}

#[test]
fn the_optional_components_render_a_service_monitor_and_a_network_policy() {
    // an org's overlay with both components, as docs/kubernetes.md has it (kustomize wants
    // relative paths)
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let root = dir.path().canonicalize().expect("tempdir path");
    let k8s = deploy().canonicalize().expect("deploy/k8s");
    let rel = |p: &str| relative(&root, &k8s.join(p)).display().to_string();
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: org1\n\
         resources:\n  - {}\ncomponents:\n  - {}\n  - {}\n",
        rel("overlays/org1"),
        rel("components/servicemonitor"),
        rel("components/networkpolicy"),
    );
    std::fs::write(root.join("kustomization.yaml"), kustomization).expect("write");
    let docs = render_dir(&root);

    let monitor = find(&docs, "ServiceMonitor", "fedgw");
    assert_eq!(monitor["metadata"]["namespace"], "org1");
    let metrics = find(&docs, "Service", "fedgw-metrics");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("labels")
    {
        assert_eq!(
            &metrics["metadata"]["labels"][k], v,
            "the monitor selects fedgw-metrics"
        );
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");

    let policy = find(&docs, "NetworkPolicy", "fedgw");
    assert_eq!(policy["metadata"]["namespace"], "org1");
    assert_eq!(strings(&policy["spec"]["policyTypes"]), ["Ingress"]);
    let rules = policy["spec"]["ingress"].as_sequence().expect("rules");
    let open: Vec<_> = rules.iter().filter(|r| r["from"].is_null()).collect();
    let [gateway] = open.as_slice() else {
        panic!("only the gateway port is open to everyone: {open:?}")
    };
    let ports: Vec<(i64, &str)> = gateway["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap_or(0),
                p["protocol"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(ports, [(7443, "TCP"), (7443, "UDP")]);
    let dns = rules
        .iter()
        .find(|r| r["ports"][0]["port"] == 5353)
        .expect("a DNS rule");
    assert!(!dns["from"].is_null(), "DNS only from the cluster");
}
