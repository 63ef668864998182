"""The production files parse and say what the docs say: the Ray cluster launcher config
(checked by Ray's own validator), the KubeRay RayCluster and its image, and the compose
file of the shared services. No docker, kubectl or cloud account needed.

Each checker returns a list of problems; every checker also gets a broken copy, so a
regression in the files (or a checker that accepts anything) fails here.
"""

from __future__ import annotations

import copy
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "infra" / "cluster"
LAUNCHER = CLUSTER / "ray-cluster.yaml"
KUBERAY = CLUSTER / "kuberay-raycluster.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
COMPOSE = ROOT / "infra" / "compose.yaml"
COMPOSE_ENV = ROOT / "infra" / "compose.env.example"

RAY_VERSION = version("ray")

#: Names whose values are credentials: they must never be written inline.
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL", re.IGNORECASE)
#: `${VAR}`, `${VAR?msg}`, `${VAR:?msg}`, or an empty default (`${VAR:-}`): no value inline.
SUBSTITUTION_ONLY = re.compile(r"^\$\{[A-Za-z_]\w*(?:(?::?\?)[^}]*|:?-)?\}$")
#: `scheme://user:password@`: the password part must be a substitution.
URL_CREDENTIALS = re.compile(r"://[^/\s:@]+:([^@\s/]+)@")
_VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?:(:?[-?+])([^}]*))?\}")


def _major_minor(v: str) -> str:
    return ".".join(v.split(".")[:2])


def _locked_python() -> str:
    """The Python the lock was compiled for (its header names `--python-version X.Y`)."""
    m = re.search(r"--python-version\s+(\d+\.\d+)", (ROOT / "requirements.lock").read_text())
    assert m, "requirements.lock does not name the Python it was compiled for"
    return m.group(1)


PYTHON = _locked_python()


def _strings(node):
    """Every string in a parsed YAML tree (values, list items, keys)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def inline_url_credentials(node, where: str) -> list[str]:
    return [
        f"{where}: inline password in URL {s!r}"
        for s in _strings(node)
        for pw in URL_CREDENTIALS.findall(s)
        if not SUBSTITUTION_ONLY.match(pw)
    ]


def _settings_env_names() -> set[str]:
    """Every SAE_* variable infra/settings.py reads (field names and their aliases)."""
    from infra.settings import Settings

    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None) or ([alias] if alias else [])
        names.add(f"SAE_{name.upper()}")
        names.update(str(c).upper() for c in choices if isinstance(c, str))
    return names


def unknown_sae_names(names, where: str) -> list[str]:
    known = _settings_env_names()
    return [
        f"{where}: {n} is not a setting of infra/settings.py"
        for n in names
        if n.startswith("SAE_") and n not in known
    ]


# --- Ray cluster launcher ------------------------------------------------------------


def ray_validation_error(config: dict) -> str | None:
    """What `ray up` checks before it touches the cloud: Ray's defaults merged in, then
    Ray's JSON schema (ray-schema.json) and its cross-field rules."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # jsonschema.ValidationError, ValueError, KeyError
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


def _docker_env(run_options: list[str]) -> dict[str, str]:
    env = {}
    for opt in run_options:
        m = re.match(r"^(?:--env|-e)[ =](\w+)=(.*)$", opt.strip())
        if m:
            env[m.group(1)] = m.group(2)
    return env


def assert_reports(checker, doc, mutate, expected: str) -> None:
    """``checker`` names ``expected`` in a problem once ``mutate`` breaks a copy of ``doc``."""
    broken = copy.deepcopy(doc)
    mutate(broken)
    problems = checker(broken)
    assert any(expected in p for p in problems), problems


#: Ray's default token path in the rayproject images (user `ray`).
RAY_TOKEN_MOUNT = "/home/ray/.ray/auth_token"


def launcher_problems(config: dict, repo_root: Path = ROOT) -> list[str]:
    problems = []
    docker = config.get("docker") or {}
    images = [docker.get(k) for k in ("image", "head_image", "worker_image") if docker.get(k)]
    if not images:
        problems.append("docker.image: every node should run the same Ray image")
    for image in images:
        if not image.startswith(f"rayproject/ray:{RAY_VERSION}-py{PYTHON.replace('.', '')}"):
            problems.append(f"docker image {image!r} is not Ray {RAY_VERSION} on Python {PYTHON}")

    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    if head not in types:
        problems.append(f"head_node_type {head!r} is not a node type")
    gpu_types = [
        name
        for name, t in types.items()
        if name != head and (t.get("resources") or {}).get("GPU", 0) >= 1
    ]
    if not gpu_types:
        problems.append("no worker node type offers a GPU")
    for name in gpu_types:
        t = types[name]
        if not 0 <= t.get("min_workers", 0) <= t.get("max_workers", 0):
            problems.append(f"{name}: needs 0 <= min_workers <= max_workers, max >= 1")
        if t.get("max_workers", 0) < 1:
            problems.append(f"{name}: max_workers must be >= 1")

    # The project reaches the nodes from the checkout `ray up` runs in.
    mounts = config.get("file_mounts") or {}
    project = [
        remote
        for remote, local in mounts.items()
        if (repo_root / local / "pyproject.toml").is_file()
        and (repo_root / local / "requirements.lock").is_file()
    ]
    if not project:
        problems.append("file_mounts: the repository root is not mounted on the nodes")
    setup = "\n".join(config.get("setup_commands") or [])
    for remote in project[:1]:
        if f"{remote}/requirements.lock" not in setup:
            problems.append("setup_commands: the locked dependencies are not installed")
        if not re.search(rf"pip install [^\n]*(-e )?{re.escape(remote)}\s*$", setup, re.M):
            problems.append("setup_commands: the project itself is not installed")

    env = _docker_env(docker.get("run_options") or [])
    for name in env:
        if SECRET_NAME.search(name):
            problems.append(f"docker env {name}: no credentials here (instance profiles)")
    if "SAE_STORE" not in env or not env["SAE_STORE"].startswith("s3://"):
        problems.append("docker env: SAE_STORE=s3://... missing")
    region = (config.get("provider") or {}).get("region")
    if env.get("AWS_DEFAULT_REGION") != region:
        problems.append(f"docker env: AWS_DEFAULT_REGION is not the provider's {region!r}")
    if env.get("RAY_AUTH_MODE") != "token":
        problems.append("docker env: RAY_AUTH_MODE=token missing: the cluster takes any client")
    if RAY_TOKEN_MOUNT not in mounts:
        problems.append(f"file_mounts: no Ray token at {RAY_TOKEN_MOUNT}")
    problems += unknown_sae_names(env, "docker env")
    problems += inline_url_credentials(config, "launcher")
    return problems


@pytest.fixture(scope="module")
def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


def test_launcher_config_passes_rays_validator(launcher):
    assert ray_validation_error(launcher) is None


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.update(setup_comands=c.pop("setup_commands")), id="top-key"),
        pytest.param(lambda c: c["available_node_types"]["gpu"].pop("node_config"), id="no-node"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu"].update(min_worker=1), id="node-key"
        ),
        pytest.param(lambda c: c.update(max_workers=-1), id="negative-max"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu"].update(min_workers=99), id="min>max"
        ),
        pytest.param(lambda c: c.update(head_node_type="nope"), id="no-head-type"),
    ],
)
def test_rays_validator_catches_a_broken_config(launcher, mutate):
    broken = copy.deepcopy(launcher)
    mutate(broken)
    assert ray_validation_error(broken) is not None


def test_launcher_installs_the_project_on_gpu_workers(launcher):
    assert launcher_problems(launcher) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["docker"].update(image="rayproject/ray:2.9.0-py311-gpu"), "not Ray"),
        (lambda c: c["available_node_types"]["gpu"]["resources"].pop("GPU"), "offers a GPU"),
        (lambda c: c.update(file_mounts={}), "not mounted"),
        (lambda c: c["setup_commands"].pop(-2), "project itself"),
        (
            lambda c: c["docker"]["run_options"].append("--env AWS_SECRET_ACCESS_KEY=abc"),
            "no credentials",
        ),
        (lambda c: c["docker"]["run_options"].append("--env SAE_STOER=s3://b/x"), "SAE_STOER"),
        (lambda c: c["provider"].update(region="eu-west-1"), "AWS_DEFAULT_REGION"),
        (lambda c: c["docker"]["run_options"].remove("--env RAY_AUTH_MODE=token"), "RAY_AUTH"),
        (lambda c: c["file_mounts"].pop(RAY_TOKEN_MOUNT), "Ray token"),
        (
            lambda c: c["setup_commands"].append("curl https://u:hunter2@example.com/x"),
            "inline password",
        ),
    ],
)
def test_launcher_checker_reports_problems(launcher, mutate, expected):
    assert_reports(launcher_problems, launcher, mutate, expected)


# --- KubeRay ---------------------------------------------------------------------------


def _containers(cluster: dict):
    spec = cluster.get("spec") or {}
    groups = [("head", spec.get("headGroupSpec") or {})]
    groups += [(g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs") or []]
    for name, group in groups:
        for c in ((group.get("template") or {}).get("spec") or {}).get("containers") or []:
            yield name, group, c


def kuberay_problems(docs: list[dict]) -> list[str]:
    clusters = [d for d in docs if d and d.get("kind") == "RayCluster"]
    if len(clusters) != 1:
        return [f"expected one RayCluster, found {len(clusters)}"]
    cluster = clusters[0]
    problems = []
    if cluster.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {cluster.get('apiVersion')!r} is not ray.io/v1")
    spec = cluster.get("spec") or {}
    if str(spec.get("rayVersion")) != RAY_VERSION:
        problems.append(f"rayVersion {spec.get('rayVersion')!r} is not {RAY_VERSION}")
    if (spec.get("authOptions") or {}).get("mode") != "token":
        problems.append("authOptions.mode is not token: the cluster takes any client")
    if not spec.get("headGroupSpec"):
        problems.append("no headGroupSpec")
    if not spec.get("workerGroupSpecs"):
        problems.append("no workerGroupSpecs")

    gpu_groups = 0
    for name, group, c in _containers(cluster):
        tag = str(c.get("image", "")).rpartition(":")[2]
        if not tag.startswith(f"{RAY_VERSION}-py{PYTHON.replace('.', '')}"):
            problems.append(f"{name}: image {c.get('image')!r} is not Ray {RAY_VERSION}")
        limits = (c.get("resources") or {}).get("limits") or {}
        gpus = int(limits.get("nvidia.com/gpu", 0))
        start = group.get("rayStartParams") or {}
        if gpus:
            gpu_groups += name != "head"
            if str(start.get("num-gpus")) != str(gpus):
                problems.append(f"{name}: rayStartParams num-gpus is not the GPU limit {gpus}")
        if name != "head" and not (
            0 <= group.get("minReplicas", 0) <= group.get("maxReplicas", -1)
        ):
            problems.append(f"{name}: needs 0 <= minReplicas <= maxReplicas")
    if not gpu_groups:
        problems.append("no worker group with an nvidia.com/gpu limit")
    return problems


def k8s_secret_problems(docs: list[dict]) -> list[str]:
    problems = []
    for d in docs:
        if not d:
            continue
        kind = d.get("kind")
        if kind == "Secret" and (d.get("data") or d.get("stringData")):
            problems.append("a Secret with inline data")
        if kind == "ConfigMap":
            data = d.get("data") or {}
            problems += [f"ConfigMap key {k} looks secret" for k in data if SECRET_NAME.search(k)]
            problems += unknown_sae_names(data, "ConfigMap")
        if kind == "RayCluster":
            for name, _, c in _containers(d):
                for e in c.get("env") or []:
                    if not SECRET_NAME.search(e.get("name", "")):
                        continue
                    if "value" in e or "secretKeyRef" not in (e.get("valueFrom") or {}):
                        problems.append(f"{name}: env {e['name']} is not from a secretKeyRef")
        problems += inline_url_credentials(d, str(kind))
    return problems


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    froms = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), f) for f in
             re.findall(r"^FROM\s+(\S+)", text, re.M)]  # fmt: skip
    want = f"rayproject/ray:{RAY_VERSION}-py{PYTHON.replace('.', '')}"
    if not froms or not froms[-1].startswith(want):
        problems.append(f"FROM {froms} is not {want}-*")
    if not re.search(r"^COPY\b.*\brequirements\.lock\b", text, re.M):
        problems.append("requirements.lock is not copied into the image")
    if not re.search(r"pip install\b.*-r\s+\S*requirements", text):
        problems.append("the locked dependencies are not installed")
    if not re.search(r"pip install\b[^\n]*--no-deps\s+\.(\s|$)", text):
        problems.append("the project itself is not installed")
    return problems


@pytest.fixture(scope="module")
def kuberay() -> list[dict]:
    return list(yaml.safe_load_all(KUBERAY.read_text()))


def test_kuberay_cluster_has_a_head_and_gpu_workers_on_the_locked_ray(kuberay):
    assert kuberay_problems(kuberay) == []


def test_kuberay_takes_credentials_from_secrets_only(kuberay):
    assert k8s_secret_problems(kuberay) == []


def test_kuberay_image_installs_the_project():
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def _cluster(docs):
    return next(d for d in docs if d.get("kind") == "RayCluster")


def _gpu_group(docs):
    return next(g for g in _cluster(docs)["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")


def _gpu_container(docs):
    return _gpu_group(docs)["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: _cluster(d).update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
        (lambda d: _cluster(d)["spec"].update(rayVersion="2.9.0"), "rayVersion"),
        (lambda d: _cluster(d)["spec"].pop("headGroupSpec"), "headGroupSpec"),
        (lambda d: _cluster(d)["spec"].pop("authOptions"), "authOptions"),
        (
            lambda d: _gpu_container(d).update(image="rayproject/ray:2.9.0-py311-gpu"),
            "is not Ray",
        ),
        (
            lambda d: _gpu_container(d)["resources"]["limits"].pop("nvidia.com/gpu"),
            "nvidia.com/gpu",
        ),
        (lambda d: _gpu_group(d)["rayStartParams"].update({"num-gpus": "2"}), "num-gpus"),
        (lambda d: _gpu_group(d).update(minReplicas=9), "minReplicas"),
        (lambda d: d.append(copy.deepcopy(_cluster(d))), "expected one RayCluster"),
    ],
)
def test_kuberay_checker_reports_problems(kuberay, mutate, expected):
    assert_reports(kuberay_problems, kuberay, mutate, expected)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: _gpu_container(d)["env"].append({"name": "HF_TOKEN", "value": "hf_x"}),
            "HF_TOKEN",
        ),
        (
            lambda d: _gpu_container(d)["env"].append(
                {"name": "DB_PASSWORD", "valueFrom": {"configMapKeyRef": {"name": "c"}}}
            ),
            "DB_PASSWORD",
        ),
        (
            lambda d: next(x for x in d if x["kind"] == "ConfigMap")["data"].update(
                AWS_SECRET_ACCESS_KEY="abc"
            ),
            "looks secret",
        ),
        (
            lambda d: next(x for x in d if x["kind"] == "ConfigMap")["data"].update(
                MLFLOW_TRACKING_URI="http://u:pw@mlflow:5000"
            ),
            "inline password",
        ),
        (
            lambda d: d.append({"kind": "Secret", "stringData": {"OPENAI_API_KEY": "sk"}}),
            "inline data",
        ),
        (
            lambda d: next(x for x in d if x["kind"] == "ConfigMap")["data"].update(
                SAE_STOER="s3://b/x"
            ),
            "SAE_STOER",
        ),
    ],
)
def test_k8s_secret_checker_reports_problems(kuberay, mutate, expected):
    assert_reports(k8s_secret_problems, kuberay, mutate, expected)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("ARG RAY_IMAGE=rayproject/ray:", "ARG RAY_IMAGE=rayproject/ray:1.0.0-", "FROM"),
        ("COPY --chown=ray:users requirements.lock ./\n", "", "requirements.lock"),
        ("--no-deps .", "--no-deps sae", "project itself"),
    ],
)
def test_dockerfile_checker_reports_problems(old, new, expected):
    text = DOCKERFILE.read_text()
    assert old in text
    problems = dockerfile_problems(text.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


# --- Compose: the shared services ----------------------------------------------------

#: Published ports as the compose header and the README document them (host = container).
DOCUMENTED_PORTS = {"prefect-server": {4200}, "mlflow": {5000}, "minio": {9000, 9001}}
NEEDS_HEALTHCHECK = ("postgres", "minio", "prefect-server", "mlflow")
#: (service, dependency) -> the condition the service must wait for.
REQUIRED_ORDER = {
    ("prefect-server", "postgres"): "service_healthy",
    ("mlflow", "postgres"): "service_healthy",
    ("mlflow", "minio-setup"): "service_completed_successfully",
    ("minio-setup", "minio"): "service_healthy",
}


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?err}` with the given env (empty)."""
    env = env or {}

    def sub(m: re.Match) -> str:
        name, op, arg = m[1], m[2], m[3]
        have = env.get(name)
        if op in (":-", "-"):
            return have if have or (op == "-" and name in env) else arg
        return have or ""

    return _VAR.sub(sub, value.replace("$$", "\0")).replace("\0", "$")


def _published(port) -> tuple[str | None, int | None, int]:
    """(host ip, published port, container port) of a short or long port entry."""
    if isinstance(port, dict):
        published = port.get("published")
        return port.get("host_ip"), int(published) if published else None, int(port["target"])
    text = interpolate(str(port)).split("/")[0]
    parts = text.rsplit(":", 2)
    if len(parts) == 1:
        return None, None, int(parts[0])
    if len(parts) == 2:
        return None, int(parts[0]), int(parts[1])
    return parts[0].strip("[]") or None, int(parts[1]), int(parts[2])


def compose_port_problems(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    for name, svc in services.items():
        seen = set()
        for port in svc.get("ports") or []:
            host, published, target = _published(port)
            if host != "127.0.0.1":
                problems.append(f"{name}: port {port!r} is not bound to 127.0.0.1 by default")
            if published != target:
                problems.append(f"{name}: port {port!r} publishes {target} as {published}")
            seen.add(published)
        if seen != DOCUMENTED_PORTS.get(name, set()):
            problems.append(f"{name}: publishes {sorted(seen)}, documented {DOCUMENTED_PORTS}")
    for name in DOCUMENTED_PORTS.keys() - services.keys():
        problems.append(f"service {name} is missing")
    return problems


def _env_items(svc: dict) -> list[tuple[str, str]]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return [(e.partition("=")[0], e.partition("=")[2]) for e in env]
    return [(k, "" if v is None else str(v)) for k, v in env.items()]


def compose_secret_problems(compose: dict) -> list[str]:
    problems = []
    for name, svc in (compose.get("services") or {}).items():
        for key, value in _env_items(svc):
            if SECRET_NAME.search(key) and not SUBSTITUTION_ONLY.match(value):
                problems.append(f"{name}: {key} is not a ${{VAR}} substitution")
        problems += inline_url_credentials(svc, name)
    return problems


def _healthcheck_on(svc: dict) -> bool:
    hc = svc.get("healthcheck") or {}
    test = hc.get("test")
    if hc.get("disable") or not test:
        return False
    return (test[0] if isinstance(test, list) else test) != "NONE"


def _depends_on(svc: dict) -> dict[str, dict]:
    deps = svc.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else deps


def compose_health_problems(compose: dict) -> list[str]:
    services = compose.get("services") or {}
    problems = [
        f"{name}: no healthcheck"
        for name in NEEDS_HEALTHCHECK
        if not _healthcheck_on(services.get(name) or {})
    ]
    for name, svc in services.items():
        if isinstance(svc.get("depends_on"), list):
            problems.append(f"{name}: depends_on without conditions starts too early")
        for dep, how in _depends_on(svc).items():
            cond = (how or {}).get("condition")
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            elif cond not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{name}: waits for {dep} with condition {cond!r}")
            elif cond == "service_healthy" and not _healthcheck_on(services[dep]):
                problems.append(f"{name}: waits for {dep} to be healthy, it has no healthcheck")
    for (name, dep), cond in REQUIRED_ORDER.items():
        got = (_depends_on(services.get(name) or {}).get(dep) or {}).get("condition")
        if got != cond:
            problems.append(f"{name} must wait for {dep}: {cond}, has {got!r}")
    return problems


def compose_version_problems(compose: dict) -> list[str]:
    problems = []
    services = compose.get("services") or {}
    prefect = interpolate(str((services.get("prefect-server") or {}).get("image", "")))
    m = re.fullmatch(r"prefecthq/prefect:(\d+\.\d+)[\d.]*-python(\d+\.\d+)", prefect)
    if not m or m[1] != _major_minor(version("prefect")) or m[2] != PYTHON:
        problems.append(f"prefect image {prefect!r} is not prefect {version('prefect')}")
    mlflow = services.get("mlflow") or {}
    tag = interpolate(str(mlflow.get("image", ""))).rpartition(":")[2]
    inline = str((mlflow.get("build") or {}).get("dockerfile_inline", ""))
    pins = re.findall(r"mlflow==([\d.]+)", inline)
    if not pins:
        problems.append("mlflow build: no mlflow==X.Y.Z pin")
    for found in [tag, *pins]:
        if _major_minor(found) != _major_minor(version("mlflow")):
            problems.append(f"mlflow image/pin {found!r} is not mlflow {version('mlflow')}")
    return problems


def _compose_vars(text: str) -> tuple[set[str], set[str]]:
    """(variables compose needs from the env file, every variable it reads)."""
    uncommented = "\n".join(line.split(" #")[0] for line in text.splitlines()
                            if not line.lstrip().startswith("#"))  # fmt: skip
    uncommented = uncommented.replace("$$", "")
    found = _VAR.findall(uncommented)
    required = {n for n, op, _ in found if op in ("", "?", ":?")}
    return required, {n for n, _, _ in found}


def env_example_problems(compose_text: str, example: str) -> list[str]:
    required, used = _compose_vars(compose_text)
    listed = {}
    for line in example.splitlines():
        m = re.match(r"^#?\s*([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            listed[m[1]] = (m[2], line.lstrip().startswith("#"))
    problems = [f"{v} is required by compose.yaml but not in the example" for v in required
                if v not in listed or listed[v][1]]  # fmt: skip
    problems += [f"{v} is in the example but compose.yaml never reads it" for v in listed
                 if v not in used]  # fmt: skip
    problems += [
        f"{v}: the example holds a value, not a change-me placeholder"
        for v, (value, _) in listed.items()
        if SECRET_NAME.search(v) and "change-me" not in value
    ]
    return problems


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_has_the_shared_services(compose):
    assert {"postgres", "minio", "minio-setup", "prefect-server", "mlflow"} <= set(
        compose["services"]
    )


def test_compose_prefect_server_starts_through_the_scheduler_fix(compose):
    """The same entry point as the local stack's servers (infra/prefect_server.py), mounted
    from the repository: otherwise no cron run is ever created under SQLAlchemy 2.1."""
    service = compose["services"]["prefect-server"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in service["volumes"])
    script = mounts["./prefect_server.py"]
    assert (COMPOSE.parent / "prefect_server.py").is_file()
    assert service["command"][:4] == ["python", script, "server", "start"]


def test_compose_ports_are_local_by_default_and_as_documented(compose):
    assert compose_port_problems(compose) == []
    # The header comment documents the same ports.
    header = re.findall(r"^#\s+(\d{4,5})\s{2,}\S", COMPOSE.read_text(), re.M)
    assert {int(p) for p in header} == set().union(*DOCUMENTED_PORTS.values())


def test_compose_ports_follow_bind_address_when_set(compose):
    port = compose["services"]["mlflow"]["ports"][0]
    assert interpolate(port, {"BIND_ADDRESS": "10.0.1.5"}) == "10.0.1.5:5000:5000"


def test_compose_has_no_inline_secrets(compose):
    assert compose_secret_problems(compose) == []


def test_compose_healthchecks_and_start_order(compose):
    assert compose_health_problems(compose) == []


def test_compose_images_match_the_locked_versions(compose):
    assert compose_version_problems(compose) == []


def test_env_example_lists_what_compose_needs():
    assert env_example_problems(COMPOSE.read_text(), COMPOSE_ENV.read_text()) == []


def _svc(c, name):
    return c["services"][name]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: _svc(c, "mlflow").update(ports=["5000:5000"]), "not bound to 127.0.0.1"),
        (lambda c: _svc(c, "mlflow").update(ports=["0.0.0.0:5000:5000"]), "not bound"),
        (
            lambda c: _svc(c, "mlflow").update(ports=["${BIND_ADDRESS:-0.0.0.0}:5000:5000"]),
            "not bound",
        ),
        (lambda c: _svc(c, "mlflow").update(ports=["127.0.0.1:5001:5000"]), "as 5001"),
        (lambda c: _svc(c, "minio")["ports"].pop(), "documented"),
        (lambda c: _svc(c, "postgres").update(ports=["127.0.0.1:5432:5432"]), "postgres"),
        (
            lambda c: _svc(c, "prefect-server").update(
                ports=[{"target": 4200, "published": 4200, "host_ip": "0.0.0.0"}]
            ),
            "not bound",
        ),
        (lambda c: c["services"].pop("prefect-server"), "missing"),
    ],
)
def test_compose_port_checker_reports_problems(compose, mutate, expected):
    assert_reports(compose_port_problems, compose, mutate, expected)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: _svc(c, "postgres")["environment"].update(POSTGRES_PASSWORD="hunter2"),
            "POSTGRES_PASSWORD",
        ),
        (
            lambda c: _svc(c, "mlflow")["environment"].update(
                AWS_SECRET_ACCESS_KEY="${S3_SECRET_ACCESS_KEY:-hunter2}"
            ),
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            lambda c: _svc(c, "minio").update(
                environment=["MINIO_ROOT_USER=${MINIO_ROOT_USER}", "MINIO_ROOT_PASSWORD=pw"]
            ),
            "MINIO_ROOT_PASSWORD",
        ),
        (
            lambda c: _svc(c, "mlflow")["command"].__setitem__(
                3, "postgresql://sae:hunter2@postgres:5432/mlflow"
            ),
            "inline password",
        ),
    ],
)
def test_compose_secret_checker_reports_problems(compose, mutate, expected):
    assert_reports(compose_secret_problems, compose, mutate, expected)


def test_compose_secret_checker_accepts_substituted_url_passwords(compose):
    ok = copy.deepcopy(compose)
    _svc(ok, "mlflow")["command"][3] = "postgresql://sae:${POSTGRES_PASSWORD}@postgres/mlflow"
    assert compose_secret_problems(ok) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: _svc(c, "minio").pop("healthcheck"), "minio: no healthcheck"),
        (
            lambda c: _svc(c, "postgres")["healthcheck"].update(test=["NONE"]),
            "postgres: no healthcheck",
        ),
        (lambda c: _svc(c, "mlflow").update(depends_on=["postgres"]), "without conditions"),
        (
            lambda c: _svc(c, "prefect-server")["depends_on"]["postgres"].update(
                condition="service_started"
            ),
            "service_started",
        ),
        (
            lambda c: _svc(c, "mlflow")["depends_on"].pop("minio-setup"),
            "mlflow must wait for minio-setup",
        ),
        (
            lambda c: _svc(c, "mlflow")["depends_on"].update(
                {"minio-setup": {"condition": "service_healthy"}}
            ),
            "it has no healthcheck",
        ),
    ],
)
def test_compose_health_checker_reports_problems(compose, mutate, expected):
    assert_reports(compose_health_problems, compose, mutate, expected)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda c: _svc(c, "prefect-server").update(image="prefecthq/prefect:2.20.0-python3.11"),
            "prefect image",
        ),
        (
            lambda c: _svc(c, "prefect-server").update(image="prefecthq/prefect:3-latest"),
            "prefect image",
        ),
        (lambda c: _svc(c, "mlflow").update(image="arxiv-sae/mlflow:2.22.0"), "2.22.0"),
        (
            lambda c: _svc(c, "mlflow")["build"].update(
                dockerfile_inline="FROM python:3.11-slim\nRUN pip install mlflow==3.1.0\n"
            ),
            "3.1.0",
        ),
    ],
)
def test_compose_version_checker_reports_problems(compose, mutate, expected):
    assert_reports(compose_version_problems, compose, mutate, expected)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("POSTGRES_PASSWORD=change-me\n", "", "POSTGRES_PASSWORD is required"),
        ("S3_SECRET_ACCESS_KEY=change-me", "S3_SECRET_ACCESS_KEY=s3cr3t", "not a change-me"),
        ("# BIND_ADDRESS=", "# BIND_ADRESS=", "BIND_ADRESS is in the example"),
    ],
)
def test_env_example_checker_reports_problems(old, new, expected):
    example = COMPOSE_ENV.read_text()
    assert old in example
    problems = env_example_problems(COMPOSE.read_text(), example.replace(old, new, 1))
    assert any(expected in p for p in problems), problems


# --- README ------------------------------------------------------------------------------


def test_readme_names_settings_the_code_reads():
    """The variables a researcher's machine sets are ones infra/settings.py reads."""
    readme = (CLUSTER / "README.md").read_text()
    exported = set(re.findall(r"^export ([A-Z_][A-Z0-9_]*)=", readme, re.M))
    needed = {"SAE_STORE", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"}
    assert needed | {"RAY_ADDRESS"} <= exported, exported
    known = _settings_env_names()
    read_by_boto_or_ray = {"AWS_PROFILE", "RAY_AUTH_MODE"}
    assert exported - read_by_boto_or_ray <= known, exported - known
    for port in set().union(*DOCUMENTED_PORTS.values()):
        assert str(port) in readme
