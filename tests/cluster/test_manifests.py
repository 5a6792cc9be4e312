"""The cluster definitions parse, agree with each other, and agree with docs/CLUSTER.md."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
DOC = REPO / "docs" / "CLUSTER.md"
LAUNCHER = CLUSTER / "aws.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
# Custom resources the cluster definitions offer, by node type.
HEAD_RESOURCE, GPU_RESOURCE = "head_node", "gpu_node"


def docs_of(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kind(path: Path, name: str) -> dict:
    (doc,) = [d for d in docs_of(path) if d.get("kind") == name]
    return doc


def ray_cluster_specs() -> list[dict]:
    return [kind(RAYCLUSTER, "RayCluster")["spec"],
            kind(RAYJOB, "RayJob")["spec"]["rayClusterSpec"]]


def start_resources(params: dict) -> dict:
    """KubeRay's ``resources: '"{\\"gpu_node\\": 1}"'`` -> {"gpu_node": 1}."""
    text = params.get("resources", "{}").strip()
    if text.startswith('"') and text.endswith('"'):
        text = text[1:-1].replace('\\"', '"')
    return json.loads(text)


def doc_blocks() -> list[str]:
    """Every shell command in the doc's ```bash blocks, one per line."""
    text = DOC.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        lines += [ln.strip() for ln in block.splitlines() if ln.strip()
                  and not ln.strip().startswith("#")]
    return lines


def ray_version() -> str:
    import ray

    return ray.__version__


# --- the files parse and are what they say ---------------------------------------------------

def test_every_cluster_yaml_parses():
    files = sorted(CLUSTER.rglob("*.yaml"))
    assert {LAUNCHER, RAYCLUSTER, RAYJOB} <= set(files)
    for path in files:
        assert docs_of(path), f"{path} is empty"
    for path in (RAYCLUSTER, RAYJOB):
        for doc in docs_of(path):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
    assert kind(RAYCLUSTER, "RayCluster")["apiVersion"] == "ray.io/v1"
    assert kind(RAYJOB, "RayJob")["apiVersion"] == "ray.io/v1"


def test_launcher_has_a_cpu_head_gpu_workers_token_auth_and_installs_the_project():
    cfg = yaml.safe_load(LAUNCHER.read_text())
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"][HEAD_RESOURCE] == 1
    workers = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert workers and all(t["resources"]["GPU"] >= 1 and t["resources"][GPU_RESOURCE] == 1
                           for t in workers)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(cfg["setup_commands"] + cfg["head_setup_commands"]
                     + cfg["worker_setup_commands"])
    assert "-e ~/unlearn-audit" in setup and f"ray[default,tune,data]=={ray_version()}" in setup
    assert "whl/cpu torch==2.13.0" in " ".join(cfg["head_setup_commands"])
    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    for start in (head_start, worker_start):
        assert "export RAY_AUTH_MODE=token" in start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--address=$RAY_HEAD_IP:6379" in worker_start


def test_kuberay_clusters_use_token_auth_private_services_and_gpu_workers():
    for spec in ray_cluster_specs():
        assert spec["rayVersion"] == ray_version()
        assert spec["authOptions"]["mode"] == "token"
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert start_resources(head["rayStartParams"]) == {HEAD_RESOURCE: 1}
        (group,) = spec["workerGroupSpecs"]
        assert start_resources(group["rayStartParams"]) == {GPU_RESOURCE: 1}
        (container,) = group["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["image"].endswith(":gpu")
        assert head["template"]["spec"]["containers"][0]["image"].endswith(":cpu")
    for doc in docs_of(RAYCLUSTER) + docs_of(RAYJOB):
        assert "LoadBalancer" not in json.dumps(doc) and "NodePort" not in json.dumps(doc)


def test_rayjob_entrypoint_is_a_valid_run_of_a_spec_in_the_image():
    from orchestrator.cli.main import build_parser
    from orchestrator.spec.schema import load_spec

    entry = shlex.split(kind(RAYJOB, "RayJob")["spec"]["entrypoint"])
    assert entry[:2] == ["unlearn-audit", "run"]
    args = build_parser().parse_args(entry[1:])
    assert args.spec.startswith("/app/")  # WORKDIR /app in cluster/Dockerfile
    spec_path = REPO / args.spec.removeprefix("/app/")
    assert spec_path.exists()
    (spec,) = load_spec(str(spec_path), args.set)
    assert spec.resources.unlearn.gpus > 0
    assert set(spec.resources.unlearn.custom) <= {HEAD_RESOURCE, GPU_RESOURCE}
    # The claim the job mounts is the one raycluster.yaml defines.
    claim = kind(RAYCLUSTER, "PersistentVolumeClaim")["metadata"]["name"]
    assert claim in RAYJOB.read_text() and args.results == "/mnt/results"


def test_dockerfile_installs_the_project_with_the_pinned_torch_and_ray():
    text = DOCKERFILE.read_text()
    assert f"ARG RAY_VERSION={ray_version()}" in text
    pin = re.search(r"^torch==(\S+)", (REPO / "constraints-cpu.txt").read_text(), re.MULTILINE)[1]
    assert f"ARG TORCH_VERSION={pin}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert "WORKDIR /app" in text and re.search(r"pip install .*\s\.\s", text)
    for folder in ("orchestrator", "tasks", "search_spaces"):
        assert f"COPY --chown=ray:users {folder} ./{folder}" in text
    assert "RAY_AUTH_MODE=token" in text and "RAY_AUTH_TOKEN=" not in text


# --- docs/CLUSTER.md agrees with the files and the CLI ---------------------------------------

def test_every_cluster_path_in_the_doc_exists():
    paths = set(re.findall(r"(?<![\w/])cluster/[\w./-]+", DOC.read_text()))
    paths = {p.rstrip(".") for p in paths}
    assert {"cluster/aws.yaml", "cluster/kuberay/raycluster.yaml",
            "cluster/kuberay/rayjob.yaml", "cluster/Dockerfile"} <= paths
    missing = sorted(p for p in paths if not (REPO / p).exists())
    assert not missing, f"docs/CLUSTER.md names files that do not exist: {missing}"


def test_every_unlearn_audit_command_in_the_doc_parses_and_its_overrides_validate():
    from orchestrator.cli.main import build_parser
    from orchestrator.spec.schema import load_spec

    commands = []
    for line in doc_blocks():
        words = shlex.split(line)
        if "unlearn-audit" in words:
            commands.append(words[words.index("unlearn-audit") + 1:])
    runs = [c for c in commands if c[0] == "run"]
    assert len(runs) >= 4
    offered = {HEAD_RESOURCE, GPU_RESOURCE}
    for words in commands:
        try:
            args = build_parser().parse_args(words)
        except SystemExit:
            pytest.fail(f"docs/CLUSTER.md: `unlearn-audit {' '.join(words)}` does not parse")
        if words[0] != "run":
            continue
        spec = args.spec if (REPO / args.spec).exists() else f"search_spaces/{args.spec}"
        assert (REPO / spec).exists(), args.spec
        (variant,) = load_spec(str(REPO / spec), args.set)
        for kind_ in ("train", "unlearn", "attack", "trial"):
            used = set(getattr(variant.resources, kind_).custom)
            assert used <= offered, f"{used - offered} is offered by no node type"


def test_doc_commands_match_the_manifests():
    lines = doc_blocks()
    text = "\n".join(lines)
    for path in (LAUNCHER, RAYCLUSTER, RAYJOB):
        rel = str(path.relative_to(REPO))
        assert rel in text, f"no command in docs/CLUSTER.md uses {rel}"
    assert "ray up cluster/aws.yaml -y" in lines and "ray down cluster/aws.yaml -y" in lines
    assert "kubectl apply -f cluster/kuberay/raycluster.yaml" in lines
    assert "kubectl delete -f cluster/kuberay/raycluster.yaml" in lines
    assert "kubectl apply -f cluster/kuberay/rayjob.yaml" in lines
    # The names the doc uses are the manifests' names.
    cluster_name = kind(RAYCLUSTER, "RayCluster")["metadata"]["name"]
    assert f"svc/{cluster_name}-head-svc" in text
    job_name = kind(RAYJOB, "RayJob")["metadata"]["name"]
    assert f"job/{job_name}" in text
    # The image tags the doc builds are the ones the manifests run.
    built = set(re.findall(r"docker build -f cluster/Dockerfile -t (\S+)", text))
    used = {c["image"] for spec in ray_cluster_specs()
            for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
            for c in group["template"]["spec"]["containers"]}
    assert used <= built, f"images the manifests run but the doc never builds: {used - built}"
    # The GPU build arguments in the doc are the Dockerfile's own.
    for arg in re.findall(r"--build-arg (\w+)=", text):
        assert f"ARG {arg}" in DOCKERFILE.read_text()
    # Hand-started nodes use the same custom resources as the manifests.
    starts = [shlex.split(ln) for ln in lines if ln.startswith("ray start")]
    offered = set()
    for words in starts:
        flag = next(w for w in words if w.startswith("--resources="))
        offered |= set(json.loads(flag.split("=", 1)[1]))
    assert offered == {HEAD_RESOURCE, GPU_RESOURCE}
    assert any("--dashboard-host=127.0.0.1" in w for w in starts[0])
    # Both tear-down paths and the job-API command exist.
    assert any(ln.startswith("ray job submit --address http://127.0.0.1:8265") for ln in lines)
    assert "RAY_AUTH_MODE=token" in text
