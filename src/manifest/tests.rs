//! Tables: an input and the gantry manifest it must equal, or an input and
//! the fragments its refusal must hold; then the same inputs broken in
//! every place, which must be refused without a panic.

use serde_yaml_ng::Value;

use super::{parse, to_yaml};
use crate::state::spec::{parse_manifest, WorkloadSpec};

fn gantry(text: &str) -> Vec<WorkloadSpec> {
    match parse_manifest(text) {
        Ok(specs) => specs,
        Err(e) => panic!("the expected manifest is not valid: {e}\n{text}"),
    }
}

/// `input` converts to exactly what `expected` (gantry YAML) says, and the
/// conversion printed by `to_yaml` reads back as the same specs.
fn check(input: &str, expected: &str) {
    let specs = match parse(input) {
        Ok(specs) => specs,
        Err(e) => panic!("refused: {e}\n{input}"),
    };
    assert_eq!(specs, gantry(expected), "{input}");
    let printed = to_yaml(&specs).unwrap();
    assert_eq!(parse(&printed).unwrap(), specs, "{printed}");
}

fn refused(input: &str) -> String {
    match parse(input) {
        Ok(specs) => panic!("accepted: {specs:?}\n{input}"),
        Err(e) => e.0,
    }
}

fn check_refused(input: &str, fragments: &[&str]) {
    let error = refused(input);
    for fragment in fragments {
        assert!(
            error.contains(fragment),
            "`{fragment}` missing from: {error}\n{input}"
        );
    }
}

const IMAGE: &str = "registry.local/sensor:1.4";

fn compose(service: &str) -> String {
    format!("services:\n  web:\n    image: {IMAGE}\n{service}")
}

fn deployment(container: &str, pod: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n{pod}      containers:\n        - name: web\n          image: {IMAGE}\n{container}"
    )
}

#[test]
fn the_example_files_convert() {
    check(
        include_str!("../../examples/workloads/compose.yaml"),
        r#"
name: greeter
image: 127.0.0.1:5000/gantry/busybox:demo
command: [sh, -c]
args: ['mkdir -p /www && echo "$GREETING" > /www/index.html && exec httpd -f -p 127.0.0.1:18081 -h /www']
env: {GREETING: hello from compose}
ports: [{port: 18081}]
restart: always
resources: {cpu: 50m, memory: 16Mi}
probes:
  liveness: {exec: [test, -f, /www/index.html], period: 5s, timeout: 2s, failure_threshold: 3}
---
name: counter
image: 127.0.0.1:5000/gantry/busybox:demo
args: [sh, -c, 'while true; do echo counter tick; sleep 5; done']
replicas: 2
spread: node
resources: {cpu: 50m, memory: 16Mi}
mounts: [{source: /tmp, target: /host-tmp, read_only: true}]
"#,
    );
    check(
        include_str!("../../examples/workloads/deployment.yaml"),
        r#"
name: sensor-reader
image: 127.0.0.1:5000/gantry/busybox:demo
priority: 10
replicas: 3
command: [sh, -c]
args: ['while true; do echo "reader at $SITE: ok"; sleep 5; done']
env: {SITE: hall-3}
resources: {cpu: 50m, memory: 16Mi}
probes: {liveness: {exec: ["true"], period: 10s}}
mounts: [{source: /tmp, target: /host-tmp, read_only: true}]
---
name: calibrate
image: 127.0.0.1:5000/gantry/busybox:demo
restart: on-failure
command: [sh, -c, 'echo "calibrated"; exit 0']
"#,
    );
}

#[test]
fn compose_services_map_onto_workloads() {
    let want = |fields: &str| format!("name: web\nimage: {IMAGE}\n{fields}");
    let cases: &[(&str, &str)] = &[
        // Docker's default restart is no; top-level extras are ignored.
        ("", "restart: never\n"),
        ("    restart: 'no'\n", "restart: never\n"),
        ("    restart: on-failure\n", "restart: on-failure\n"),
        ("    restart: unless-stopped\n", ""),
        ("    deploy: {restart_policy: {condition: none}}\n", "restart: never\n"),
        ("    deploy: {restart_policy: {}}\n", ""),
        ("    deploy: {resources: {limits: {cpus: '0.5'}}}\n", "restart: never\nresources: {cpu: 500m}\n"),
        ("    deploy: {resources: {reservations: {cpus: 2}}}\n", "restart: never\nresources: {cpu: 2}\n"),
        ("    deploy: {resources: {limits: {memory: 50M}, reservations: {memory: 50m}}}\n", "restart: never\nresources: {memory: 50Mi}\n"),
        ("    deploy: {resources: {limits: {memory: 1g}}}\n", "restart: never\nresources: {memory: 1Gi}\n"),
        ("    deploy: {resources: {limits: {memory: 1.5kb}}}\n", "restart: never\nresources: {memory: 1536}\n"),
        ("    deploy: {resources: {limits: {memory: 1000}}}\n", "restart: never\nresources: {memory: 1000}\n"),
        ("    deploy: {mode: replicated, replicas: 0}\n", "restart: never\nreplicas: 0\n"),
        // Entrypoint replaces ENTRYPOINT (command), command replaces CMD (args).
        ("    entrypoint: /bin/sh -c\n    command: [\"echo hi\"]\n", "restart: never\ncommand: [/bin/sh, -c]\nargs: [echo hi]\n"),
        ("    command: echo \"a b\" 'c d' e\\ f\n", "restart: never\nargs: [echo, a b, c d, e f]\n"),
        ("    command: [sleep, 5]\n", "restart: never\nargs: [sleep, '5']\n"),
        ("    environment: {A: 1, B: 'x=y', C: true, D: ''}\n", "restart: never\nenv: {A: '1', B: 'x=y', C: 'true', D: ''}\n"),
        ("    environment: [A=1, B=]\n", "restart: never\nenv: {A: '1', B: ''}\n"),
        ("    environment: {PRICE: '$$5'}\n", "restart: never\nenv: {PRICE: '$5'}\n"),
        ("    volumes: [/data:/data, '/etc/x:/x:ro', {type: bind, source: /a, target: /b, read_only: true}]\n",
         "restart: never\nmounts: [{source: /data, target: /data}, {source: /etc/x, target: /x, read_only: true}, {source: /a, target: /b, read_only: true}]\n"),
        ("    devices: [/dev/ttyUSB0, '/dev/i2c-1:/dev/i2c-1', '/dev/gpiochip0:/dev/gpiochip0:rwm']\n",
         "restart: never\ndevices: [/dev/ttyUSB0, /dev/i2c-1, /dev/gpiochip0]\n"),
        ("    network_mode: host\n    ports: [80, '443:443', '53:53/udp', {target: 8080, published: '8080', name: web}]\n",
         "restart: never\nports: [{port: 80}, {port: 443}, {port: 53, protocol: udp}, {port: 8080, name: web}]\n"),
        ("    labels: {gantry.node/zigbee: 'true', com.example.team: edge}\n    deploy: {placement: {constraints: ['node.labels.site == hall-3']}}\n",
         "restart: never\nnode_selector: {zigbee: 'true', site: hall-3}\n"),
        ("    labels: [gantry.node/zone=a, other]\n", "restart: never\nnode_selector: {zone: a}\n"),
        ("    healthcheck: {test: 'curl -f localhost', interval: 1m30s, retries: 5, start_period: 20s}\n",
         "restart: never\nprobes: {liveness: {exec: [/bin/sh, -c, 'curl -f localhost'], period: 90s, timeout: 30s, failure_threshold: 5, initial_delay: 20s}}\n"),
        ("    healthcheck: {test: [CMD-SHELL, 'test -f /ok'], timeout: 500ms}\n",
         "restart: never\nprobes: {liveness: {exec: [/bin/sh, -c, 'test -f /ok'], period: 30s, timeout: 500ms, failure_threshold: 3}}\n"),
        ("    healthcheck: {test: [NONE]}\n", "restart: never\n"),
        ("    healthcheck: {disable: true}\n", "restart: never\n"),
        ("    read_only: true\n    pull_policy: always\n    x-notes: anything\n", "restart: never\nread_only: true\nimage_pull: always\n"),
    ];
    for (service, fields) in cases {
        check(&compose(service), &want(fields));
    }
    // Top-level keys gantry reads past, and YAML merge keys.
    check(
        &format!(
            "version: '3.8'\nname: plant\nx-common: &common\n  image: {IMAGE}\n  restart: always\nnetworks: {{}}\nvolumes:\nservices:\n  a:\n    <<: *common\n  b:\n    <<: *common\n    command: [sleep, '1']\n"
        ),
        &format!("name: a\nimage: {IMAGE}\n---\nname: b\nimage: {IMAGE}\nargs: [sleep, '1']\n"),
    );
}

#[test]
fn compose_refusals_name_the_service_and_field() {
    let cases: &[(&str, &[&str])] = &[
        ("    depends_on: [db]\n", &["service 'web': field `services.web.depends_on`: `depends_on` is not supported by gantry"]),
        ("    networks: [front]\n", &["field `services.web.networks`", "host network"]),
        ("    network_mode: bridge\n", &["field `services.web.network_mode`", "host network"]),
        ("    privileged: true\n", &["`services.web.privileged`", "not supported"]),
        ("    user: '1000'\n", &["`services.web.user`"]),
        ("    build: .\n", &["`services.web.build`", "does not build"]),
        ("    ports: ['8080:80']\n", &["`services.web.ports[0]`", "cannot remap"]),
        ("    ports: ['127.0.0.1:80:80']\n", &["`services.web.ports[0]`", "host address"]),
        ("    ports: ['8000-8010']\n", &["ranges"]),
        ("    ports: ['80/sctp']\n", &["sctp"]),
        ("    ports: [{target: 80, published: 81}]\n", &["`services.web.ports[0].published`", "cannot remap"]),
        ("    ports: [{target: 80, host_ip: 127.0.0.1}]\n", &["`services.web.ports[0].host_ip`"]),
        ("    volumes: ['data:/data']\n", &["`services.web.volumes[0]`", "named volume"]),
        ("    volumes: ['./conf:/conf']\n", &["relative"]),
        ("    volumes: [/cache]\n", &["anonymous volume"]),
        ("    volumes: ['/a:/b:z']\n", &["mount option 'z'"]),
        ("    volumes: [{type: tmpfs, target: /tmp}]\n", &["`services.web.volumes[0].type`", "tmpfs"]),
        ("    volumes: [{type: bind, source: /a, target: /b, bind: {propagation: shared}}]\n", &["`services.web.volumes[0].bind`"]),
        ("    devices: ['/dev/ttyUSB0:/dev/ttyS0']\n", &["`services.web.devices[0]`", "cannot show"]),
        ("    devices: ['/dev/ttyUSB0:/dev/ttyUSB0:r']\n", &["permissions"]),
        ("    devices: [ttyUSB0]\n", &["under /dev/"]),
        ("    environment: [HOME]\n", &["`services.web.environment[0]`", "no value"]),
        ("    environment: {HOME: }\n", &["`services.web.environment.HOME`", "no value"]),
        ("    environment: {TAG: '${TAG:-1}'}\n", &["`services.web.environment.TAG`", "interpolation"]),
        ("    env_file: .env\n", &["`services.web.env_file`"]),
        ("    command: echo 'open\n", &["`services.web.command`", "not closed"]),
        ("    entrypoint: []\n", &["`services.web.entrypoint`", "empty"]),
        ("    restart: on-failure:3\n", &["retry count"]),
        ("    restart: sometimes\n", &["`services.web.restart`"]),
        ("    restart: 'no'\n    deploy: {restart_policy: {condition: any}}\n", &["`services.web.deploy.restart_policy`", "disagrees"]),
        ("    deploy: {restart_policy: {condition: any, max_attempts: 3}}\n", &["`services.web.deploy.restart_policy.max_attempts`"]),
        ("    deploy: {mode: global}\n", &["`services.web.deploy.mode`", "max_replicas_per_node"]),
        ("    deploy: {resources: {limits: {cpus: '0.5'}, reservations: {cpus: '0.25'}}}\n", &["`services.web.deploy.resources.reservations.cpus`", "one figure per resource"]),
        ("    deploy: {resources: {limits: {cpus: 500m}}}\n", &["`services.web.deploy.resources.limits.cpus`"]),
        ("    deploy: {resources: {limits: {memory: 5x}}}\n", &["`services.web.deploy.resources.limits.memory`", "byte value"]),
        ("    deploy: {resources: {limits: {pids: 10}}}\n", &["`services.web.deploy.resources.limits.pids`"]),
        ("    deploy: {placement: {constraints: ['node.role == manager']}}\n", &["`services.web.deploy.placement.constraints[0]`", "node.labels.KEY == VALUE"]),
        ("    deploy: {placement: {constraints: ['node.labels.a != b']}}\n", &["constraints[0]"]),
        ("    deploy: {placement: {max_replicas_per_node: 2}}\n", &["max_replicas_per_node"]),
        ("    labels: {gantry.node/zone: a}\n    deploy: {placement: {constraints: ['node.labels.zone==b']}}\n", &["zone=a"]),
        ("    healthcheck: {interval: 5s}\n", &["`services.web.healthcheck`", "test"]),
        ("    healthcheck: {test: [CMD], interval: 5s}\n", &["`services.web.healthcheck.test`"]),
        ("    healthcheck: {test: 'true', interval: 0s}\n", &["`services.web.healthcheck.interval`"]),
        ("    healthcheck: {test: 'true', interval: 5x}\n", &["`services.web.healthcheck.interval`"]),
        ("    healthcheck: {test: 'true', start_interval: 1s}\n", &["`services.web.healthcheck.start_interval`"]),
        ("    pull_policy: build\n", &["`services.web.pull_policy`"]),
    ];
    for (service, fragments) in cases {
        check_refused(&compose(service), fragments);
    }
    let whole: &[(&str, &[&str])] = &[
        (
            "services:\n  My_App:\n    image: x\n",
            &["service 'My_App': field `services.My_App`", "DNS label"],
        ),
        (
            "services:\n  web:\n    restart: always\n",
            &["field `services.web`", "`image` is missing"],
        ),
        ("services: {}\n", &["no service"]),
        (
            "services:\n  web:\n    image: x\nvolumes: {data: {}}\n",
            &["the Compose file: field `volumes`"],
        ),
        (
            "services:\n  web:\n    image: x\nsecrets: {key: {file: ./k}}\n",
            &["field `secrets`"],
        ),
        (
            "services:\n  web:\n    image: x\ninclude: [other.yaml]\n",
            &["field `include`", "not supported"],
        ),
        (
            "services:\n  web:\n    image: x\n---\nname: other\nimage: x\n",
            &["only document"],
        ),
        (
            "services:\n  web:\n    image: '${IMAGE}'\n",
            &["`services.web.image`", "interpolation"],
        ),
    ];
    for (input, fragments) in whole {
        check_refused(input, fragments);
    }
}

#[test]
fn kubernetes_documents_map_onto_workloads() {
    let want = |fields: &str| format!("name: web\nimage: {IMAGE}\nreplicas: 2\n{fields}");
    let cases: &[(&str, &str, &str)] = &[
        ("", "", ""),
        ("          command: [sh, -c]\n          args: ['echo $HOME']\n", "", "command: [sh, -c]\nargs: ['echo $HOME']\n"),
        ("          env: [{name: A, value: '1'}, {name: B}, {name: C, value: 'a$$(B)$$$x'}]\n", "", "env: {A: '1', B: '', C: 'a$(B)$$x'}\n"),
        ("          imagePullPolicy: Never\n", "", "image_pull: never\n"),
        ("          resources: {limits: {cpu: 250m, memory: 64Mi}}\n", "", "resources: {cpu: 250m, memory: 64Mi}\n"),
        ("          resources: {requests: {cpu: '0.5', memory: 1G}}\n", "", "resources: {cpu: 500m, memory: 1G}\n"),
        ("          resources: {requests: {cpu: 1}, limits: {cpu: 1000m}}\n", "", "resources: {cpu: 1}\n"),
        ("          ports: [{containerPort: 80, hostPort: 80, name: http}, {containerPort: 53, protocol: UDP}]\n", "",
         "ports: [{port: 80, name: http}, {port: 53, protocol: udp}]\n"),
        ("          volumeMounts: [{name: data, mountPath: /data, readOnly: true}]\n",
         "      volumes: [{name: data, hostPath: {path: /var/lib/data, type: Directory}}]\n",
         "mounts: [{source: /var/lib/data, target: /data, read_only: true}]\n"),
        ("          livenessProbe: {httpGet: {path: /healthz, port: 8080}, initialDelaySeconds: 5, periodSeconds: 3, timeoutSeconds: 2, failureThreshold: 4}\n          readinessProbe: {tcpSocket: {port: '1883'}, successThreshold: 2}\n          startupProbe: {exec: {command: [cat, /ready]}}\n", "",
         "probes:\n  liveness: {http: {port: 8080, path: /healthz}, initial_delay: 5s, period: 3s, timeout: 2s, failure_threshold: 4}\n  readiness: {tcp: {port: 1883}, success_threshold: 2}\n  startup: {exec: [cat, /ready]}\n"),
        ("          securityContext: {readOnlyRootFilesystem: true}\n", "      hostNetwork: true\n      nodeSelector: {zigbee: 'true'}\n      restartPolicy: Always\n",
         "read_only: true\nnode_selector: {zigbee: 'true'}\n"),
    ];
    for (container, pod, fields) in cases {
        check(&deployment(container, pod), &want(fields));
    }
    // The priority annotation, the rollout settings, defaults of a Pod, and
    // Kubernetes' pull default for an untagged image.
    check(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: plant, annotations: {gantry.dev/priority: '-5', other: x}}\nspec:\n  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 2, maxSurge: 1}}\n  progressDeadlineSeconds: 120\n  template:\n    spec:\n      containers: [{name: web, image: registry.local/sensor}]\nstatus: {replicas: 1}\n",
        "name: web\nimage: registry.local/sensor\nimage_pull: always\npriority: -5\nmax_unavailable: 2\nprogress_deadline: 2m\n",
    );
    check(
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: once}}\nspec:\n  restartPolicy: Never\n  containers: [{{name: c, image: '{IMAGE}'}}]\n"),
        &format!("name: once\nimage: {IMAGE}\nrestart: never\n"),
    );
    // Gantry and Kubernetes documents may share one file.
    check(
        &format!("name: plain\nimage: {IMAGE}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod}}\nspec: {{containers: [{{name: c, image: '{IMAGE}'}}]}}\n"),
        &format!("name: plain\nimage: {IMAGE}\n---\nname: pod\nimage: {IMAGE}\n"),
    );
}

#[test]
fn kubernetes_refusals_name_the_document_and_field() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("        - name: sidecar\n          image: x\n", "", &["field `spec.template.spec.containers[1]`", "one container per workload"]),
        ("", "      initContainers: [{name: i, image: x}]\n", &["spec.template.spec.initContainers", "one container"]),
        ("          volumeMounts: [{name: data, mountPath: /data}]\n", "      volumes: [{name: data, emptyDir: {}}]\n",
         &["field `spec.template.spec.volumes[0].emptyDir`", "hostPath"]),
        ("          volumeMounts: [{name: data, mountPath: /data}, {name: nope, mountPath: /x}]\n", "      volumes: [{name: data, hostPath: {path: /d}}]\n",
         &["field `spec.template.spec.containers[0].volumeMounts[1].name`", "nope"]),
        ("          volumeMounts: [{name: data, mountPath: /data, subPath: x}]\n", "      volumes: [{name: data, hostPath: {path: /d}}]\n",
         &["volumeMounts[0].subPath"]),
        ("          env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}}}]\n", "", &["containers[0].env[0].valueFrom", "write the value"]),
        ("          envFrom: [{configMapRef: {name: c}}]\n", "", &["containers[0].envFrom", "not supported"]),
        ("          args: ['$(HOME)']\n", "", &["containers[0].args[0]", "$(VAR)"]),
        ("          resources: {limits: {cpu: 1}, requests: {cpu: 500m}}\n", "", &["containers[0].resources.requests.cpu", "one figure"]),
        ("          resources: {limits: {nvidia.com/gpu: 1}}\n", "", &["resources.limits.nvidia.com/gpu", "cpu and memory only"]),
        ("          resources: {limits: {memory: '129e6'}}\n", "", &["resources.limits.memory"]),
        ("          ports: [{containerPort: 80, hostPort: 8080}]\n", "", &["containers[0].ports[0].hostPort", "cannot remap"]),
        ("          ports: [{containerPort: 80, protocol: SCTP}]\n", "", &["ports[0].protocol"]),
        ("          livenessProbe: {httpGet: {port: http}}\n", "", &["livenessProbe.httpGet.port", "named port"]),
        ("          livenessProbe: {grpc: {port: 80}}\n", "", &["livenessProbe.grpc"]),
        ("          livenessProbe: {periodSeconds: 3}\n", "", &["containers[0].livenessProbe`", "one of exec"]),
        ("          livenessProbe: {tcpSocket: {port: 80}, periodSeconds: 0}\n", "", &["livenessProbe.periodSeconds"]),
        ("          livenessProbe: {httpGet: {port: 80, scheme: HTTPS}}\n", "", &["httpGet.scheme"]),
        ("          livenessProbe: {tcpSocket: {port: 80}, successThreshold: 2}\n", "", &["containers[0].livenessProbe.successThreshold", "must be 1"]),
        ("          securityContext: {privileged: true}\n", "", &["securityContext.privileged"]),
        ("          imagePullPolicy: Sometimes\n", "", &["imagePullPolicy"]),
        ("", "      priorityClassName: high\n", &["priorityClassName", "gantry.dev/priority annotation with a number"]),
        ("", "      hostNetwork: false\n", &["hostNetwork", "host network"]),
        ("", "      restartPolicy: Never\n", &["restartPolicy", "Always"]),
        ("", "      serviceAccountName: x\n", &["spec.template.spec.serviceAccountName`: `serviceAccountName` is not supported by gantry"]),
        ("", "      tolerations: []\n", &["tolerations"]),
    ];
    for (container, pod, fragments) in cases {
        let error = refused(&deployment(container, pod));
        assert!(
            error.starts_with("document 1 (Deployment 'web'): field `"),
            "{error}"
        );
        for fragment in *fragments {
            assert!(
                error.contains(fragment),
                "`{fragment}` missing from: {error}"
            );
        }
    }
    let whole: &[(&str, &[&str])] = &[
        ("name: a\nimage: x\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
         &["document 2: kind Service is not supported (gantry converts Deployment and Pod)"]),
        ("apiVersion: v1\nmetadata: {name: web}\n", &["document 1: field `kind`: missing"]),
        ("apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: web}\nspec: {}\n", &["document 1 (Deployment 'web'): field `apiVersion`", "apps/v1"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {labels: {a: b}}\nspec: {}\n", &["document 1 (Deployment): field `metadata`", "name"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: Web}\nspec: {}\n", &["field `metadata.name`", "DNS label"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, annotations: {gantry.dev/priority: high}}\nspec: {}\n", &["field `metadata.annotations.gantry.dev/priority`"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: 2}\n", &["field `spec`", "template"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {paused: true, template: {spec: {containers: [{image: x}]}}}\n", &["field `spec.paused`"]),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {strategy: {rollingUpdate: {maxUnavailable: 25%}}, template: {spec: {containers: [{image: x}]}}}\n", &["maxUnavailable", "percentage"]),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a}]}\n", &["document 1 (Pod 'web'): field `spec.containers[0]`", "`image` is missing"]),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{image: x}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{image: x}]}\n",
         &["document 2 (Pod 'web'): field `metadata.name`", "defined twice"]),
    ];
    for (input, fragments) in whole {
        check_refused(input, fragments);
    }
}

#[test]
fn gantry_manifests_read_as_before() {
    for text in [
        include_str!("../../examples/workloads/sensors.yaml"),
        include_str!("../../examples/workloads/health.yaml"),
        "name: web\nimage: x\n",
    ] {
        assert_eq!(parse(text).unwrap(), gantry(text));
        let printed = to_yaml(&gantry(text)).unwrap();
        assert_eq!(parse(&printed).unwrap(), gantry(text), "{printed}");
    }
    assert_eq!(refused(""), "the manifest holds no workload");
    assert!(refused("name: web\nimage: x\ncolour: blue\n").contains("unknown field `colour`"));
    // Memory that no binary unit divides prints exactly.
    let odd = gantry("name: web\nimage: x\nresources: {memory: 1000001}\n");
    assert!(to_yaml(&odd).unwrap().contains("memory: '1000001'"));
    let mega = gantry("name: web\nimage: x\nresources: {memory: 5M}\n");
    assert!(to_yaml(&mega).unwrap().contains("memory: 5M"));
}

/// Every value of `value`, with a setter path, replaced in turn.
fn paths(value: &Value, path: Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(path.clone());
    match value {
        Value::Mapping(map) => {
            for (key, child) in map {
                let mut next = path.clone();
                next.push(PathStep::Key(key.clone()));
                paths(child, next, out);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter().enumerate() {
                let mut next = path.clone();
                next.push(PathStep::Index(i));
                paths(child, next, out);
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum PathStep {
    Key(Value),
    Index(usize),
}

fn replaced(value: &Value, path: &[PathStep], with: &Value) -> Value {
    let mut copy = value.clone();
    let mut at = &mut copy;
    for step in path {
        let next = match (step, at) {
            (PathStep::Key(key), Value::Mapping(map)) => map.get_mut(key),
            (PathStep::Index(i), Value::Sequence(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return copy,
        }
    }
    *at = with.clone();
    copy
}

#[test]
fn wrong_types_anywhere_are_refused_without_a_panic() {
    let replacements: Vec<Value> = [
        "~",
        "0",
        "-1",
        "1.5",
        "18446744073709551615",
        "-9223372036854775808",
        "true",
        "''",
        "x",
        "'-'",
        "[]",
        "[1, [2]]",
        "{}",
        "{a: {b: c}}",
        "'$$'",
        "'/dev/x:/dev/x:/dev/x:a'",
        "':::'",
    ]
    .iter()
    .map(|t| serde_yaml_ng::from_str(t).unwrap())
    .collect();
    let inputs = [
        include_str!("../../examples/workloads/compose.yaml").to_string(),
        include_str!("../../examples/workloads/deployment.yaml").to_string(),
        compose(
            "    entrypoint: a b\n    environment: [A=1]\n    labels: [a=b]\n    ports: ['80', {target: 81}]\n    devices: [/dev/a]\n    volumes: [{type: bind, source: /a, target: /b}]\n    healthcheck: {test: [CMD-SHELL, x], start_period: 1s}\n    deploy: {restart_policy: {condition: any}, resources: {reservations: {cpus: 1, memory: 1g}}, placement: {constraints: ['node.labels.a == b']}}\n",
        ),
        deployment(
            "          ports: [{containerPort: 80}]\n          env: [{name: A, value: b}]\n          readinessProbe: {httpGet: {port: 80, path: /}, periodSeconds: 1}\n          resources: {requests: {cpu: 1, memory: 1Mi}}\n          volumeMounts: [{name: d, mountPath: /d}]\n",
            "      volumes: [{name: d, hostPath: {path: /d}}]\n      nodeSelector: {a: b}\n",
        ),
    ];
    let mut tried = 0;
    for input in &inputs {
        for (_, document) in crate::state::spec::yaml_documents(input).unwrap() {
            let mut all = Vec::new();
            paths(&document, Vec::new(), &mut all);
            for path in &all {
                for with in &replacements {
                    let broken =
                        serde_yaml_ng::to_string(&replaced(&document, path, with)).unwrap();
                    // Accepted or refused, never a panic; a refusal says why.
                    if let Err(e) = parse(&broken) {
                        assert!(!e.0.is_empty());
                    }
                    tried += 1;
                }
            }
        }
    }
    assert!(tried > 1000, "{tried}");
    // Odd whole documents.
    for text in [
        "[]",
        "1",
        "services: 1",
        "services: [a]",
        "kind: 1",
        "kind: Pod",
        "apiVersion: v1\nkind: Pod\nmetadata: 1\n",
        "? [a]\n: b\n",
        "services: {web: ~}",
    ] {
        let _ = parse(text);
    }
}

#[test]
fn the_readme_examples_convert() {
    let readme = include_str!("../../README.md");
    let mut found = 0;
    for block in readme.split("```yaml\n").skip(1) {
        let block = block.split("```").next().unwrap_or("");
        if block.starts_with("# docker-compose.yml") || block.starts_with("# deployment.yaml") {
            let specs = parse(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
            assert_eq!(specs[0].name, "sensor");
            assert_eq!(specs[0].replicas, 2);
            assert_eq!(specs[0].cpu_millis(), 250);
            assert_eq!(specs[0].memory_bytes(), 64 << 20);
            assert_eq!(
                specs[0].node_selector.get("zigbee").map(String::as_str),
                Some("true")
            );
            found += 1;
        }
    }
    assert_eq!(found, 2);
}
