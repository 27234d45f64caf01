"""Static checks of the container and Kubernetes files under docker/.

Images cannot be built and clusters cannot be started in a unit-test run, so these tests
parse the files and check the properties a deployment depends on. A broken edit then
fails here instead of at `docker compose up` or `kubectl apply` time on a GPU machine.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
KUBERAY = DOCKER / "kuberay"
COMPOSE_FILE = DOCKER / "compose.yaml"
MINIO_FILE = DOCKER / "compose.minio.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}

SWEEP_SPEC = "sweeps/sec51_grid.yaml"
APP_DIR = "/home/bopsweep/app"
DATA_DIR = "/shared/data"
# Oldest Kubernetes release the manifests are checked against.
K8S_VERSION = "1.30.0"
MLFLOW_CONFIGMAP = "bopsweep-mlflow"
MLFLOW_SECRET = "bopsweep-mlflow-credentials"
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|(^|_)KEY$", re.IGNORECASE)
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes resource.Quantity, as the API server's OpenAPI schema spells it.
QUANTITY = re.compile(
    r"^[+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")

# Field names of the KubeRay ray.io/v1 types (apis/ray/v1). An unknown key is almost
# always a typo, which the API server would drop or reject; extend these sets when a
# manifest starts using a newer field.
RAYCLUSTER_SPEC_FIELDS = {
    "headGroupSpec",
    "workerGroupSpecs",
    "rayVersion",
    "enableInTreeAutoscaling",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
    "managedBy",
    "gcsFaultToleranceOptions",
}
HEAD_GROUP_FIELDS = {
    "serviceType",
    "headService",
    "enableIngress",
    "rayStartParams",
    "template",
}
WORKER_GROUP_FIELDS = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "idleTimeoutSeconds",
    "numOfHosts",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
}
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds",
    "backoffLimit",
    "rayClusterSpec",
    "submitterPodTemplate",
    "metadata",
    "clusterSelector",
    "submitterConfig",
    "managedBy",
    "deletionStrategy",
    "entrypoint",
    "runtimeEnvYAML",
    "jobId",
    "submissionMode",
    "entrypointResources",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "ttlSecondsAfterFinished",
    "shutdownAfterJobFinishes",
    "suspend",
}


# --------------------------------------------------------------------------- helpers


class _Loader(yaml.SafeLoader):
    """SafeLoader that also accepts Compose's merge tags, as used in override files."""


def _untagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


for _tag in ("!reset", "!override"):
    _Loader.add_constructor(_tag, _untagged)


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.load_all(fh, Loader=_Loader) if doc is not None]


def iter_strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from iter_strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_strings(value, f"{path}[{i}]")


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {raw!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Apply Compose's variable substitution, as `docker compose` does before validating."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        is_set = name in env
        non_empty = bool(env.get(name))
        present = non_empty if op and op.startswith(":") else is_set
        if op in ("-", ":-"):
            return env[name] if present else arg
        if op in ("?", ":?"):
            if not present:
                raise KeyError(f"required variable {name} is unset: {arg}")
            return env[name]
        if op in ("+", ":+"):
            return arg if present else ""
        return env.get(name, "")

    parts = node.split("$$")
    return "$".join(INTERPOLATION.sub(substitute, part) for part in parts)


def environment_of(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def published_ports(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """(host_ip, "host:container") for each published port, long or short syntax."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result.append((port.get("host_ip"), f"{port.get('published')}:{port.get('target')}"))
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            result.append((parts[0], f"{parts[1]}:{parts[2]}"))
        else:
            result.append((None, str(port)))
    return result


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue
        if not line and not pending:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (kw, _) in enumerate(instructions) if kw == "FROM")
    return instructions[last_from:]


def arg_defaults(instructions: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for keyword, rest in instructions:
        if keyword == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def resolve_args(text: str, defaults: dict[str, str]) -> str:
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: defaults.get(m.group(1), m.group(0)), text
    )


def from_images(instructions: list[tuple[str, str]]) -> list[str]:
    defaults = arg_defaults(instructions)
    images = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--")]
            images.append(resolve_args(tokens[0], defaults))
    return images


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    candidates = [path] + ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
    excluded = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        regex = to_regex(pattern.strip("/"))
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def ignore_patterns(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    docs = load_docs(COMPOSE_FILE)
    assert len(docs) == 1, "compose.yaml must hold exactly one document"
    return docs[0]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_file(ENV_EXAMPLE)


@pytest.fixture(scope="module")
def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in load_docs(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"duplicate {key} in {path.name}"
            objects[key] = doc
    return objects


def cluster_specs(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs = {}
    for (kind, name), obj in objects.items():
        if kind == "RayCluster":
            specs[f"RayCluster/{name}"] = obj["spec"]
        elif kind == "RayJob" and "rayClusterSpec" in obj["spec"]:
            specs[f"RayJob/{name}"] = obj["spec"]["rayClusterSpec"]
    return specs


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec["workerGroupSpecs"]:
        yield f"worker group {group['groupName']}", group["template"]


@pytest.fixture(scope="module")
def ray_pods(k8s_objects) -> list[tuple[str, dict[str, Any]]]:
    pods = []
    for owner, spec in cluster_specs(k8s_objects).items():
        for label, template in pod_templates(spec):
            pods.append((f"{owner} {label}", template["spec"]))
    assert pods, "no Ray pod templates found under docker/kuberay"
    return pods


# ------------------------------------------------------------------------ all YAML


EXPECTED_FILES = [
    "docker/Dockerfile",
    "docker/Dockerfile.cpu",
    "docker/Dockerfile.dockerignore",
    "docker/Dockerfile.cpu.dockerignore",
    "docker/compose.yaml",
    "docker/compose.minio.yaml",
    "docker/.dockerignore",
    ".dockerignore",
    "docker/.env.example",
    "docker/.gitignore",
    "docker/README.md",
    "docker/kuberay/raycluster.yaml",
    "docker/kuberay/rayjob.yaml",
    "docker/kuberay/mlflow-config.yaml",
    "docker/kuberay/shared-pvc.yaml",
    "docker/kuberay/fetch-cifar10-job.yaml",
]


@pytest.mark.parametrize("relpath", EXPECTED_FILES)
def test_expected_file_exists(relpath: str) -> None:
    assert (REPO / relpath).is_file()


YAML_FILES = sorted(p for p in DOCKER.rglob("*") if p.suffix in {".yaml", ".yml"})


def test_yaml_files_are_found() -> None:
    assert COMPOSE_FILE in YAML_FILES and len(YAML_FILES) >= 5


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_file_parses_to_mappings(path: Path) -> None:
    docs = load_docs(path)
    assert docs, "file holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs)


# ------------------------------------------------------------------------- compose


def test_compose_matches_compose_spec(compose, env_example) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    # Compose validates after substituting variables, so check the form it will see too.
    for label, doc in [("raw", compose), ("interpolated", interpolate(compose, env_example))]:
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, f"{label}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_compose_dollar_signs_are_deliberate(compose) -> None:
    # A bare $NAME in a command is substituted by Compose from the caller's shell, not
    # by the container's shell: it must be either ${NAME} (Compose) or $$NAME (container).
    for where, text in iter_strings(compose):
        leftover = INTERPOLATION.sub("", text.replace("$$", ""))
        assert "$" not in leftover, f"{where}: ambiguous '$' in {text!r}"


def test_compose_variables_come_from_env_example(compose, env_example) -> None:
    for where, text in iter_strings(compose):
        for match in INTERPOLATION.finditer(text.replace("$$", "")):
            name, op = match.group(1), match.group(2) or ""
            has_default = op in ("-", ":-", "+", ":+")
            documented = name in env_example or f"# {name}=" in ENV_EXAMPLE.read_text()
            assert has_default or name in env_example, (
                f"{where}: ${{{name}}} has no default and is missing from .env.example"
            )
            assert documented, f"{where}: ${name} is not listed in .env.example"
    # Interpolating with the example values must succeed (no required variable missing).
    interpolate(compose, env_example)


def test_env_example_holds_placeholders_only(env_example) -> None:
    secrets = {key: value for key, value in env_example.items() if SECRET_NAME.search(key)}
    assert {"POSTGRES_PASSWORD", "MLFLOW_TRACKING_PASSWORD"} <= secrets.keys()
    for key, value in secrets.items():
        assert "change-me" in value, f".env.example: {key} must be an obvious placeholder"


def test_compose_has_no_literal_secrets(compose, services, env_example) -> None:
    for name, service in services.items():
        for key, value in environment_of(service).items():
            if SECRET_NAME.search(key):
                assert isinstance(value, str) and INTERPOLATION.fullmatch(value), (
                    f"{name}: {key} must be a ${{VAR}} reference, got {value!r}"
                )
            # Credentials inside connection URIs must be references as well.
            for userinfo in re.findall(r"://([^@/\s]+)@", str(value or "")):
                password = userinfo.partition(":")[2]
                assert not password or INTERPOLATION.fullmatch(password), (
                    f"{name}: {key} embeds a literal password"
                )
    placeholders = {v for k, v in env_example.items() if SECRET_NAME.search(k)}
    for where, text in iter_strings(compose):
        for placeholder in placeholders:
            assert placeholder not in text, f"{where}: a value from .env.example was pasted in"


def test_real_env_file_is_git_ignored() -> None:
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout; ignore rules not checked")
    result = subprocess.run(
        [git, "check-ignore", "-q", "docker/.env"], cwd=REPO, capture_output=True, timeout=30
    )
    assert result.returncode == 0, "docker/.env (real secrets) is not git-ignored"


def test_compose_services_present(services) -> None:
    assert {"postgres", "mlflow", "ray-head", "ray-worker", "sweep"} <= services.keys()


@pytest.mark.parametrize("name", ["postgres", "mlflow", "ray-head"])
def test_compose_healthchecks(services, name) -> None:
    check = services[name].get("healthcheck")
    assert check and not check.get("disable"), f"{name} has no healthcheck"
    assert check["test"] not in (["NONE"], "NONE")
    expected = {"postgres": "pg_isready", "mlflow": "/health", "ray-head": "ray status"}[name]
    test = check["test"] if isinstance(check["test"], str) else " ".join(check["test"])
    assert expected in test


def test_compose_health_dependencies(services) -> None:
    expected = {
        ("mlflow", "postgres"),
        ("ray-worker", "ray-head"),
        ("sweep", "ray-head"),
        ("sweep", "mlflow"),
    }
    healthy_edges = set()
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: use the long depends_on form"
        for dependency, options in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if options.get("condition") == "service_healthy":
                # Without a healthcheck, service_healthy would wait forever.
                assert "healthcheck" in services[dependency], dependency
                healthy_edges.add((name, dependency))
    assert expected <= healthy_edges


def test_compose_ports_bound_to_loopback(services) -> None:
    for name, service in services.items():
        for host_ip, mapping in published_ports(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {mapping} on all interfaces"
    assert ("127.0.0.1", "8265:8265") in published_ports(services["ray-head"])
    assert ("127.0.0.1", "5000:5000") in published_ports(services["mlflow"])


def test_compose_ray_commands(services) -> None:
    head = shlex.split(command_text(services["ray-head"]))
    assert head[:2] == ["ray", "start"]
    assert {"--head", "--port=6379", "--dashboard-host=0.0.0.0", "--block"} <= set(head)
    worker = shlex.split(command_text(services["ray-worker"]))
    assert worker[:2] == ["ray", "start"]
    assert {"--address=ray-head:6379", "--block"} <= set(worker)


def test_compose_gpu_reservation(services) -> None:
    deploy = services["ray-worker"]["deploy"]
    assert "replicas" in deploy
    devices = deploy["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_compose_sweep_service(services) -> None:
    sweep = services["sweep"]
    text = command_text(sweep)
    run = text.index("bopsweep run")
    run_line = text[run:].splitlines()[0]
    for part in (
        SWEEP_SPEC,
        "--address ray-head:6379",
        "--tracking-uri http://mlflow:5000",
        "--storage /shared/results",
        f"--set train.data_dir={DATA_DIR}",
    ):
        assert part in run_line
    # A Ray driver must run on a Ray node; the container joins the cluster first.
    joined = text.find("ray start --address=ray-head:6379")
    assert 0 <= joined < run, "sweep must run `ray start --address=ray-head:6379` first"
    assert sweep.get("restart") == "no"


@pytest.mark.parametrize("name", ["ray-head", "ray-worker", "sweep"])
def test_compose_ray_nodes_share_results_and_shm(compose, services, name) -> None:
    service = services[name]
    volumes = [
        v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service["volumes"]
    ]
    shared = [v for v in volumes if v.split(":")[1] == "/shared"]
    assert shared, f"{name} does not mount /shared"
    assert shared[0].split(":")[0] in compose["volumes"], "/shared must be a named volume"
    assert "shm_size" in service
    assert service["image"] == services["ray-head"]["image"], "Ray nodes must share one image"
    env = environment_of(service)
    assert env.get("MLFLOW_TRACKING_URI") == "http://mlflow:5000"
    assert set(CREDENTIAL_VARS) <= env.keys()


def test_compose_mlflow_service(compose, services) -> None:
    mlflow = services["mlflow"]
    args = shlex.split(command_text(mlflow))
    assert args[:2] == ["mlflow", "server"]
    for flag, value in [("--host", "0.0.0.0"), ("--port", "5000")]:
        assert args[args.index(flag) + 1] == value
    assert "--serve-artifacts" in args
    # From the environment (mlflow server reads it there), so compose.minio.yaml can
    # point it at a bucket without repeating the command.
    assert "--artifacts-destination" not in args
    assert environment_of(mlflow)["MLFLOW_ARTIFACTS_DESTINATION"] == "/mlartifacts"
    # MLflow rejects requests whose Host header is not allowed: the Ray containers
    # call it as mlflow:5000.
    allowed = args[args.index("--allowed-hosts") + 1].split(",")
    assert {"mlflow:*", "127.0.0.1:*"} <= set(allowed)
    backend = environment_of(mlflow).get("MLFLOW_BACKEND_STORE_URI", "")
    if "--backend-store-uri" in args:
        backend = args[args.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql://") and "@postgres:5432/" in backend
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"]}
    assert mounts.get("/mlartifacts") in compose["volumes"], "artifacts need a named volume"


def test_compose_postgres_service(compose, services) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in postgres["volumes"]}
    assert mounts.get("/var/lib/postgresql/data") in compose["volumes"]


def test_compose_config_cli() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed; `docker compose config` not run")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip("Docker Compose plugin not installed; `docker compose config` not run")
    result = subprocess.run(
        [
            *(docker, "compose", "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE)),
            *("--profile", "sweep", "config", "-q"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------- Kubernetes


def test_k8s_objects_expected(k8s_objects) -> None:
    kinds = {kind for kind, _ in k8s_objects}
    expected = {"RayCluster", "RayJob", "ConfigMap", "Secret", "PersistentVolumeClaim", "Job"}
    assert expected <= kinds


def test_k8s_object_identity(k8s_objects) -> None:
    api_versions = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "Job": "batch/v1"}
    for (kind, name), obj in k8s_objects.items():
        assert obj.get("apiVersion"), f"{kind}/{name} has no apiVersion"
        assert obj["apiVersion"] == api_versions.get(kind, "v1"), f"{kind}/{name}"
        assert DNS_1123.match(name) and len(name) <= 63, f"invalid name {name!r}"


def test_k8s_objects_match_kubernetes_schemas(k8s_objects) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate not installed; schemas not checked"
    )
    # Core objects are checked whole; for Ray objects, whose CRD schema is not bundled,
    # each pod template is checked as a Pod. Strict mode rejects misspelt fields.
    documents = [obj for (kind, _), obj in k8s_objects.items() if not kind.startswith("Ray")]
    for owner, spec in cluster_specs(k8s_objects).items():
        for label, template in pod_templates(spec):
            name = re.sub(r"[^a-z0-9]+", "-", f"{owner} {label}".lower()).strip("-")
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}
            documents.append({**pod, "spec": template["spec"]})
    for document in documents:
        try:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        except Exception as error:  # jsonschema's ValidationError or the package's own
            where = f"{document['kind']}/{document['metadata']['name']}"
            detail = getattr(error, "message", str(error))
            pytest.fail(f"{where}: {detail} at {list(getattr(error, 'path', []))}")


def test_resource_quantities_parse(k8s_objects) -> None:
    # The schemas type quantities as int-or-string, so a typo like "8 Gi" passes them.
    def quantities(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("requests", "limits") and isinstance(value, dict):
                    for name, quantity in value.items():
                        yield f"{path}.{key}.{name}", quantity
                elif key == "sizeLimit":
                    yield f"{path}.{key}", value
                else:
                    yield from quantities(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from quantities(value, f"{path}[{i}]")

    found = 0
    for (kind, name), obj in k8s_objects.items():
        for where, quantity in quantities(obj):
            found += 1
            assert QUANTITY.match(str(quantity)), f"{kind}/{name}{where}: {quantity!r}"
    assert found


def test_kuberay_fields_are_known(k8s_objects) -> None:
    for (kind, name), obj in k8s_objects.items():
        if kind == "RayJob":
            assert set(obj["spec"]) <= RAYJOB_SPEC_FIELDS, f"RayJob/{name}"
    for owner, spec in cluster_specs(k8s_objects).items():
        assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, owner
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS, owner
        assert {"rayStartParams", "template"} <= spec["headGroupSpec"].keys(), owner
        assert spec["workerGroupSpecs"], f"{owner} has no worker group"
        for group in spec["workerGroupSpecs"]:
            assert set(group) <= WORKER_GROUP_FIELDS, f"{owner} {group.get('groupName')}"
            # Older v1 CRDs require these; newer ones default them.
            required = {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"}
            assert required <= group.keys()
            assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def test_ray_start_params_are_strings(k8s_objects) -> None:
    # The CRD types rayStartParams as map[string]string: a bare 0 or true is rejected.
    for owner, spec in cluster_specs(k8s_objects).items():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for key, value in (group.get("rayStartParams") or {}).items():
                assert isinstance(value, str), f"{owner}: rayStartParams.{key}={value!r}"


def test_versions_agree(k8s_objects) -> None:
    # Ray processes of different versions refuse to connect, and the torch build in the
    # images must be the one the project pins.
    versions = {spec.get("rayVersion") for spec in cluster_specs(k8s_objects).values()}
    assert len(versions) == 1 and None not in versions, versions
    (version,) = versions
    assert f"ray[default]=={version}" in (DOCKER / "README.md").read_text(encoding="utf-8")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    for path in DOCKERFILES.values():
        args = arg_defaults(dockerfile_instructions(path))
        assert args["RAY_VERSION"] == version, path.name
        for package, arg in [("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")]:
            pin = re.search(rf'"{package}==([^"]+)"', pyproject)
            assert pin, f"pyproject.toml no longer pins {package}; revisit {arg}"
            assert args[arg] == pin.group(1), f"{path.name}: {arg}"
    ray_spec = re.search(r'"ray\[[^\]]*\]([^"]*)"', pyproject)
    assert ray_spec, "pyproject.toml no longer requires ray"
    specifiers = pytest.importorskip("packaging.specifiers")
    assert version in specifiers.SpecifierSet(ray_spec.group(1)), ray_spec.group(0)


def test_ray_containers_have_image_and_mlflow_env(ray_pods) -> None:
    for owner, pod in ray_pods:
        containers = pod["containers"]
        assert containers, owner
        for container in containers:
            where = f"{owner} container {container.get('name')}"
            assert DNS_1123.match(container["name"]), where
            assert isinstance(container.get("image"), str) and ":" in container["image"], where
            env = {item["name"]: item for item in container.get("env", [])}
            uri = env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]
            assert uri == {"name": MLFLOW_CONFIGMAP, "key": "MLFLOW_TRACKING_URI"}, where
            for var in CREDENTIAL_VARS:
                assert "value" not in env[var], f"{where}: {var} must not be inline"
                ref = env[var]["valueFrom"]["secretKeyRef"]
                assert ref == {"name": MLFLOW_SECRET, "key": var}, where


def test_env_references_resolve(k8s_objects, ray_pods) -> None:
    configmap = k8s_objects[("ConfigMap", MLFLOW_CONFIGMAP)]
    secret = k8s_objects[("Secret", MLFLOW_SECRET)]
    assert configmap["data"]["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    for owner, pod in ray_pods:
        for container in pod["containers"]:
            for item in container.get("env", []):
                where = f"{owner}: {item['name']}"
                source = item.get("valueFrom", {})
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    assert ref["name"] == MLFLOW_CONFIGMAP, where
                    assert ref["key"] in configmap["data"], where
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    assert ref["name"] == MLFLOW_SECRET, where
                    assert ref["key"] in secret["stringData"], where


def test_secret_template_holds_placeholders_only(k8s_objects) -> None:
    secret = k8s_objects[("Secret", MLFLOW_SECRET)]
    assert "data" not in secret, "base64 data would hide whether real values were committed"
    assert set(CREDENTIAL_VARS) == set(secret["stringData"])
    for key, value in secret["stringData"].items():
        assert value.startswith("REPLACE_ME"), f"Secret {key} must stay a placeholder"


def test_gpu_limits_in_worker_groups(k8s_objects) -> None:
    for owner, spec in cluster_specs(k8s_objects).items():
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head.get("resources", {}).get("limits", {}), owner
        gpus = [
            int(container["resources"]["limits"].get("nvidia.com/gpu", 0))
            for group in spec["workerGroupSpecs"]
            for container in group["template"]["spec"]["containers"]
        ]
        assert gpus and max(gpus) >= 1, f"{owner}: no worker group requests nvidia.com/gpu"


def test_the_head_advertises_no_gpus(k8s_objects) -> None:
    # Trials never run on the head (num-cpus 0); GPUs Ray counted there would be
    # GPUs no trial is given, and a sweep's check of the cluster would count them.
    for owner, spec in cluster_specs(k8s_objects).items():
        params = spec["headGroupSpec"]["rayStartParams"]
        assert params.get("num-cpus") == "0" and params.get("num-gpus") == "0", owner


def test_shared_pvc_mounted_everywhere(k8s_objects, ray_pods) -> None:
    claims = {
        name: obj for (kind, name), obj in k8s_objects.items() if kind == "PersistentVolumeClaim"
    }
    for obj in claims.values():
        # Head and workers land on different nodes and write to one Tune storage path.
        assert "ReadWriteMany" in obj["spec"]["accessModes"]
    for owner, pod in ray_pods:
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/shared" in mounts, f"{owner}: /shared not mounted"
            pvc = volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"]
            assert pvc in claims, f"{owner}: claim {pvc} is not defined under docker/kuberay"


def test_ray_pods_run_as_image_user(ray_pods) -> None:
    uids = {
        match
        for path in DOCKERFILES.values()
        for match in re.findall(r"useradd [^\n]*--uid (\d+)", path.read_text(encoding="utf-8"))
    }
    assert len(uids) == 1, f"Dockerfiles disagree on the UID: {uids}"
    (uid,) = uids
    for owner, pod in ray_pods:
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, owner
        assert str(context.get("runAsUser")) == uid, owner
        assert str(context.get("fsGroup")) == uid, f"{owner}: /shared would not be writable"


def test_rayjob(k8s_objects) -> None:
    jobs = [obj for (kind, _), obj in k8s_objects.items() if kind == "RayJob"]
    assert jobs
    for job in jobs:
        spec = job["spec"]
        entrypoint = spec["entrypoint"]
        assert entrypoint.startswith("bopsweep run ")
        assert "--address auto" in entrypoint and "--storage /shared/results" in entrypoint
        # KubeRay pastes the entrypoint into the submitter pod's shell command line, so
        # operators and expansions would run in the submitter, not in the Ray job.
        assert not re.search(r"&&|\|\||[;|`$<>]", entrypoint), entrypoint
        assert f"{APP_DIR}/{SWEEP_SPEC}" in entrypoint, "use the absolute in-image path"
        # Trials run inside their own trial directories: a relative data_dir would miss.
        assert f"--set train.data_dir={DATA_DIR}" in entrypoint
        assert spec["shutdownAfterJobFinishes"] is True
        assert "rayClusterSpec" in spec or "clusterSelector" in spec


def test_data_job_fills_the_folder_trials_read(k8s_objects, ray_pods) -> None:
    job = k8s_objects[("Job", "bopsweep-fetch-cifar10")]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert DATA_DIR in " ".join(container["command"]) and "cifar10" in container["command"][-1]
    ray_images = {c["image"] for _, p in ray_pods for c in p["containers"]}
    assert {container["image"]} == ray_images, "the Job must use the Ray pods' image"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"]
    ray_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, p in ray_pods
        for v in p["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert {claim} == ray_claims
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_rayjob_cluster_matches_raycluster(k8s_objects) -> None:
    clusters = [obj["spec"] for (kind, _), obj in k8s_objects.items() if kind == "RayCluster"]
    jobs = [obj["spec"] for (kind, _), obj in k8s_objects.items() if kind == "RayJob"]
    for job in jobs:
        if "rayClusterSpec" in job:
            assert job["rayClusterSpec"] in clusters, "rayjob.yaml drifted from raycluster.yaml"


def test_sweep_spec_exists() -> None:
    if not (REPO / "sweeps").is_dir():
        pytest.skip("sweeps/ is not in this checkout; the images COPY it and will not build")
    assert (REPO / SWEEP_SPEC).is_file(), f"compose and rayjob run {SWEEP_SPEC}"


# ---------------------------------------------------------------------- Dockerfiles


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request) -> tuple[str, Path, list[tuple[str, str]]]:
    path = DOCKERFILES[request.param]
    return request.param, path, dockerfile_instructions(path)


def test_dockerfile_from_lines(dockerfile) -> None:
    flavour, _, instructions = dockerfile
    images = from_images(instructions)
    assert images
    for image in images:
        assert "$" not in image and ":" in image.split("/")[-1], f"unpinned base {image}"
    if flavour == "gpu":
        assert images[-1].startswith("nvidia/cuda:")
    else:
        assert images[-1].startswith("python:3.11-slim")


def test_dockerfile_python_311(dockerfile) -> None:
    flavour, _, instructions = dockerfile
    if flavour == "gpu":
        assert arg_defaults(instructions).get("PYTHON_VERSION") == "3.11"
    else:
        assert from_images(instructions)[-1].startswith("python:3.11")


def test_dockerfile_runs_as_non_root(dockerfile) -> None:
    _, path, instructions = dockerfile
    users = [rest for kw, rest in final_stage(instructions) if kw == "USER"]
    assert users, "final stage never switches away from root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    text = path.read_text(encoding="utf-8")
    created = re.search(r"useradd [^\n]*--uid (\d+)[^\n]* bopsweep\b", text)
    assert created, "user bopsweep is not created"
    assert user in {"bopsweep", created.group(1)}


def test_dockerfile_installs_project(dockerfile) -> None:
    _, _, instructions = dockerfile
    runs = [rest for kw, rest in instructions if kw == "RUN"]
    project = [r for r in runs if re.search(r"pip install\b[^&;]*\s\.(\s|$)", r)]
    assert project, "no `pip install .` of the project"
    # The dashboard and job server come with ray[default]; ray[tune] alone lacks them.
    assert any("ray[default]" in r for r in project)
    # KubeRay's default probes exec wget in Ray pods.
    assert any(re.search(r"apt-get install[^&]*\bwget\b", r) for r in runs)
    # KubeRay runs `ray start` in a login shell, whose /etc/profile may reset PATH.
    assert any("/etc/profile.d/" in r and "VIRTUAL_ENV" in r for r in runs)


def test_dockerfile_has_the_compilers_torch_compile_needs(dockerfile) -> None:
    # `compile: true`: Inductor builds its CPU kernels with g++, Triton its GPU kernels'
    # launchers with gcc, at the first forward pass.
    _, _, instructions = dockerfile
    installs = [
        rest for kw, rest in final_stage(instructions) if kw == "RUN" and "apt-get install" in rest
    ]
    packages = {word for rest in installs for word in rest.split()}
    assert {"gcc", "g++"} <= packages or "build-essential" in packages, installs


def test_dockerfile_torch_wheels(dockerfile) -> None:
    flavour, path, instructions = dockerfile
    runs = [rest for kw, rest in instructions if kw == "RUN"]
    torch_runs = [r for r in runs if re.search(r"pip install\b.*\btorch==", r)]
    assert torch_runs
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu"
    if flavour == "cpu":
        assert cpu_index in torch_runs[0]
    else:
        assert "download.pytorch.org/whl/cpu" not in path.read_text(encoding="utf-8")


def test_dockerfile_has_no_remote_add(dockerfile) -> None:
    _, _, instructions = dockerfile
    for keyword, rest in instructions:
        if keyword == "ADD":
            assert not re.search(r"(https?|ftp)://|git@|\.git\b", rest), f"remote ADD: {rest}"


def test_dockerfile_layout_and_cmd(dockerfile) -> None:
    _, _, instructions = dockerfile
    stage = final_stage(instructions)
    workdirs = [rest for kw, rest in stage if kw == "WORKDIR"]
    assert workdirs[-1] == APP_DIR
    copies = [rest.split() for kw, rest in stage if kw == "COPY"]
    assert any(parts[-2].rstrip("/") == "sweeps" for parts in copies), "sweeps/ not copied"
    cmd = [rest for kw, rest in stage if kw == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["bopsweep", "--help"]
    assert not any(kw == "ENTRYPOINT" for kw, _ in stage), "an ENTRYPOINT would wrap `ray start`"


def test_dockerignore_admits_build_inputs(dockerfile) -> None:
    _, path, instructions = dockerfile
    ignore = path.with_name(path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} missing: the whole checkout would be sent"
    patterns = ignore_patterns(ignore)
    copied = [
        rest.split()[-2] for kw, rest in instructions if kw == "COPY" and "--from" not in rest
    ]
    for needed in ["pyproject.toml", "bopsweep/__init__.py", SWEEP_SPEC, *copied]:
        assert not dockerignore_excludes(patterns, needed.rstrip("/")), f"{needed} excluded"
    for unwanted in [".venv/bin/python", ".git/HEAD", "bopsweep/__pycache__/x.pyc"]:
        assert dockerignore_excludes(patterns, unwanted), f"{unwanted} would be uploaded"


def test_hadolint() -> None:
    # Also look beside the interpreter, for a hadolint installed into a non-activated venv.
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint not on PATH; Dockerfile lint not run")
    # DL3008 (pin apt versions): pinned versions vanish from the archives as the base
    # image moves on, which breaks rebuilds instead of making them reproducible.
    result = subprocess.run(
        [hadolint, "--no-color", "--ignore", "DL3008", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------- object store vs /dev/shm
# Ray's object store lives in /dev/shm; it must fit there with room for PyTorch's own
# shared memory (DataLoader workers, NCCL), instead of Ray's default of 30% of RAM.
STORE_SHARE_OF_SHM = 0.8
UNITS = {"": 1, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}
K8S_UNITS = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
}


def compose_bytes(text: str) -> int:
    """Compose's byte values (shm_size: 8gb, 512m, 1073741824)."""
    number, unit = re.fullmatch(r"([0-9.]+)\s*([a-zA-Z]*)", text.strip()).groups()
    return int(float(number) * UNITS[unit.lower()])


def k8s_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return int(float(number) * K8S_UNITS[unit])


def object_store_flag(text: str) -> str:
    match = re.search(r"--object-store-memory[= ](\S+)", text)
    assert match, "ray start without --object-store-memory: Ray sizes it at 30% of RAM"
    return match.group(1)


@pytest.mark.parametrize("name", ["ray-head", "ray-worker", "sweep"])
def test_compose_object_store_fits_in_shm(services, env_example, name) -> None:
    service = interpolate(services[name], env_example)
    shm = compose_bytes(service["shm_size"])
    store = int(object_store_flag(command_text(service)))
    assert 0 < store <= STORE_SHARE_OF_SHM * shm, (name, store, shm)
    # The defaults documented in .env.example are the ones compose.yaml applies.
    raw = command_text(services[name])
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    assert f"# RAY_OBJECT_STORE_MEMORY={store}" in example and store > 2**30
    assert "${RAY_OBJECT_STORE_MEMORY:-" in raw
    assert f"# RAY_SHM_SIZE={services[name]['shm_size'].split(':-')[1].rstrip('}')}" in example


def test_kuberay_object_store_fits_in_dshm(k8s_objects) -> None:
    checked = 0
    for owner, spec in cluster_specs(k8s_objects).items():
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            (container,) = [c for c in pod["containers"] if c["name"].startswith("ray-")]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            shm_volume = volumes[mounts["/dev/shm"]]["emptyDir"]
            assert shm_volume.get("medium") == "Memory", owner
            shm = k8s_bytes(shm_volume["sizeLimit"])
            store = int(group["rayStartParams"]["object-store-memory"])
            where = f"{owner} {group.get('groupName', 'head')}"
            assert 0 < store <= STORE_SHARE_OF_SHM * shm, (where, store, shm)
            # A memory-backed emptyDir counts against the container's memory limit.
            memory = k8s_bytes(container["resources"]["limits"]["memory"])
            assert shm <= memory / 2, (where, shm, memory)
            checked += 1
    assert checked >= 4


# ------------------------------------------------------- MLflow client vs server
def test_mlflow_client_in_images_is_the_server_s_version(services) -> None:
    server_args = services["mlflow"]["build"]["args"]
    default = re.fullmatch(r"\$\{MLFLOW_VERSION:-([^}]+)\}", server_args["MLFLOW_VERSION"])
    assert default, "the MLflow server's version must come from MLFLOW_VERSION"
    version = default.group(1)
    assert services["mlflow"]["image"].endswith(":${MLFLOW_VERSION:-" + version + "}")
    for name in ("ray-head", "ray-worker", "sweep"):
        assert services[name]["build"]["args"]["MLFLOW_VERSION"] == server_args["MLFLOW_VERSION"]
    for path in DOCKERFILES.values():
        instructions = dockerfile_instructions(path)
        assert arg_defaults(instructions)["MLFLOW_VERSION"] == version, path.name
        installs = " ".join(rest for kw, rest in instructions if kw == "RUN")
        assert '"mlflow==${MLFLOW_VERSION}"' in installs, path.name
    assert f"# MLFLOW_VERSION={version}" in ENV_EXAMPLE.read_text(encoding="utf-8")
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    wanted = re.search(r'"mlflow([<>=!~][^"]*)"', pyproject)
    specifiers = pytest.importorskip("packaging.specifiers")
    assert version in specifiers.SpecifierSet(wanted.group(1)), wanted.group(0)


# ----------------------------------------------------------- build contexts
def _ignore_file(context: Path, dockerfile: str | None) -> Path:
    """The filter BuildKit applies: <Dockerfile>.dockerignore, else the context's."""
    if dockerfile is not None:
        specific = context / (dockerfile + ".dockerignore")
        if specific.is_file():
            return specific
    return context / ".dockerignore"


@pytest.mark.parametrize("compose_file", [COMPOSE_FILE, MINIO_FILE], ids=lambda p: p.name)
def test_docker_env_is_never_sent_to_a_builder(compose_file) -> None:
    (doc,) = load_docs(compose_file)
    builds = 0
    for name, service in doc["services"].items():
        build = service.get("build")
        if not build:
            continue
        builds += 1
        context = (DOCKER / build["context"]).resolve()
        dockerfile = None if "dockerfile_inline" in build else build.get("dockerfile")
        if dockerfile is not None:
            dockerfile = interpolate(dockerfile, {})
        ignore = _ignore_file(context, dockerfile)
        assert ignore.is_file(), f"{name}: no .dockerignore for context {context}"
        secret = str((DOCKER / ".env").resolve().relative_to(context))
        assert dockerignore_excludes(ignore_patterns(ignore), secret), (name, ignore)
    assert builds or compose_file == MINIO_FILE
    # Builds from the repository root with another Dockerfile: the root filter.
    root = ignore_patterns(REPO / ".dockerignore")
    for unwanted in [
        "docker/.env",
        ".env",
        ".venv/bin/python",
        ".git/HEAD",
        "mlflow.db",
        "mlflow.db-wal",
    ]:
        assert dockerignore_excludes(root, unwanted), unwanted
    for wanted in ["docker/.env.example", "pyproject.toml", "bopsweep/cli/__init__.py"]:
        assert not dockerignore_excludes(root, wanted), wanted


# ----------------------------------------------------------------- MinIO option
@pytest.fixture(scope="module")
def minio() -> dict[str, Any]:
    (doc,) = load_docs(MINIO_FILE)
    return doc


def _minio_env() -> dict[str, str]:
    """.env.example with its MinIO section uncommented, as a user would."""
    values = {}
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(\S+)", raw.strip())
        if match:
            values[match.group(1)] = match.group(2)
    return values


def test_minio_override_matches_compose_spec(minio, compose) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    for label, doc in [("raw", minio), ("interpolated", interpolate(minio, _minio_env()))]:
        errors = list(validator.iter_errors(doc))
        assert not errors, f"{label}: " + "; ".join(e.message for e in errors)
    # An override: every service it changes exists in compose.yaml, or is its own.
    own = {"minio", "minio-setup"}
    assert set(minio["services"]) - own <= set(compose["services"])
    assert set(minio["volumes"]) == {"minio"}


def test_minio_override_secrets_are_references_documented_as_placeholders(minio) -> None:
    example = ENV_EXAMPLE.read_text(encoding="utf-8")
    for where, text in iter_strings(minio):
        for match in INTERPOLATION.finditer(text.replace("$$", "")):
            assert f"# {match.group(1)}=" in example, f"{where}: ${match.group(1)} undocumented"
    for name, service in minio["services"].items():
        for key, value in environment_of(service).items():
            if SECRET_NAME.search(key):
                assert INTERPOLATION.fullmatch(str(value)), f"{name}: {key} must be ${{VAR}}"
    for key, value in _minio_env().items():
        if SECRET_NAME.search(key):
            assert "change-me" in value, f".env.example: {key}"
    for where, text in iter_strings(minio):
        leftover = INTERPOLATION.sub("", text.replace("$$", ""))
        assert "$" not in leftover, f"{where}: ambiguous '$' in {text!r}"


def test_minio_serves_mlflow_s_artifacts_and_the_ray_containers(minio) -> None:
    services = minio["services"]
    server = services["minio"]
    assert re.search(r":RELEASE\.\d{4}-", server["image"]), "pin MinIO's image"
    assert re.search(r":RELEASE\.\d{4}-", services["minio-setup"]["image"])
    assert server["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    for host_ip, _ in published_ports(server):
        assert host_ip == "127.0.0.1"
    setup = services["minio-setup"]
    assert setup["depends_on"]["minio"]["condition"] == "service_healthy"
    script = command_text(setup)
    for step in ("mc mb --ignore-existing", "mc admin user add", "policy attach local readwrite"):
        assert step in script
    mlflow = services["mlflow"]
    env = environment_of(mlflow)
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert mlflow["depends_on"]["minio-setup"]["condition"] == "service_completed_successfully"
    for name in ("mlflow", "ray-head", "ray-worker", "sweep"):
        env = environment_of(services[name])
        assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_ACCESS_KEY_ID"].startswith("${BOPSWEEP_S3_ACCESS_KEY_ID"), name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${BOPSWEEP_S3_SECRET_ACCESS_KEY"), name
        # MinIO's administrator stays with MinIO.
        assert not any("MINIO_ROOT" in str(v) for v in env.values()), name
