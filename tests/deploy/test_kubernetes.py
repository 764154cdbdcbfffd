"""deploy/kubernetes: every manifest is valid against the Kubernetes API schemas (offline), the
kustomizations render, and what an operator relies on holds: probes on the health endpoints,
a grace period longer than a drain, a configuration Caudal itself accepts, and no more workers
than partitions.

Schema validation reads the JSON schemas bundled in `kubernetes-validate` (strict: unknown
fields are errors, as with `kubectl apply --validate=strict`) and, for the ServiceMonitor and
ScaledObject custom resources, the CRD schemas in tests/deploy/schemas. Rendering needs
`kubectl` (with its built-in kustomize); without it those tests skip and the per-file checks
still run.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from streams.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
PRODUCTION = KUBERNETES / "overlays" / "production"
KEDA = KUBERNETES / "components" / "keda"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

KUBERNETES_VERSION = "1.32"
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
}
CONFIG_PATH = "/etc/caudal/caudal.yaml"

Manifest = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Schema validation


def _strict(schema: Any) -> Any:
    """A CRD schema with unknown fields rejected: the API server prunes them silently, which
    hides a misspelt field; `kubectl --validate=strict` refuses them, and so do these tests."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


@functools.cache
def _crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[api_version, kind]).read_text())
    return jsonschema.Draft202012Validator(_strict(schema))


# A patch is a fragment of an object: every field it names must exist with the right type, but
# the fields it leaves out (selector, template, ...) come from the base.
_PatchValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, validators={"required": None}
)


@functools.cache
def _kubernetes_patch_validator(api_version: str, kind: str) -> jsonschema.Validator:
    # The same files and resolution as kubernetes_validate.validate(), with `required` ignored.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{KUBERNETES_VERSION}.0-local-strict"
    )
    schema = json.loads((folder / f"{kind.lower()}-{group_version}.json").read_text())
    definitions = json.loads((folder / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return _PatchValidator(schema, registry=registry)


def schema_errors(manifest: Manifest, *, patch: bool = False) -> list[str]:
    """What the API schema of the manifest's kind says is wrong with it (empty: valid)."""
    key = (manifest.get("apiVersion", ""), manifest.get("kind", ""))
    if key in CRD_SCHEMAS:
        validator = _crd_validator(*key)
        if patch:
            validator = _PatchValidator(validator.schema)
        return [_describe(error) for error in validator.iter_errors(manifest)]
    if patch:
        validator = _kubernetes_patch_validator(*key)
        return [_describe(error) for error in validator.iter_errors(manifest)]
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    except kubernetes_validate.ValidationError as exc:
        return [_describe(exc)]
    return []


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    return f"{path}: {error.message}"


# ---------------------------------------------------------------------------------------------
# Reading the kustomizations


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _generator_files(generator: Manifest) -> dict[str, str]:
    """key -> file of a configMapGenerator or secretGenerator (`key=path` or `path`)."""
    files = {}
    for entry in generator.get("files", []):
        key, _, path = entry.rpartition("=")
        files[key or Path(path).name] = path
    return files


def _kustomization_files() -> list[Path]:
    return sorted(KUBERNETES.rglob("kustomization.yaml"))


def _references(kustomization: Path) -> dict[str, list[Path]]:
    """Files and folders a kustomization names, by role."""
    spec = _load(kustomization)
    here = kustomization.parent
    refs: dict[str, list[Path]] = {"resources": [], "components": [], "patches": [], "data": []}
    for entry in spec.get("resources", []):
        refs["resources"].append(here / entry)
    for entry in spec.get("components", []):
        refs["components"].append(here / entry)
    for patch in spec.get("patches", []):
        if "path" in patch:
            refs["patches"].append(here / patch["path"])
    for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
        refs["data"] += [here / path for path in _generator_files(generator).values()]
    return refs


def _all_references() -> dict[str, list[Path]]:
    merged: dict[str, list[Path]] = {"resources": [], "components": [], "patches": [], "data": []}
    for kustomization in _kustomization_files():
        for role, paths in _references(kustomization).items():
            merged[role] += paths
    return merged


def _manifest_files(role: str) -> list[Path]:
    return sorted({p.resolve() for p in _all_references()[role] if p.suffix in (".yaml", ".yml")})


def _object_data(obj: Manifest) -> dict[str, str]:
    """A ConfigMap's or Secret's keys as text (Secret `data` is base64)."""
    data = dict(obj.get("stringData") or {})
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value).decode() if obj["kind"] == "Secret" else value
    return data


def base_from_files() -> list[Manifest]:
    """The base's objects read straight from its files, the generators done by hand (names
    without kustomize's hash suffix): what the checks below need, without kubectl."""
    spec = _load(BASE / "kustomization.yaml")
    manifests = [_load(BASE / entry) for entry in spec["resources"]]
    for kind, section in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for generator in spec.get(section, []):
            files = _generator_files(generator)
            data = {key: (BASE / path).read_text() for key, path in files.items()}
            manifests.append(
                {
                    "apiVersion": "v1",
                    "kind": kind,
                    "metadata": {"name": generator["name"]},
                    ("stringData" if kind == "Secret" else "data"): data,
                }
            )
    return manifests


def kustomize(directory: Path) -> list[Manifest]:
    """`kubectl kustomize DIRECTORY`, parsed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: rendering with kustomize is not checked here")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered(variant: str) -> tuple[Manifest, ...]:
    if variant == "base":
        return tuple(kustomize(BASE))
    if variant == "production":
        return tuple(kustomize(PRODUCTION))
    raise AssertionError(variant)


@pytest.fixture(scope="module")
def production_with_keda(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    """The production overlay with the KEDA component, as an overlay that includes it renders."""
    folder = tmp_path_factory.mktemp("with-keda")
    # kustomize refuses absolute paths to other kustomizations: name them relative to here.
    (folder / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(PRODUCTION, folder)],
                "components": [os.path.relpath(KEDA, folder)],
            }
        )
    )
    return kustomize(folder)


class Objects:
    """One rendering of the deployment, with lookups by kind and name."""

    def __init__(self, manifests: list[Manifest] | tuple[Manifest, ...]) -> None:
        self.manifests = list(manifests)

    def all(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        found = [m for m in self.all(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def workers(self) -> Manifest:
        return self.one("StatefulSet")

    @property
    def ingest(self) -> Manifest:
        return self.one("Deployment")

    def container(self, workload: Manifest) -> Manifest:
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        return dict(container)

    def mounted_file(self, workload: Manifest, path: str) -> str:
        """The content of the file at `path` in the workload's container, from its ConfigMap
        or Secret volume."""
        kind, name, key = mounted_source(workload, path)
        return _object_data(self.one(kind, name))[key]

    def settings(self, workload: Manifest, tmp_path: Path) -> Settings:
        """Caudal's settings as the workload's container loads them (`-c` from its args)."""
        args = self.container(workload)["args"]
        config_path = args[args.index("-c") + 1]
        raw = yaml.safe_load(self.mounted_file(workload, config_path))
        tmp_path.mkdir(parents=True, exist_ok=True)
        gateway = args[0] == "ingest"
        tokens_file = (raw.get("ingest") or {}).get("tokens_file")
        if tokens_file and gateway:
            # The gateway reads the tokens file at start: give it the mounted Secret's content.
            local_tokens = tmp_path / "tokens.yaml"
            local_tokens.write_text(self.mounted_file(workload, tokens_file))
            raw["ingest"]["tokens_file"] = str(local_tokens)
        local_config = tmp_path / "caudal.yaml"
        local_config.write_text(yaml.safe_dump(raw))
        # Workers never read the tokens (`caudal worker` loads without them).
        return load_settings(local_config, environ={}, read_tokens=gateway)


def mounted_source(workload: Manifest, path: str) -> tuple[str, str, str]:
    """(kind, name, key) of the ConfigMap or Secret key that `path` is in the workload's
    container; fails when the path comes from anything else."""
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    for mount in mounts:
        mount_path = mount["mountPath"].rstrip("/")
        if "subPath" in mount:
            if path != mount_path:
                continue
            relative = mount["subPath"]
        elif path.startswith(mount_path + "/"):
            relative = path[len(mount_path) + 1 :]
        else:
            continue
        volume = volumes[mount["name"]]
        sources: list[tuple[str, Manifest]] = []
        if "configMap" in volume:
            sources.append(("ConfigMap", volume["configMap"]))
        if "secret" in volume:
            secret = volume["secret"]
            sources.append(("Secret", {"name": secret["secretName"], **secret}))
        for source in volume.get("projected", {}).get("sources", []):
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if field in source:
                    sources.append((kind, source[field]))
        for kind, source in sources:
            items = source.get("items")
            if items is None:
                return kind, source["name"], relative
            for item in items:
                if item["path"] == relative:
                    return kind, source["name"], item["key"]
        raise AssertionError(f"{path}: volume {mount['name']} has no file {relative}")
    raise AssertionError(f"{path} is not mounted in {workload['metadata']['name']}")


def container_port(container: Manifest, port: int | str) -> int:
    """A probe's or Service's port (a number or the name of a container port) as a number."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port}")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_UNITS.update({"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12})


def quantity_bytes(quantity: str | int) -> float:
    match = _QUANTITY.match(str(quantity))
    assert match, f"not a memory quantity: {quantity!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


VARIANTS = ["base-files", "base", "production"]


@pytest.fixture(params=VARIANTS)
def objects(request: pytest.FixtureRequest) -> Objects:
    """The base as its files say (no kubectl needed), and the base and the production overlay
    as kustomize renders them."""
    if request.param == "base-files":
        return Objects(base_from_files())
    return Objects(_rendered(request.param))


# ---------------------------------------------------------------------------------------------
# Every file, every rendering: valid against the schemas


def test_every_yaml_file_has_a_role() -> None:
    """Each YAML file is a kustomization or named by one (a manifest nobody includes would
    pass these tests without ever being deployed)."""
    references = _all_references()
    named = {p.resolve() for paths in references.values() for p in paths}
    for kustomization in _kustomization_files():
        for role in ("resources", "components"):
            for path in _references(kustomization)[role]:
                assert path.exists(), f"{kustomization}: {role} entry {path} does not exist"
        for path in _references(kustomization)["patches"] + _references(kustomization)["data"]:
            assert path.is_file(), f"{kustomization}: {path} does not exist"
    for path in sorted(KUBERNETES.rglob("*.y*ml")):
        if path.name == "kustomization.yaml":
            continue
        assert path.resolve() in named, f"{path.relative_to(ROOT)} is in no kustomization"


@pytest.mark.parametrize(
    "path", _manifest_files("resources"), ids=lambda p: str(p.relative_to(KUBERNETES))
)
def test_manifest_file_is_valid(path: Path) -> None:
    manifest = _load(path)
    assert isinstance(manifest, dict) and manifest.get("kind"), f"{path}: not one object"
    assert schema_errors(manifest) == []


@pytest.mark.parametrize(
    "path", _manifest_files("patches"), ids=lambda p: str(p.relative_to(KUBERNETES))
)
def test_patch_file_is_valid(path: Path) -> None:
    manifest = _load(path)
    assert schema_errors(manifest, patch=True) == []


@pytest.mark.parametrize("variant", ["base", "production"])
def test_rendering_is_valid(variant: str) -> None:
    manifests = _rendered(variant)
    assert {"StatefulSet", "Deployment", "ServiceMonitor"} <= {m["kind"] for m in manifests}
    for manifest in manifests:
        name = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert schema_errors(manifest) == [], name


def test_rendering_with_keda_is_valid(production_with_keda: list[Manifest]) -> None:
    scaled = Objects(production_with_keda).one("ScaledObject")
    assert schema_errors(scaled) == []


def test_schemas_reject_what_the_api_server_would() -> None:
    """The validation is not vacuous: a misspelt field, a wrong type or a missing required
    field fails, for built-in kinds and for the custom resources."""
    workers = _load(BASE / "worker-statefulset.yaml")
    misspelt = json.loads(json.dumps(workers))
    misspelt["spec"]["template"]["spec"]["terminationGracePeriod"] = 60
    assert schema_errors(misspelt)
    wrong_type = json.loads(json.dumps(workers))
    wrong_type["spec"]["replicas"] = "two"
    assert schema_errors(wrong_type)
    no_selector = json.loads(json.dumps(workers))
    del no_selector["spec"]["selector"]
    assert schema_errors(no_selector)
    assert not schema_errors({"apiVersion": "apps/v1", "kind": "StatefulSet"}, patch=True)
    assert schema_errors(
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "spec": {"replica": 6}}, patch=True
    )

    scaled = _load(KEDA / "scaledobject.yaml")
    scaled["spec"]["maxReplicas"] = 12
    assert schema_errors(scaled)
    monitor = _load(BASE / "servicemonitor.yaml")
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert schema_errors(monitor)


# ---------------------------------------------------------------------------------------------
# What the deployment must get right


def test_config_map_passes_caudals_loader(objects: Objects, tmp_path: Path) -> None:
    """Both workloads load the mounted configuration with Caudal's own loader (tokens from
    the mounted Secret), and it listens where the pod's ports and probes expect."""
    workers = objects.settings(objects.workers, tmp_path / "worker")
    ingest = objects.settings(objects.ingest, tmp_path / "ingest")
    same = {"ingest": {"tokens_file", "tokens"}}  # only the gateway reads the tokens
    assert workers.model_dump(exclude=same) == ingest.model_dump(exclude=same)
    # Inside a pod, loopback is unreachable from the kubelet and from Prometheus.
    assert workers.metrics.host == "0.0.0.0"
    gateway = objects.container(objects.ingest)
    for address, port_name in (
        (ingest.ingest.grpc, "otlp-grpc"),
        (ingest.ingest.http, "otlp-http"),
    ):
        host, _, port = address.rpartition(":")
        assert host == "0.0.0.0", address
        assert int(port) == container_port(gateway, port_name)
    assert ingest.ingest.metrics_port == container_port(gateway, "metrics")
    assert workers.metrics.port == container_port(objects.container(objects.workers), "metrics")
    # Tokens come from the Secret and name tenants the configuration knows.
    assert ingest.ingest.tokens
    assert set(ingest.ingest.tokens.values()) <= set(ingest.tenants)


def test_config_map_is_mounted_where_the_command_reads_it(objects: Objects) -> None:
    for workload in (objects.workers, objects.ingest):
        args = objects.container(workload)["args"]
        assert args[args.index("-c") + 1] == CONFIG_PATH
        kind, name, key = mounted_source(workload, CONFIG_PATH)
        assert (kind, key) == ("ConfigMap", "caudal.yaml")
        assert name.startswith("caudal-config")


def test_generated_config_map_is_the_base_file() -> None:
    """What kustomize puts in the ConfigMap is base/caudal.yaml, byte for byte."""
    rendered = Objects(_rendered("production"))
    config_map = rendered.one("ConfigMap")
    assert config_map["data"]["caudal.yaml"] == (BASE / "caudal.yaml").read_text()
    assert re.fullmatch(r"caudal-config-[a-z0-9]{10}", config_map["metadata"]["name"])


def test_worker_probes_use_health_endpoints_on_the_metrics_port(
    objects: Objects, tmp_path: Path
) -> None:
    settings = objects.settings(objects.workers, tmp_path)
    container = objects.container(objects.workers)
    probes = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe_name, path in probes.items():
        probe = container.get(probe_name)
        if probe is None and probe_name == "startupProbe":
            continue
        assert probe is not None, f"worker has no {probe_name}"
        assert probe["httpGet"]["path"] == path
        assert container_port(container, probe["httpGet"]["port"]) == settings.metrics.port


def test_ingest_probes_use_its_health_endpoints(objects: Objects, tmp_path: Path) -> None:
    container = objects.container(objects.ingest)
    settings = objects.settings(objects.ingest, tmp_path)
    for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        probe = container[probe_name]
        assert probe["httpGet"]["path"] == path
        assert container_port(container, probe["httpGet"]["port"]) == settings.ingest.metrics_port


def test_termination_grace_covers_decision_wait_and_drain(objects: Objects, tmp_path: Path) -> None:
    """SIGKILL must not cut a drain short: the pod's grace period exceeds the decision window
    plus the worker's own shutdown grace."""
    settings = objects.settings(objects.workers, tmp_path)
    grace = objects.workers["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.decision.wait + settings.shutdown.grace


def test_state_dir_is_on_the_volume_claim(objects: Objects, tmp_path: Path) -> None:
    settings = objects.settings(objects.workers, tmp_path)
    (claim,) = objects.workers["spec"]["volumeClaimTemplates"]
    mounts = objects.container(objects.workers)["volumeMounts"]
    (mount,) = [m for m in mounts if m["name"] == claim["metadata"]["name"]]
    assert mount["mountPath"] == settings.worker.state_dir


def test_workers_fit_the_partitions(objects: Objects, tmp_path: Path) -> None:
    settings = objects.settings(objects.workers, tmp_path)
    assert 1 <= objects.workers["spec"]["replicas"] <= settings.kafka.partitions


def test_memory_limit_of_the_config_is_below_the_containers(
    objects: Objects, tmp_path: Path
) -> None:
    """health.memory_limit reports trouble (and drives load shedding) before the kernel's OOM
    killer ends the worker."""
    settings = objects.settings(objects.workers, tmp_path)
    limits = objects.container(objects.workers)["resources"]["limits"]
    assert 0 < settings.health.memory_limit < quantity_bytes(limits["memory"])


def test_bootstrap_servers_come_from_the_environment(objects: Objects) -> None:
    servers = set()
    for workload in (objects.workers, objects.ingest):
        env = {e["name"]: e.get("value") for e in objects.container(workload).get("env", [])}
        assert env.get("CAUDAL_BOOTSTRAP_SERVERS"), workload["metadata"]["name"]
        servers.add(env["CAUDAL_BOOTSTRAP_SERVERS"])
    assert len(servers) == 1, "workers and gateways must use the same Kafka"


def test_production_overlay_changes_what_it_says() -> None:
    base = Objects(_rendered("base"))
    production = Objects(_rendered("production"))
    namespaces = {m["metadata"].get("namespace") for m in production.manifests}
    assert namespaces - {None} == {"caudal"}
    assert production.one("Namespace")["metadata"]["name"] == "caudal"
    for workload in ("workers", "ingest"):
        before = base.container(getattr(base, workload))
        after = production.container(getattr(production, workload))
        assert after["image"] != before["image"] and re.search(r":[\w.]+$", after["image"])
        assert after["env"] != before["env"]
        assert after["resources"] != before["resources"]
    assert production.workers["spec"]["replicas"] != base.workers["spec"]["replicas"]


def test_pods_run_unprivileged(objects: Objects) -> None:
    """The restricted Pod Security Standard: what the production namespace enforces."""
    for workload in (objects.workers, objects.ingest):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"])
            assert "memory" in resources["limits"]


def test_workers_spread_over_nodes(objects: Objects) -> None:
    template = objects.workers["spec"]["template"]
    labels = template["metadata"]["labels"]
    anti = template["spec"]["affinity"]["podAntiAffinity"]
    terms = [
        t["podAffinityTerm"]
        for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ]
    terms += anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
    assert any(
        term["topologyKey"] == "kubernetes.io/hostname"
        and selects(term["labelSelector"]["matchLabels"], labels)
        for term in terms
    )


def test_disruption_budgets_cover_the_workloads(objects: Objects) -> None:
    budgets = objects.all("PodDisruptionBudget")
    for workload in (objects.workers, objects.ingest):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        (budget,) = [b for b in budgets if selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert budget["spec"]["maxUnavailable"] == 1


def test_services_reach_the_pods(objects: Objects) -> None:
    """Every Service selects pods of one workload, on ports its container declares, and the
    StatefulSet's governing Service is headless."""
    workloads = [objects.workers, objects.ingest]
    for service in objects.all("Service"):
        (workload,) = [
            w
            for w in workloads
            if selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
        ]
        container = objects.container(workload)
        for port in service["spec"]["ports"]:
            container_port(container, port.get("targetPort", port["port"]))
    headless = objects.one("Service", objects.workers["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    ingest_ports = {p["port"] for p in objects.one("Service", "caudal-ingest")["spec"]["ports"]}
    assert ingest_ports == {4317, 4318, 9465}


def test_prometheus_scrapes_workers_and_gateways_as_the_rules_expect(objects: Objects) -> None:
    """The ServiceMonitor selects the two metrics Services (not the headless one, which would
    scrape every worker twice), and their job labels are the jobs of deploy/prometheus."""
    monitor = objects.one("ServiceMonitor")
    selector = monitor["spec"]["selector"]
    scraped = []
    for service in objects.all("Service"):
        labels = service["metadata"].get("labels", {})
        if selects(selector["matchLabels"], labels) and all(
            labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", [])
        ):
            scraped.append(service)
    jobs = {s["metadata"]["labels"][monitor["spec"]["jobLabel"]] for s in scraped}
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert jobs == {job["job_name"] for job in prometheus["scrape_configs"]}
    assert len(scraped) == 2
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in scraped:
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        annotations = service["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == port["port"]


def test_gateways_autoscale_on_cpu_and_workers_do_not(objects: Objects) -> None:
    (hpa,) = objects.all("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", objects.ingest["metadata"]["name"])
    assert "replicas" not in objects.ingest["spec"], "the HPA owns the gateway's replica count"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def _check_scaled_object(scaled: Manifest, objects: Objects, settings: Settings) -> None:
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", objects.workers["metadata"]["name"])
    # More workers than partitions would sit idle.
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert scaled["spec"]["maxReplicaCount"] <= settings.kafka.partitions
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["consumerGroup"] == settings.kafka.group_id
    assert metadata["topic"] == settings.kafka.spans_topic
    assert int(metadata["lagThreshold"]) > 0
    # KEDA reads the bootstrap servers from the worker container's environment.
    container = objects.container(objects.workers)
    assert container["name"] == target["envSourceContainerName"]
    env = {e["name"] for e in container["env"]}
    assert metadata["bootstrapServersFromEnv"] in env


def test_keda_component_matches_the_workers(tmp_path: Path) -> None:
    objects = Objects(base_from_files())
    settings = objects.settings(objects.workers, tmp_path)
    _check_scaled_object(_load(KEDA / "scaledobject.yaml"), objects, settings)


def test_keda_component_renders_into_an_overlay(
    production_with_keda: list[Manifest], tmp_path: Path
) -> None:
    objects = Objects(production_with_keda)
    settings = objects.settings(objects.workers, tmp_path)
    _check_scaled_object(objects.one("ScaledObject"), objects, settings)
