"""Static consistency check of terraform/ (providers cannot be downloaded here, so
`terraform validate` cannot run): every .tf file parses (python-hcl2), the expected
resources, variables and outputs exist, and what one component says about another agrees —
images, ports, secrets, service names and the settings meterflow reads.

Usage: check_terraform.py [TERRAFORM_DIR]      exit 1 listing every problem
       check_terraform.py --self-test          each known breakage must be caught
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import hcl2
from hcl2.utils import SerializationOptions
from lark.exceptions import LarkError

REPO = Path(__file__).resolve().parent.parent

EXPECTED_RESOURCES = {
    ("kubernetes_namespace_v1", "meterflow"),
    ("kubernetes_secret_v1", "minio"),
    ("kubernetes_persistent_volume_claim_v1", "minio"),
    ("kubernetes_deployment_v1", "minio"),
    ("kubernetes_service_v1", "minio"),
    ("kubernetes_job_v1", "bucket"),
    ("kubernetes_service_v1", "kafka"),
    ("kubernetes_stateful_set_v1", "kafka"),
    ("kubernetes_job_v1", "topic"),
    ("kubernetes_config_map_v1", "meterflow"),
    ("kubernetes_deployment_v1", "meterflow"),
    ("kubernetes_service_v1", "meterflow_metrics"),
    ("kubernetes_config_map_v1", "spark"),
    ("kubernetes_deployment_v1", "spark"),
    ("kubernetes_service_v1", "spark"),
    ("kubernetes_config_map_v1", "spark_job"),
    ("kubernetes_deployment_v1", "spark_streaming"),
    ("kubernetes_secret_v1", "trino_catalog"),
    ("kubernetes_deployment_v1", "trino"),
    ("kubernetes_service_v1", "trino"),
}
EXPECTED_OUTPUTS = {"namespace", "kafka_brokers", "s3_endpoint", "output_location", "reach"}
SENSITIVE_VARIABLES = {"minio_root_user", "minio_root_password"}
# Read by object_store's S3 builder (and Spark's S3A credentials provider), not by clap.
AWS_SETTINGS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"}
# The routes src/run/telemetry.rs serves.
METERFLOW_PATHS = {"/metrics", "/healthz", "/readyz"}
WORKLOADS = ("kubernetes_deployment_v1", "kubernetes_stateful_set_v1", "kubernetes_job_v1")
OPTIONS = SerializationOptions(
    with_comments=False, explicit_blocks=False, preserve_heredocs=False, strip_string_quotes=True
)


class Bundle:
    """The parsed configuration with a small evaluator for the expressions it uses:
    references to variables (their defaults), locals, resources and each.key/each.value,
    tostring(), and `each.key == "x" ? a : b`."""

    def __init__(self, directory: Path):
        self.resources: dict[tuple[str, str], dict] = {}
        self.variables: dict[str, dict] = {}
        self.locals: dict[str, object] = {}
        self.outputs: dict[str, dict] = {}
        self.used_variables: set[str] = set()
        for path in sorted(directory.glob("*.tf")):
            try:
                parsed = hcl2.load(path.open(), serialization_options=OPTIONS)
            except LarkError as error:
                raise Problem(f"{path.name} does not parse: {error}") from error
            for block in parsed.get("resource", []):
                for kind, named in block.items():
                    for name, body in named.items():
                        self.resources[(kind, name)] = body
            for block in parsed.get("variable", []):
                self.variables.update(block)
            for block in parsed.get("locals", []):
                self.locals.update(block)
            for block in parsed.get("output", []):
                self.outputs.update(block)
        self.text = "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))

    def value(self, item, each=None):
        """Evaluates an attribute value; strings with ${...} are interpolated."""
        if isinstance(item, dict):
            return {k: self.value(v, each) for k, v in item.items()}
        if isinstance(item, list):
            return [self.value(v, each) for v in item]
        if not isinstance(item, str):
            return item
        whole = re.fullmatch(r"\$\{(.*)\}", item, re.DOTALL)
        if whole and "${" not in whole.group(1):
            return self.expression(whole.group(1).strip(), each)
        return re.sub(r"\$\{([^}]*)\}", lambda m: str(self.expression(m.group(1), each)), item)

    def expression(self, text: str, each):
        text = text.strip()
        ternary = re.fullmatch(r'(.+?)\s*==\s*"([^"]*)"\s*\?\s*(.+?)\s*:\s*(.+)', text)
        if ternary:
            left, literal, yes, no = ternary.groups()
            chosen = yes if self.expression(left, each) == literal else no
            return self.expression(chosen, each)
        if text.isdigit():
            return int(text)
        if text.startswith('"') and text.endswith('"'):
            return text[1:-1]
        call = re.fullmatch(r"tostring\((.*)\)", text)
        if call:
            return str(self.expression(call.group(1), each))
        if not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*|\[[^\]]+\])*", text):
            raise Problem(f"expression the check does not understand: {text}")
        path = re.findall(r"[A-Za-z_][\w-]*|\[[^\]]+\]", text)
        head, rest = path[0], path[1:]
        if head == "each":
            if each is None:
                raise Problem(f"each.* outside a for_each: {text}")
            current = each[0] if rest[0] == "key" else each[1]
            return self.walk(current, rest[1:], each)
        if head == "var":
            name = rest[0]
            self.used_variables.add(name)
            if name not in self.variables:
                raise Problem(f"var.{name} is used but not declared in variables.tf")
            declared = self.variables[name]
            current = declared.get("default", f"<var.{name}>")
            return self.walk(self.value(current), rest[1:], each)
        if head == "local":
            name = rest[0]
            if name not in self.locals:
                raise Problem(f"local.{name} is used but not defined")
            return self.walk(self.value(self.locals[name], each), rest[1:], each)
        if len(rest) >= 1 and (head, rest[0]) in self.resources:
            return self.walk(self.resources[(head, rest[0])], rest[1:], each, evaluate=True)
        if "." in text and head.startswith("kubernetes_"):
            raise Problem(f"reference to an undeclared resource: {text}")
        raise Problem(f"expression the check does not understand: {text}")

    def walk(self, current, steps, each, evaluate=False):
        for step in steps:
            if step.startswith("["):
                index = step[1:-1]
                key = int(index) if index.isdigit() else self.expression(index, each)
                current = current[key]
            else:
                current = current[step]
            if evaluate:
                current = self.value(current, each)
        return current


class Problem(Exception):
    pass


def one(blocks):
    """Blocks come as lists; the ones used here occur once."""
    return blocks[0] if isinstance(blocks, list) else blocks


def template_of(body: dict) -> dict:
    """A workload's pod template."""
    return one(one(body["spec"])["template"])


def first_container(bundle: Bundle, kind: str, name: str) -> dict:
    """The (only) container of a workload's pod template."""
    return one(one(template_of(bundle.resources[(kind, name)])["spec"])["container"])


def instances(bundle: Bundle, kind: str, name: str):
    """(each, body) for a resource, once per for_each key."""
    body = bundle.resources[(kind, name)]
    if "for_each" in body:
        for key, value in bundle.value(body["for_each"]).items():
            yield (key, value), body
    else:
        yield None, body


def pod_specs(bundle: Bundle):
    """(label, labels, pod spec, each) of every workload's pod template."""
    for kind, name in bundle.resources:
        if kind not in WORKLOADS:
            continue
        for each, body in instances(bundle, kind, name):
            template = template_of(body)
            labels = bundle.value(one(template.get("metadata", [{}])).get("labels", {}), each)
            yield (
                f"{kind}.{name}" + (f"[{each[0]}]" if each else ""),
                labels,
                one(template["spec"]),
                each,
            )


def check(directory: Path) -> list[str]:
    problems: list[str] = []

    def expect(condition: bool, message: str):
        if not condition:
            problems.append(message)

    try:
        bundle = Bundle(directory)
    except Problem as error:
        return [str(error)]

    for kind, name in sorted(EXPECTED_RESOURCES - set(bundle.resources)):
        problems.append(f"missing resource {kind}.{name}")
    for name in sorted(EXPECTED_OUTPUTS - set(bundle.outputs)):
        problems.append(f"missing output {name}")
    for name, declared in bundle.variables.items():
        expect("description" in declared, f"variable {name} has no description")
    for name in SENSITIVE_VARIABLES:
        expect(bundle.variables.get(name, {}).get("sensitive") is True, f"{name} not sensitive")
    expect(
        "default" not in bundle.variables.get("minio_root_password", {}),
        "minio_root_password must not have a default (a committed password)",
    )
    if problems:
        return problems

    def guarded(label, action):
        try:
            action()
        except Problem as error:
            problems.append(f"{label}: {error}")
        except (KeyError, IndexError, TypeError) as error:
            problems.append(f"{label}: missing {error}")

    secrets = {
        name: set(bundle.value(one(body["data"])).keys()) if "data" in body else set()
        for (kind, name), body in bundle.resources.items()
        if kind == "kubernetes_secret_v1"
    }
    secret_names = {
        bundle.value(one(bundle.resources[("kubernetes_secret_v1", n)]["metadata"])["name"]): n
        for n in secrets
    }
    config_maps = {
        bundle.value(one(body["metadata"])["name"])
        for (kind, _), body in bundle.resources.items()
        if kind == "kubernetes_config_map_v1"
    }
    pods = []

    def collect_pods():
        for label, labels, spec, each in pod_specs(bundle):
            ports = set()
            for container in spec["container"]:
                image = container["image"]
                expect(
                    re.fullmatch(r"\$\{var\.[a-z_]+_image\}", image) is not None,
                    f"{label}: image {image} should come from an *_image variable",
                )
                for port in container.get("port", []):
                    ports.add(bundle.value(port["container_port"], each))
                for dynamic in container.get("dynamic", []):  # dynamic "port" { for_each }
                    block = dynamic.get("port")
                    if block and one(block["content"])["container_port"] == "${port.value}":
                        ports.update(bundle.value(block["for_each"], each))
                check_container(label, container, each, ports)
            pods.append((label, labels, ports, spec, each))

    def check_container(label, container, each, ports):
        for env in container.get("env", []):
            for source in env.get("value_from", []):
                for ref in source.get("secret_key_ref", []):
                    name = bundle.value(ref["name"], each)
                    key = bundle.value(ref["key"], each)
                    expect(name in secret_names, f"{label}: secret {name} is not declared")
                    expect(
                        key in secrets.get(secret_names.get(name), set()),
                        f"{label}: secret {name} has no key {key}",
                    )
        for source in container.get("env_from", []):
            for ref in source.get("secret_ref", []):
                name = bundle.value(ref["name"], each)
                expect(name in secret_names, f"{label}: secret {name} is not declared")
            for ref in source.get("config_map_ref", []):
                name = bundle.value(ref["name"], each)
                expect(name in config_maps, f"{label}: config map {name} is not declared")
        for probe_kind in ("liveness_probe", "readiness_probe"):
            for probe in container.get(probe_kind, []):
                for method in ("http_get", "tcp_socket"):
                    for target in probe.get(method, []):
                        port = bundle.value(target["port"], each)
                        expect(port in ports, f"{label}: {probe_kind} on port {port} not exposed")

    guarded("workloads", collect_pods)

    services = {}

    def check_services():
        for (kind, name), body in bundle.resources.items():
            if kind != "kubernetes_service_v1":
                continue
            service_name = bundle.value(one(body["metadata"])["name"])
            spec = one(body["spec"])
            selector = bundle.value(spec.get("selector", {}))
            selected = [p for p in pods if selector.items() <= (p[1] or {}).items()]
            expect(bool(selected), f"service {service_name} selects no pod")
            service_ports = set()
            for port in spec["port"]:
                number = bundle.value(port["port"])
                target = bundle.value(port.get("target_port", number))
                service_ports.add(number)
                for label, _, ports, _, _ in selected:
                    expect(
                        int(target) in ports,
                        f"service {service_name} port {number} → {target}: {label} has no such port",
                    )
            services[service_name] = service_ports

    guarded("services", check_services)
    namespace = bundle.value("${local.namespace}")

    def reachable(address: str, label: str):
        """host:port or scheme://host:port names a declared Service and one of its ports."""
        match = re.fullmatch(r"(?:\w+://)?([^.:/]+)(\.[^:/]+)?:(\d+)/?", address)
        expect(match is not None, f"{label}: {address} is not host:port")
        if not match:
            return
        host, domain, port = match.groups()
        expect(host in services, f"{label}: {address} names no service (have {sorted(services)})")
        expect(
            domain in (None, f".{namespace}.svc.cluster.local", f".{namespace}"),
            f"{label}: {address} is outside namespace {namespace}",
        )
        expect(
            int(port) in services.get(host, ()), f"{label}: {address}: service has no port {port}"
        )

    def check_settings(config_map: str, reader: str, known: set[str], required: tuple) -> dict:
        """A config map of MF_* settings: each one the reader reads, its brokers and S3
        endpoint name Services, its topic and bucket the ones the Jobs create."""
        config = bundle.value(
            one(bundle.resources[("kubernetes_config_map_v1", config_map)]["data"])
        )
        for key in config:
            expect(
                key in known or key in AWS_SETTINGS,
                f"{config_map} config map: {key} is not a setting {reader} reads",
            )
        for key in ("MF_KAFKA_BROKERS", "MF_TOPICS", "MF_OUTPUT", "MF_S3_ENDPOINT", *required):
            expect(key in config, f"{config_map} config map lacks {key}")
        for broker in config.get("MF_KAFKA_BROKERS", "").split(","):
            reachable(broker, f"{config_map}: MF_KAFKA_BROKERS")
        reachable(config.get("MF_S3_ENDPOINT", ""), f"{config_map}: MF_S3_ENDPOINT")
        expect(
            config.get("MF_TOPICS") == bundle.value("${var.topic}"),
            f"{config_map}: MF_TOPICS is not the topic the Job creates",
        )
        bucket = bundle.value("${var.bucket}")
        expect(
            config.get("MF_OUTPUT", "").startswith(f"s3://{bucket}/"),
            f"{config_map}: MF_OUTPUT is not in bucket {bucket}",
        )
        return config

    def check_spark_job():
        known = set(re.findall(r'(?:env|environ\.get)\("(MF_[A-Z0-9_]+)"', read_spark_job()))
        config = check_settings("spark_job", "the Spark job", known, ("MF_SPARK_CHECKPOINT",))
        expect(
            config.get("MF_SPARK_CHECKPOINT", "").startswith(
                f"s3a://{bundle.value('${var.bucket}')}/"
            ),
            "spark_job: the checkpoint is not in the bucket (through s3a)",
        )
        driver = first_container(bundle, "kubernetes_deployment_v1", "spark_streaming")
        command = bundle.value(driver["command"])
        reachable(
            command[command.index("--master") + 1].removeprefix("spark://"), "spark-submit --master"
        )
        expect(
            any(c.endswith("/meterflow_spark_job.py") for c in command),
            "spark-submit does not run the job the Spark image carries",
        )
        containerfile = (REPO / "spark" / "Containerfile").read_text()
        expect(
            "meterflow_spark_job.py /opt/meterflow/" in containerfile,
            "spark/Containerfile does not put the job where spark-submit looks",
        )

    def check_meterflow():
        known = set(re.findall(r'env = "(MF_[A-Z0-9_]+)"', read_sources()))
        config = check_settings("meterflow", "meterflow", known, ("MF_METRICS_ADDR",))
        topic_job = bundle.value(first_container(bundle, "kubernetes_job_v1", "topic")["command"])
        expect(bundle.value("${var.topic}") in topic_job, "the topic Job does not create var.topic")
        reachable(topic_job[topic_job.index("--bootstrap-server") + 1], "topic Job")
        bucket_job = first_container(bundle, "kubernetes_job_v1", "bucket")
        expect(
            f"local/{bundle.value('${var.bucket}')}" in " ".join(bundle.value(bucket_job["args"])),
            "bucket Job misses the bucket",
        )

        metrics_port = int(config.get("MF_METRICS_ADDR", ":0").rsplit(":", 1)[1])
        template = template_of(bundle.resources[("kubernetes_deployment_v1", "meterflow")])
        annotations = bundle.value(one(template["metadata"])["annotations"])
        expect(
            annotations.get("prometheus.io/port") == str(metrics_port)
            and annotations.get("prometheus.io/path") in METERFLOW_PATHS,
            "meterflow scrape annotations do not match MF_METRICS_ADDR and /metrics",
        )
        container = one(one(template["spec"])["container"])
        for probe_kind in ("liveness_probe", "readiness_probe"):
            probe = one(one(container[probe_kind])["http_get"])
            expect(
                bundle.value(probe["path"]) in METERFLOW_PATHS
                and bundle.value(probe["port"]) == metrics_port,
                f"meterflow {probe_kind} is not on a served path of the metrics port",
            )
        security = one(container["security_context"])
        expect(security.get("read_only_root_filesystem") is True, "meterflow root fs not read-only")
        expect(
            one(one(template["spec"])["security_context"]).get("run_as_non_root") is True,
            "meterflow pod not runAsNonRoot",
        )
        image = bundle.value(container["image"])
        spark_image = bundle.value("${var.spark_image}")
        version = re.search(
            r'^version = "([^"]+)"', (REPO / "Cargo.toml").read_text(), re.MULTILINE
        )
        expect(
            image == f"meterflow:{version.group(1)}",
            f"meterflow_image default {image} is not what nix/image.nix tags (meterflow:{version.group(1)})",
        )
        expect(
            spark_image == f"meterflow-spark:{version.group(1)}",
            f"spark_image default {spark_image} is not the tag `up` builds (meterflow-spark:{version.group(1)})",
        )
        kafka = first_container(bundle, "kubernetes_stateful_set_v1", "kafka")
        advertised = {e["name"]: bundle.value(e.get("value", "")) for e in kafka["env"]}
        expect(
            advertised.get("KAFKA_ADVERTISED_LISTENERS")
            == f"PLAINTEXT://{config.get('MF_KAFKA_BROKERS')}",
            "Kafka advertises another address than meterflow connects to",
        )

    def check_spark_and_trino():
        defaults = bundle.value(
            one(bundle.resources[("kubernetes_config_map_v1", "spark")]["data"])
        )
        conf = dict(
            line.split(None, 1)
            for line in defaults["spark-defaults.conf"].splitlines()
            if line.strip()
        )
        reachable(conf["spark.master"].removeprefix("spark://"), "spark.master")
        reachable(conf["spark.hadoop.fs.s3a.endpoint"], "spark s3a endpoint")
        catalog = bundle.value(
            one(bundle.resources[("kubernetes_secret_v1", "trino_catalog")]["data"])
        )
        properties = dict(
            line.split("=", 1) for line in catalog["meters.properties"].splitlines() if "=" in line
        )
        reachable(properties["s3.endpoint"], "trino s3.endpoint")
        expect(
            properties["hive.metastore.catalog.dir"].startswith(
                f"s3://{bundle.value('${var.bucket}')}/"
            ),
            "Trino's metastore is not in the bucket",
        )

    def check_images():
        for name, declared in bundle.variables.items():
            if name.endswith("_image"):
                image = bundle.value(declared.get("default", ""))
                expect(
                    re.fullmatch(r"[\w./-]+:[\w.-]+", image) is not None
                    and not image.endswith(":latest"),
                    f"variable {name}: {image} is not pinned to a release tag",
                )

    def check_outputs():
        for output in bundle.outputs.values():
            bundle.value(output["value"])
        for command in bundle.value(bundle.outputs["reach"]["value"]).values():
            match = re.fullmatch(r"kubectl -n (\S+) port-forward svc/(\S+) \d+:(\d+)", command)
            expect(match is not None, f"reach: {command} is not a port-forward")
            if match:
                expect(match.group(1) == namespace, f"reach: {command} uses another namespace")
                expect(
                    int(match.group(3)) in services.get(match.group(2), ()),
                    f"reach: {command} names no service port",
                )

    for label, action in (
        ("meterflow", check_meterflow),
        ("spark job", check_spark_job),
        ("spark/trino", check_spark_and_trino),
        ("images", check_images),
        ("outputs", check_outputs),
    ):
        guarded(label, action)

    for line in bundle.text.splitlines():
        skip = re.search(r"checkov:skip=(\w+)(?::\s*(.*))?", line)
        if skip and len((skip.group(2) or "").strip()) < 20:
            problems.append(f"checkov skip {skip.group(1)} without a written reason")
    pinned = re.search(r'(?<!_)version\s*=\s*"([^"]+)"', bundle.text)
    lock = (
        (directory / ".terraform.lock.hcl").read_text()
        if (directory / ".terraform.lock.hcl").exists()
        else ""
    )
    expect(
        pinned is not None and f'constraints = "{pinned.group(1)}"' in lock,
        ".terraform.lock.hcl does not lock the provider version versions.tf requires",
    )
    for name in sorted(
        set(bundle.variables) - bundle.used_variables - {"kube_config_path", "kube_context"}
    ):
        if f"var.{name}" not in bundle.text:
            problems.append(f"variable {name} is declared but never used")
    for reference in sorted(
        set(re.findall(r"\bvar\.([a-z_]+)", bundle.text)) - set(bundle.variables)
    ):
        problems.append(f"var.{reference} is used but not declared")
    return problems


def read_sources() -> str:
    return "\n".join(p.read_text() for p in (REPO / "src").rglob("*.rs"))


def read_spark_job() -> str:
    return "\n".join(p.read_text() for p in (REPO / "spark" / "meterflow_spark").glob("*.py"))


# Each breakage a reviewer could plausibly make, and the check that must catch it.
BREAKAGES = [
    ("meterflow.tf", "MF_KAFKA_BROKERS = local.kafka_brokers", 'MF_KAFKA_BROKERS = "kafka:9092"'),
    ("meterflow.tf", 'key  = "AWS_SECRET_ACCESS_KEY"', 'key  = "AWS_SECRET_KEY"'),
    ("meterflow.tf", 'path = "/readyz"', 'path = "/ready"'),
    ("meterflow.tf", "MF_TOPICS        = var.topic", "MF_TOPIC         = var.topic"),
    (
        "meterflow.tf",
        '"prometheus.io/port"   = tostring(local.metrics_port)',
        '"prometheus.io/port"   = "9090"',
    ),
    # The liveness probe (the first probe port) off the served port.
    ("meterflow.tf", "              port = local.metrics_port", "              port = 9090"),
    ("minio.tf", "target_port = 9000", "target_port = 9002"),
    ("minio.tf", "name      = local.minio_service", 'name      = "minio-s3"'),
    ("variables.tf", 'default     = "apache/kafka:4.1.0"', 'default     = "apache/kafka:latest"'),
    ("variables.tf", 'default     = "meterflow:0.1.0"', 'default     = "meterflow:0.0.9"'),
    (
        "kafka.tf",
        'value = "PLAINTEXT://${local.kafka_brokers}"',
        'value = "PLAINTEXT://kafka:9092"',
    ),
    ("spark.tf", "spark://${local.spark_service}.", "spark://spark-master."),
    ("spark.tf", "MF_TOPICS           = var.topic", 'MF_TOPICS           = "readings"'),
    ("spark.tf", "MF_SPARK_CHECKPOINT", "MF_CHECKPOINT"),
    ("trino.tf", "image = var.trino_image", "image = var.trino_img"),
    ("outputs.tf", 'output "reach"', 'output "reach_commands"'),
    ("variables.tf", "  sensitive   = true\n  validation", "  validation"),
    ("versions.tf", 'version = "3.0.1"', 'version = "3.2.1"'),
    (
        "trino.tf",
        "CKV_K8S_15: IfNotPresent keeps a laptop minikube working offline after the first pull; meterflow's image is loaded locally (pull policy Never)",
        "CKV_K8S_15",
    ),
]


def self_test() -> int:
    source = REPO / "terraform"
    clean = check(source)
    if clean:
        print("self-test: the real bundle must pass first:", *clean, sep="\n  ")
        return 1
    missed = []
    for file, old, new in BREAKAGES:
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "terraform"
            shutil.copytree(source, copy)
            text = (copy / file).read_text()
            if old not in text:
                missed.append(f"{file}: the text to break is gone: {old!r}")
                continue
            (copy / file).write_text(text.replace(old, new, 1))
            if not check(copy):
                missed.append(f"{file}: {old!r} → {new!r} passed unnoticed")
    for line in missed:
        print("self-test:", line)
    print(
        f"check_terraform self-test: {len(BREAKAGES) - len(missed)}/{len(BREAKAGES)} breakages caught"
    )
    return 1 if missed else 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--self-test"]:
        return self_test()
    directory = Path(argv[1]) if len(argv) > 1 else REPO / "terraform"
    problems = check(directory)
    for problem in problems:
        print("check_terraform:", problem)
    if not problems:
        print(
            f"check_terraform: {directory}: resources, variables, outputs, images, ports, "
            "secrets and service names agree"
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
