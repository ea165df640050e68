"""The Kubernetes manifests (infra/k8s) and the image definition (infra/docker), checked without a cluster.

They are parsed and cross-checked against each other and against what the project pins and the test suite runs
on: one image tagged with pyproject's version everywhere, Ray/MLflow/Prefect/torch versions equal to the
virtualenv's and the Makefile's, no credentials in the repository and every Secret reference documented, the
shared volume and the in-cluster services wired into every pod that needs them, a GPU group that can run NCCL,
and a RayJob entrypoint that the real `albert` parser and TrainConfig accept.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
DOCKER = REPO / "infra" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
CONSTRAINTS = DOCKER / "constraints.txt"
SECRETS_DOC = K8S / "README.md"

IMAGE = "ghcr.io/albert-pipeline/albert"
NAMESPACE = "albert"
# The torch build a tag names after the project version: cpu, cu128, rocm6.4, ...
TAG_VARIANT = r"(cpu|cu\d+|rocm[\d.]+)"
SECRET_LIKE = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)
# scheme://user:password@ ; a password is allowed only as a placeholder (<password>, $VAR, ${VAR}, $(VAR)).
URI_WITH_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"`]+:([^\s@'\"`]+)@", re.IGNORECASE)
PLACEHOLDER = re.compile(r"^(<[^>]*>|\$\{?\(?\w+\)?\}?)$")
AWS_ACCESS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
PINNED_EXACTLY = ("ray", "mlflow", "prefect")  # image == the virtualenv the tests run in
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# --- loading ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Doc:
    path: Path
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}: {self.body.get('kind')}/{self.body.get('metadata', {}).get('name')}"


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def is_kustomization(path: Path) -> bool:
    return path.name in ("kustomization.yaml", "kustomization.yml", "Kustomization")


def load_docs() -> list[Doc]:
    docs = []
    for path in yaml_files():
        if is_kustomization(path):
            continue
        docs += [Doc(path, d) for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return load_docs()


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d.kind == kind]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def project_version() -> str:
    return pyproject()["project"]["version"]


def project_requirements() -> list[Requirement]:
    """The runtime dependencies and the extras the image installs (`.[hf,server]`), without the project itself."""
    project = pyproject()["project"]
    specs = project["dependencies"] + [
        r for extra in ("hf", "server") for r in project["optional-dependencies"][extra]
    ]
    return [
        r for r in map(Requirement, specs) if canonicalize_name(r.name) != canonicalize_name(project["name"])
    ]


def requirement(name: str) -> Requirement:
    return next(r for r in project_requirements() if canonicalize_name(r.name) == canonicalize_name(name))


def makefile_torch_spec() -> str:
    match = re.search(r"^TORCH_SPEC\s*\?=\s*(.+?)\s*$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile has no `TORCH_SPEC ?= ...`"
    return match.group(1)


def dockerfile_args() -> dict[str, str]:
    args = {}
    for match in re.finditer(r"^ARG\s+(\w+)=(.*)$", DOCKERFILE.read_text(), re.MULTILINE):
        args[match.group(1)] = match.group(2).strip().strip("\"'")
    return args


def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of every instruction `name` (FROM, ENV, USER, ...), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.MULTILINE)]


def image_uid() -> int:
    """The numeric uid of the Dockerfile's last USER (runAsNonRoot can verify only a number)."""
    user = dockerfile_instructions("USER")[-1].split(":")[0]
    args = dockerfile_args()
    uid = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), user)
    assert uid.isdigit(), f"USER {user!r} is not a numeric uid"
    return int(uid)


def constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = match.group(2)
    return pins


def expected_tag() -> str:
    tag = kustomization()["images"][0]["newTag"]
    assert re.fullmatch(re.escape(project_version()) + "-" + TAG_VARIANT, str(tag)), (
        f"image tag {tag!r} must be pyproject's version {project_version()!r}, '-', and the torch variant"
    )
    return str(tag)


# --- walking pods, containers and environments ------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    doc: Doc
    where: str  # e.g. spec.workerGroupSpecs[1].template.spec
    spec: dict[str, Any]

    def containers(self, init: bool = True) -> list[dict[str, Any]]:
        return list(self.spec.get("containers", [])) + (
            list(self.spec.get("initContainers", [])) if init else []
        )

    def __str__(self) -> str:
        return f"{self.doc} at {self.where}"


def pods_in(node: Any, doc: Doc, where: str = "") -> Iterator[Pod]:
    """Every pod spec (a mapping with a `containers` list) anywhere in a document: Deployments, RayCluster groups,
    a RayJob's cluster and submitter."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield Pod(doc, where or ".", node)
        for key, value in node.items():
            yield from pods_in(value, doc, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from pods_in(value, doc, f"{where}[{i}]")


def all_pods(docs: list[Doc]) -> list[Pod]:
    return [pod for d in docs for pod in pods_in(d.body, d)]


@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str


def configmaps(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {
        d.name: {k: str(v) for k, v in (d.body.get("data") or {}).items()} for d in of_kind(docs, "ConfigMap")
    }


def container_env(container: dict[str, Any], docs: list[Doc]) -> dict[str, str | SecretRef]:
    """The container's environment as Kubernetes builds it: envFrom ConfigMaps, then `env` (which wins), with
    configMapKeyRef resolved from the manifests and secretKeyRef kept as a reference."""
    cms = configmaps(docs)
    env: dict[str, str | SecretRef] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            assert ref["name"] in cms or ref.get("optional"), (
                f"envFrom names a missing ConfigMap {ref['name']}"
            )
            env |= cms.get(ref["name"], {})
    for item in container.get("env", []):
        value_from = item.get("valueFrom") or {}
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            if ref["name"] in cms and ref["key"] in cms[ref["name"]]:
                env[item["name"]] = cms[ref["name"]][ref["key"]]
            else:
                assert ref.get("optional"), (
                    f"{item['name']}: ConfigMap {ref['name']}/{ref['key']} is not defined"
                )
        elif "secretKeyRef" in value_from:
            env[item["name"]] = SecretRef(
                value_from["secretKeyRef"]["name"], value_from["secretKeyRef"]["key"]
            )
    return env


def expand(text: str, env: dict[str, str | SecretRef]) -> str:
    """Kubernetes' $(VAR) expansion in command and args."""
    return re.sub(r"\$\((\w+)\)", lambda m: str(env.get(m.group(1), m.group(0))), text)


def argv(container: dict[str, Any], docs: list[Doc]) -> list[str]:
    env = container_env(container, docs)
    return [expand(str(a), env) for a in container.get("command", []) + container.get("args", [])]


def mounts(container: dict[str, Any]) -> dict[str, str]:
    """mount path -> volume name"""
    return {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}


def volumes(pod: Pod) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod.spec.get("volumes", [])}


def flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def service_for(docs: list[Doc], component_labels: dict[str, str]) -> Doc:
    """The Service whose selector picks pods with these labels."""
    found = [
        s
        for s in of_kind(docs, "Service")
        if s.body["spec"].get("selector")
        and all(component_labels.get(k) == v for k, v in s.body["spec"]["selector"].items())
    ]
    assert len(found) == 1, (
        f"expected one Service selecting {component_labels}, found {[str(s) for s in found]}"
    )
    return found[0]


def deployments_running(docs: list[Doc], words: list[str]) -> list[tuple[Doc, dict[str, Any]]]:
    """The Deployments and containers whose command line starts with `words` (e.g. ['mlflow', 'server'])."""
    return [
        (d, c)
        for d in of_kind(docs, "Deployment")
        for c in d.body["spec"]["template"]["spec"]["containers"]
        if argv(c, docs)[: len(words)] == words
    ]


def deployment_running(docs: list[Doc], words: list[str]) -> tuple[Doc, dict[str, Any]]:
    found = deployments_running(docs, words)
    assert len(found) == 1, f"expected one Deployment running {' '.join(words)}, found {len(found)}"
    return found[0]


def pod_labels(d: Doc) -> dict[str, str]:
    return d.body["spec"]["template"]["metadata"]["labels"]


def service_url(svc: Doc, scheme: str = "http") -> set[str]:
    return {f"{scheme}://{svc.name}:{p['port']}" for p in svc.body["spec"]["ports"]}


def ray_clusters(docs: list[Doc]) -> list[tuple[Doc, dict[str, Any]]]:
    """(document, RayCluster spec) for every RayCluster and every RayJob's own cluster."""
    found = [(d, d.body["spec"]) for d in of_kind(docs, "RayCluster")]
    found += [
        (d, d.body["spec"]["rayClusterSpec"])
        for d in of_kind(docs, "RayJob")
        if "rayClusterSpec" in d.body["spec"]
    ]
    return found


def ray_groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    groups = [("head", spec["headGroupSpec"])]
    return groups + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the first container runs Ray


def gpus(container: dict[str, Any]) -> int:
    limits = container.get("resources", {}).get("limits", {})
    return int(limits.get("nvidia.com/gpu", 0))


def secrets_documented() -> set[tuple[str, str]]:
    """(Secret, key) pairs of the table in infra/k8s/README.md: rows `| `name` | `key` | ...`."""
    rows = re.findall(
        r"^\|\s*`([a-z0-9.-]+)`\s*\|\s*`([A-Za-z0-9_.-]+)`\s*\|", SECRETS_DOC.read_text(), re.MULTILINE
    )
    assert rows, f"no Secret table in {SECRETS_DOC.relative_to(REPO)}"
    return set(rows)


# --- files and objects ------------------------------------------------------------------------------------------


def test_every_yaml_file_parses_and_every_document_is_a_named_object():
    files = yaml_files()
    assert files, "no manifests under infra/k8s"
    for path in files:
        parsed = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert parsed, f"{path.relative_to(REPO)} holds no document"
        if is_kustomization(path):
            continue
        for body in parsed:
            where = f"{path.relative_to(REPO)}: {str(body)[:80]}"
            assert isinstance(body, dict), where
            assert isinstance(body.get("apiVersion"), str) and body["apiVersion"], f"no apiVersion in {where}"
            assert isinstance(body.get("kind"), str) and body["kind"], f"no kind in {where}"
            name = (body.get("metadata") or {}).get("name")
            assert isinstance(name, str) and DNS_1123.match(name), f"bad or missing metadata.name in {where}"


def test_names_are_unique_per_kind(docs):
    seen: dict[tuple[str, str], Doc] = {}
    for d in docs:
        key = (d.kind, d.name)
        assert key not in seen, f"{d} and {seen[key]} share a name"
        seen[key] = d


def test_kustomization_lists_every_manifest_and_sets_namespace_and_image(docs):
    k = kustomization()
    top = {p.name for p in K8S.glob("*.yaml") if not is_kustomization(p)}
    assert set(k["resources"]) == top, (
        "kustomization.yaml must list every manifest beside it (jobs/ is apart)"
    )
    assert k["namespace"] == NAMESPACE
    assert [d.name for d in of_kind(docs, "Namespace")] == [NAMESPACE]
    assert [i["name"] for i in k["images"]] == [IMAGE], "one image, set once"
    assert "newName" not in k["images"][0] or k["images"][0]["newName"] == IMAGE
    expected_tag()
    assert not k.get("secretGenerator"), (
        "Secrets are created out of band (README.md), never generated from files"
    )
    for d in docs:  # files applied without kustomize (jobs/) name the namespace themselves
        if d.path.parent != K8S and d.kind != "Namespace":
            assert d.body["metadata"].get("namespace") == NAMESPACE, f"{d} must set namespace {NAMESPACE}"


def test_every_container_runs_the_one_image_tagged_with_the_project_version(docs):
    tag = expected_tag()
    images = {(str(pod), c["name"]): c.get("image") for pod in all_pods(docs) for c in pod.containers()}
    assert images
    wrong = {where: image for where, image in images.items() if image != f"{IMAGE}:{tag}"}
    assert not wrong, f"every container must run {IMAGE}:{tag}; these do not: {wrong}"
    if any(gpus(c) for pod in all_pods(docs) for c in pod.containers()):
        assert not tag.endswith("-cpu"), "GPU workers need a CUDA build of torch, not the -cpu image"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_image_and_the_namespace_everywhere():
    done = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    rendered = [Doc(K8S / "kustomization.yaml", d) for d in yaml.safe_load_all(done.stdout) if d]
    assert {(d.kind, d.name) for d in rendered} == {
        (d.kind, d.name) for d in load_docs() if d.path.parent == K8S
    }
    images = {c["image"] for pod in all_pods(rendered) for c in pod.containers()}
    assert images == {f"{IMAGE}:{expected_tag()}"}
    for d in rendered:
        if d.kind != "Namespace":
            assert d.body["metadata"].get("namespace") == NAMESPACE, str(d)


# --- versions ---------------------------------------------------------------------------------------------------


def test_ray_version_is_the_installed_one_in_the_clusters_and_the_image(docs):
    ray = installed_version("ray")
    clusters = ray_clusters(docs)
    assert clusters, "no RayCluster"
    for d, spec in clusters:
        assert str(spec.get("rayVersion")) == ray, (
            f"{d}: rayVersion {spec.get('rayVersion')!r}, installed {ray}"
        )
    assert dockerfile_args()["RAY_VERSION"] == ray
    assert constraints()["ray"] == ray
    assert requirement("ray").specifier.contains(ray)


def test_dockerfile_pins_what_pyproject_the_makefile_and_the_virtualenv_use():
    args = dockerfile_args()
    base = dockerfile_args().get("PYTHON_IMAGE") or dockerfile_instructions("FROM")[0]
    major_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.fullmatch(rf"python:{re.escape(major_minor)}-slim(-\w+)?", base), (
        f"base image {base!r}: Python {major_minor}-slim, as the virtualenv (Ray needs the same Python everywhere)"
    )
    assert args["TORCH_SPEC"] == makefile_torch_spec(), "TORCH_SPEC must default to the Makefile's"
    torch_pin = re.fullmatch(r"torch==([\w.]+)", args["TORCH_SPEC"])
    assert torch_pin and installed_version("torch").split("+")[0] == torch_pin.group(1)
    assert args["TORCH_INDEX_URL"].startswith("https://")
    for name, arg in (("ray", "RAY_VERSION"), ("mlflow", "MLFLOW_VERSION"), ("prefect", "PREFECT_VERSION")):
        assert args[arg] == installed_version(name), (
            f"{arg}={args[arg]}, the virtualenv has {name} {installed_version(name)}"
        )
        assert requirement(name).specifier.contains(args[arg]), (
            f"{arg}={args[arg]} outside pyproject's {requirement(name)}"
        )
    assert str(requirement("prefect").specifier) == f"=={args['PREFECT_VERSION']}"

    runs = " ".join(dockerfile_instructions("RUN"))
    assert '--index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"' in runs, (
        "torch first, by TORCH_SPEC, from its index"
    )
    assert "-c infra/docker/constraints.txt" in runs and '".[hf,server]"' in runs
    for name, arg in (
        ("ray[default,data,train]", "RAY_VERSION"),
        ("mlflow", "MLFLOW_VERSION"),
        ("prefect", "PREFECT_VERSION"),
    ):
        assert f'"{name}==${{{arg}}}"' in runs, f"the Dockerfile must install {name}==${{{arg}}}"
    assert {"hf", "server"} <= set(pyproject()["project"]["optional-dependencies"])

    env = " ".join(dockerfile_instructions("ENV"))
    assert re.search(r"\bALBERT_HOME=/data/albert\b", env)
    user = dockerfile_instructions("USER")
    assert user, "the image must name its user"
    assert image_uid() != 0, "the image must run as a non-root user"
    assert json.loads(dockerfile_instructions("ENTRYPOINT")[-1]) == ["albert"]


def test_constraints_pin_every_dependency_within_pyproject():
    pins = constraints()
    assert "torch" not in pins, "torch comes from TORCH_SPEC (CPU or CUDA build), not from constraints.txt"
    for req in project_requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} outside {req}"
    for name in PINNED_EXACTLY:
        assert pins[name] == installed_version(name), (
            f"constraints.txt {name}=={pins[name]}, virtualenv has {installed_version(name)}"
        )


# --- credentials ------------------------------------------------------------------------------------------------


def test_no_credentials_in_manifests(docs):
    for d in docs:
        if d.kind == "Secret":
            assert not d.body.get("data") and not d.body.get("stringData"), (
                f"{d}: Secrets with values stay out of git"
            )
        if d.kind == "ConfigMap":
            leaked = [k for k in (d.body.get("data") or {}) if SECRET_LIKE.search(k)]
            assert not leaked, f"{d}: {leaked} look like credentials; put them in a Secret"
    for pod in all_pods(docs):
        for c in pod.containers():
            for item in c.get("env", []):
                if SECRET_LIKE.search(item["name"]):
                    assert "value" not in item and "secretKeyRef" in (item.get("valueFrom") or {}), (
                        f"{pod} {c['name']}: {item['name']} must come from a Secret (valueFrom.secretKeyRef)"
                    )


def test_no_credentials_in_any_infra_file():
    files = [p for p in (*K8S.rglob("*"), *DOCKER.rglob("*")) if p.is_file()]
    assert DOCKERFILE in files
    for path in files:
        text = path.read_text()
        for match in URI_WITH_PASSWORD.finditer(text):
            assert PLACEHOLDER.match(match.group(1)), (
                f"{path.relative_to(REPO)}: a password in {match.group(0)!r}; use a Secret (or a <placeholder> in docs)"
            )
        assert not AWS_ACCESS_KEY_ID.search(text), f"{path.relative_to(REPO)}: an AWS access key id"


def test_every_secret_reference_is_documented_and_every_documented_secret_used(docs):
    documented = secrets_documented()
    names = {name for name, _ in documented}
    used: set[tuple[str, str]] = set()
    for pod in all_pods(docs):
        for c in pod.containers():
            for item in c.get("env", []):
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in names, (
                        f"{pod}: undocumented Secret {source['secretRef']}"
                    )
        for v in pod.spec.get("volumes", []):
            if "secret" in v:
                assert v["secret"]["secretName"] in names, f"{pod}: undocumented Secret volume {v['secret']}"
        for s in pod.spec.get("imagePullSecrets", []):
            assert s["name"] in names, f"{pod}: undocumented imagePullSecret {s['name']}"
    assert used, "no secretKeyRef at all: where do the database and S3 credentials come from?"
    assert used <= documented, (
        f"Secret keys not in the table of {SECRETS_DOC.name}: {sorted(used - documented)}"
    )
    assert documented <= used, f"documented but unused Secret keys: {sorted(documented - used)}"


# --- wiring -----------------------------------------------------------------------------------------------------


def test_services_select_pods_that_exist(docs):
    templates = [pod_labels(d) for d in of_kind(docs, "Deployment")]
    for svc in of_kind(docs, "Service"):
        selector = svc.body["spec"]["selector"]
        assert any(all(t.get(k) == v for k, v in selector.items()) for t in templates), (
            f"{svc} selects no pod"
        )
        for d in of_kind(docs, "Deployment"):
            if all(pod_labels(d).get(k) == v for k, v in selector.items()):
                ports = {
                    p["name"]: p["containerPort"]
                    for c in d.body["spec"]["template"]["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                for port in svc.body["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    assert target in ports or target in ports.values(), (
                        f"{svc}: targetPort {target} not on {d}"
                    )
    for d in of_kind(docs, "Deployment"):
        selector = d.body["spec"]["selector"]["matchLabels"]
        assert all(pod_labels(d).get(k) == v for k, v in selector.items()), (
            f"{d}: selector does not match its pods"
        )


def test_pods_run_as_non_root(docs):
    for pod in all_pods(docs):
        ctx = pod.spec.get("securityContext") or {}
        assert ctx.get("runAsNonRoot") is True, f"{pod}: runAsNonRoot"
        assert ctx.get("runAsUser") == image_uid(), (
            f"{pod}: runAsUser must be the image's user ({image_uid()})"
        )


def test_ray_pods_share_albert_home_and_reach_mlflow(docs):
    mlflow_deployment, _ = deployment_running(docs, ["mlflow", "server"])
    mlflow_urls = service_url(service_for(docs, pod_labels(mlflow_deployment)))
    pvcs = {d.name: d for d in of_kind(docs, "PersistentVolumeClaim")}
    home = re.search(r"\bALBERT_HOME=(\S+)", " ".join(dockerfile_instructions("ENV"))).group(1)
    for d, spec in ray_clusters(docs):
        for group_name, group in ray_groups(spec):
            where = f"{d} group {group_name}"
            pod = Pod(d, group_name, group["template"]["spec"])
            c = ray_container(group)
            env = container_env(c, docs)
            assert env.get("ALBERT_HOME") == home, (
                f"{where}: ALBERT_HOME {env.get('ALBERT_HOME')!r}, image has {home}"
            )
            volume = volumes(pod).get(mounts(c).get(home, ""))
            assert volume and "persistentVolumeClaim" in volume, f"{where}: no PVC mounted at {home}"
            claim = pvcs.get(volume["persistentVolumeClaim"]["claimName"])
            assert claim, f"{where}: PVC {volume['persistentVolumeClaim']['claimName']} is not defined"
            assert "ReadWriteMany" in claim.body["spec"]["accessModes"], (
                f"{claim}: pods on many nodes share it"
            )
            shm = volumes(pod).get(mounts(c).get("/dev/shm", ""))
            assert shm and (shm.get("emptyDir") or {}).get("medium") == "Memory", (
                f"{where}: /dev/shm in memory"
            )
            assert env.get("MLFLOW_TRACKING_URI") in mlflow_urls, (
                f"{where}: MLFLOW_TRACKING_URI {env.get('MLFLOW_TRACKING_URI')!r}, the MLflow Service is {mlflow_urls}"
            )


def test_raycluster_has_a_head_a_cpu_group_and_a_gpu_group_that_can_run_nccl(docs):
    (cluster,) = of_kind(docs, "RayCluster")
    workers = cluster.body["spec"]["workerGroupSpecs"]
    assert any(gpus(ray_container(g)) == 0 for g in workers), "no CPU worker group"
    assert any(gpus(ray_container(g)) > 0 for g in workers), "no GPU worker group"
    assert gpus(ray_container(cluster.body["spec"]["headGroupSpec"])) == 0, "the head holds no GPU"
    for d, spec in ray_clusters(docs):
        for group_name, group in ray_groups(spec):
            if group_name != "head":
                assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (
                    f"{d} group {group_name}"
                )
            c = ray_container(group)
            if not gpus(c):
                continue
            where = f"{d} group {group_name}"
            resources = c["resources"]
            assert int(resources["limits"]["nvidia.com/gpu"]) == 1, f"{where}: one GPU per pod"
            assert int(resources.get("requests", {}).get("nvidia.com/gpu", 1)) == 1, (
                f"{where}: requests = limits"
            )
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), (
                f"{where}: tolerate GPU node taints"
            )
            env = container_env(c, docs)
            for var in ("NCCL_SOCKET_IFNAME", "NCCL_DEBUG", "NCCL_IB_DISABLE"):
                assert isinstance(env.get(var), str) and env[var], f"{where}: {var} is not set"
            assert env["NCCL_DEBUG"] in ("VERSION", "WARN", "INFO"), (
                f"{where}: NCCL_DEBUG={env['NCCL_DEBUG']}"
            )


def test_rayjob_runs_albert_train_on_its_own_gpu_cluster(docs):
    from flows.cli import build_parser
    from training.config import TrainConfig

    jobs = of_kind(docs, "RayJob")
    assert jobs, "no RayJob"
    for job in jobs:
        spec = job.body["spec"]
        assert spec.get("rayClusterSpec") and not spec.get("clusterSelector"), (
            f"{job}: shutdownAfterJobFinishes only tears down a cluster the RayJob made itself"
        )
        assert spec.get("shutdownAfterJobFinishes") is True, f"{job}: shutdownAfterJobFinishes"
        assert isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] > 0
        words = shlex.split(spec["entrypoint"])
        shards = next(w for i, w in enumerate(words) if i and words[i - 1] == "--shards")
        if "$" in shards:  # taken from the submitter's environment: it must be there
            var = re.search(r"\$\{?(\w+)", shards).group(1)
            submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
            assert var in {e["name"] for e in submitter.get("env", [])}, (
                f"{job}: the submitter does not set {var}"
            )
            words = [("0123abcd" if w == shards else w) for w in words]
        if words[:3] == ["python", "-m", "flows.cli"]:
            words = ["albert", *words[3:]]
        assert words[:2] == ["albert", "train"], f"{job}: entrypoint {spec['entrypoint']!r}"
        args = build_parser().parse_args(words[1:])  # the real CLI: an unknown flag exits here
        assert args.preset == "base" and args.precision == "bf16" and args.json
        given = json.loads(args.config_json or "{}")
        given |= {
            f.name: getattr(args, f.name)
            for f in fields(TrainConfig)
            if getattr(args, f.name, None) is not None
        }
        cfg = TrainConfig.from_dict(given)
        gpu_pods = sum(
            g["replicas"] * gpus(ray_container(g)) for g in spec["rayClusterSpec"].get("workerGroupSpecs", [])
        )
        if gpu_pods:
            assert cfg.use_gpu, f"{job}: a GPU cluster, but the run does not use GPUs (use_gpu)"
            assert cfg.workers == gpu_pods, f"{job}: --workers {cfg.workers} for {gpu_pods} GPUs"


def test_prefect_worker_reaches_the_api_the_ray_jobs_api_mlflow_and_albert_home(docs):
    from flows.cli import build_parser

    worker, container = deployment_running(docs, ["prefect", "worker", "start"])
    words = argv(container, docs)
    pool = build_parser().parse_args(["flows", "deploy"]).work_pool
    assert flag_value(words, "--pool") == pool, (
        f"the worker must serve the pool `albert flows deploy` uses ({pool})"
    )
    assert flag_value(words, "--type") == "process"
    for init in worker.body["spec"]["template"]["spec"].get("initContainers", []):
        text = " ".join(argv(init, docs))
        if "flows deploy" in text:
            assert f"--work-pool {pool}" in text, f"{worker}: registers deployments on another pool"

    env = container_env(container, docs)
    api = next(e for e in container.get("env", []) if e["name"] == "PREFECT_API_URL")
    assert "configMapKeyRef" in api.get("valueFrom", {}), "PREFECT_API_URL comes from a ConfigMap"
    prefect_servers = deployments_running(docs, ["prefect", "server", "start"])  # none: Prefect Cloud
    for server, _ in prefect_servers:
        urls = {u + "/api" for u in service_url(service_for(docs, pod_labels(server)))}
        assert env["PREFECT_API_URL"] in urls, (
            f"PREFECT_API_URL {env['PREFECT_API_URL']!r}, the server is {urls}"
        )

    (cluster,) = of_kind(docs, "RayCluster")
    head = ray_container(cluster.body["spec"]["headGroupSpec"])
    dashboard = next(
        (p["containerPort"] for p in head.get("ports", []) if p.get("name") == "dashboard"), 8265
    )
    assert dashboard == 8265
    jobs_api = (
        f"http://{cluster.name}-head-svc:{dashboard}"  # KubeRay names the head Service <cluster>-head-svc
    )
    assert env.get("ALBERT_RAY_ADDRESS") == jobs_api, (
        f"ALBERT_RAY_ADDRESS {env.get('ALBERT_RAY_ADDRESS')!r}, want {jobs_api}"
    )

    mlflow_deployment, _ = deployment_running(docs, ["mlflow", "server"])
    assert env.get("MLFLOW_TRACKING_URI") in service_url(service_for(docs, pod_labels(mlflow_deployment)))
    home = env.get("ALBERT_HOME")
    pod = Pod(worker, "spec.template.spec", worker.body["spec"]["template"]["spec"])
    volume = volumes(pod).get(mounts(container).get(home or "", ""))
    assert volume and "persistentVolumeClaim" in volume, f"the worker must mount the shared volume at {home}"


def test_no_pod_gives_ray_init_an_http_address(docs):
    """data_jobs.ray_runtime.ensure_ray passes $RAY_ADDRESS to ray.init, which rejects the Jobs API's http:// URL."""
    for pod in all_pods(docs):
        for c in pod.containers():
            value = container_env(c, docs).get("RAY_ADDRESS")
            assert not (isinstance(value, str) and value.startswith(("http://", "https://"))), (
                f"{pod} {c['name']}: RAY_ADDRESS={value}; name the Jobs API ALBERT_RAY_ADDRESS"
            )


def test_mlflow_server_uses_postgres_and_s3_from_secrets_and_accepts_its_service_name(docs):
    deployment, container = deployment_running(docs, ["mlflow", "server"])
    words = argv(container, docs)
    env = container_env(container, docs)
    assert "--serve-artifacts" in words, "clients upload artifacts through the server, without S3 credentials"
    assert flag_value(words, "--host") == "0.0.0.0"
    port = int(flag_value(words, "--port") or 5000)
    assert port in {p["containerPort"] for p in container.get("ports", [])}
    assert flag_value(words, "--backend-store-uri") is None, (
        "the database URI holds a password: env from a Secret"
    )
    assert isinstance(env.get("MLFLOW_BACKEND_STORE_URI"), SecretRef), (
        "MLFLOW_BACKEND_STORE_URI from a Secret"
    )
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert isinstance(env.get(var), SecretRef), f"{var} from a Secret"
    artifacts = flag_value(words, "--artifacts-destination") or env.get("MLFLOW_ARTIFACTS_DESTINATION")
    assert isinstance(artifacts, str) and re.fullmatch(r"s3://[a-z0-9.-]+(/\S*)?", artifacts), artifacts

    svc = service_for(docs, pod_labels(deployment))
    allowed = str(env.get("MLFLOW_SERVER_ALLOWED_HOSTS", "")).split(",")
    for p in svc.body["spec"]["ports"]:
        for host in (
            svc.name,
            f"{svc.name}:{p['port']}",
            f"{svc.name}.{NAMESPACE}.svc.cluster.local:{p['port']}",
        ):
            assert any(fnmatch.fnmatch(host, a.strip()) for a in allowed if a.strip()), (
                f"MLflow rejects Host {host!r} (MLFLOW_SERVER_ALLOWED_HOSTS={allowed}); in-cluster clients use it"
            )
