"""cluster.yaml / cluster-local.yaml: valid for the installed Ray, shaped as docs/cluster.md says, closed to the world.

Everything is checked offline with Ray's own code: the schema and checks `ray up` runs before it touches a cloud
(prepare_config + validate_config, docs/ray-notes.md section 5), the node-type table the head's autoscaler builds from
the
file, and the autoscaler's scheduler deciding which node types to launch for a trial's placement group.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig, NodeTypeConfig
from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
from ray.autoscaler.v2.schema import AutoscalerInstance
from ray.autoscaler.v2.utils import ResourceRequestUtil
from ray.core.generated.autoscaler_pb2 import GangResourceRequest
from ray.core.generated.instance_manager_pb2 import Instance, NodeKind

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("cluster.yaml", "cluster-local.yaml")
AWS = "cluster.yaml"

pytestmark = pytest.mark.timeout(60)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def ray_up_checks(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does with the file before any cloud call: merge provider defaults, then validate."""
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


def node_types(config: dict[str, Any]) -> dict[str, NodeTypeConfig]:
    """The node-type table the head's (v2) autoscaler builds from the file; it rejects min_workers > max_workers."""
    return AutoscalingConfig(ray_up_checks(config), skip_content_hash=True).get_node_type_configs()


def commands(config: dict[str, Any]) -> list[str]:
    prepared = ray_up_checks(config)
    return [c for key, value in prepared.items() if key.endswith("_commands") for c in value]


# ---------------------------------------------------------------------------------------------------- validity
@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_rays_own_checks(name: str) -> None:
    prepared = ray_up_checks(load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _rename(key: str, new: str) -> Callable[[dict], None]:
    return lambda c: c.__setitem__(new, c.pop(key))


BROKEN = {
    "typo in a top-level key": (_rename("setup_commands", "setup_command"), jsonschema.ValidationError),
    "typo in a node-type key": (lambda c: c["available_node_types"]["gpu8"].update(max_worker=2),
                                jsonschema.ValidationError),
    "GPU count as a string": (lambda c: c["available_node_types"]["gpu8"]["resources"].update(GPU="8"),
                              jsonschema.ValidationError),
    "min_workers > max_workers of a type": (lambda c: c["available_node_types"]["gpu8"].update(min_workers=3),
                                            AssertionError),
    "sum of min_workers > global max_workers": (lambda c: c.update(max_workers=1) or
                                                c["available_node_types"]["gpu1"].update(min_workers=2), ValueError),
    "head_node_type not a node type": (lambda c: c.__setitem__("head_node_type", "gpu16"), ValueError),
}


@pytest.mark.parametrize("break_it, error", BROKEN.values(), ids=BROKEN.keys())
def test_broken_config_is_rejected(break_it: Callable[[dict], None], error: type[Exception]) -> None:
    config = load(AWS)
    break_it(config)
    with pytest.raises(error):
        node_types(config)


# ---------------------------------------------------------------------------------------------------- shape
def doc_node_table() -> dict[str, dict[str, str]]:
    """Rows of docs/cluster.md's node-type table: | `type` | instance | GPUs | vCPUs | market | workers |."""
    rows = {}
    for line in (ROOT / "docs" / "cluster.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in load(AWS)["available_node_types"]:
            rows[cells[0]] = dict(zip(("instance", "gpus", "cpus", "market", "workers"), cells[1:]))
    return rows


def test_node_types_are_what_the_docs_say() -> None:
    config = load(AWS)
    table = doc_node_table()
    assert set(table) == set(config["available_node_types"]), "docs/cluster.md lists other node types"
    for name, row in table.items():
        node = config["available_node_types"][name]
        assert row["instance"] == node["node_config"]["InstanceType"], name
        assert int(row["gpus"].split()[0]) == node["resources"]["GPU"], name
        assert int(row["cpus"]) == node["resources"]["CPU"], name
        assert (row["market"] == "spot") == ("InstanceMarketOptions" in node["node_config"]), name
        if name != config["head_node_type"]:
            assert row["workers"] == f"{node['min_workers']}-{node['max_workers']}", name


def test_head_holds_no_gpu_but_cpus_for_trial_drivers() -> None:
    head = load(AWS)["available_node_types"][load(AWS)["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    assert head["resources"]["CPU"] >= 1, "each trial driver asks for {'cpu': 0.01}"
    local_head = " ".join(load("cluster-local.yaml")["head_start_ray_commands"])
    assert "--num-gpus=0" in local_head


@pytest.mark.parametrize("name", CONFIGS)
def test_only_ssh_is_open_to_the_world(name: str) -> None:
    config = load(name)

    def rules(node: Any) -> list[dict]:
        if isinstance(node, dict):
            found = [r for key, value in node.items() if key == "IpPermissions" for r in value]
            return found + [r for value in node.values() for r in rules(value)]
        return [r for value in node for r in rules(value)] if isinstance(node, list) else []

    for rule in rules(config):
        assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), rule
    for node in config.get("available_node_types", {}).values():
        assert "SecurityGroupIds" not in node["node_config"], "a custom group bypasses Ray's SSH-only default"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the dashboard is reached through SSH forwarding only"
    assert "0.0.0.0" not in " ".join(commands(config))


# ---------------------------------------------------------------------------------------------------- software
@pytest.mark.parametrize("name", CONFIGS)
def test_setup_installs_the_locked_versions_never_a_nightly(name: str) -> None:
    cmds = commands(load(name))
    assert not [c for c in cmds if re.search(r"ray-wheels|dev0|nightly", c)]
    installs = [c for c in cmds if "pip install" in c and "--upgrade pip" not in c and "boto3" not in c]
    assert installs and all("-c $HOME/sid-constraints.txt" in c for c in installs), installs
    assert "requirements-torch.txt" in installs[0], "torch (CUDA build) is installed first"
    # the constraints are the lock's pins, made on the node by the command before the installs
    derive = next(c for c in cmds if "sid-constraints.txt" in c and "requirements.lock" in c)
    assert cmds.index(derive) < cmds.index(installs[0])
    script = re.search(r"sed -n '([^']+)'", derive).group(1)
    done = subprocess.run(["sed", "-n", script, str(ROOT / "requirements.lock")], capture_output=True, text=True,
                          check=True)
    lock = dict(line.split("==") for line in done.stdout.splitlines())
    assert lock["ray"] == ray.__version__, "the cluster would run another Ray than the one these checks used"
    assert "torch" not in lock and len(lock) > 100  # every package but torch, whose PyPI build is the CUDA one


@pytest.mark.parametrize("name", CONFIGS)
def test_storage_cache_and_auth_are_named_once(name: str) -> None:
    text = (ROOT / name).read_text()
    assigned = Counter(re.findall(r"export (\w+)=", text))
    assert {k: assigned[k] for k in ("SID_STORAGE", "SID_CACHE", "RAY_AUTH_MODE")} == \
           {"SID_STORAGE": 1, "SID_CACHE": 1, "RAY_AUTH_MODE": 1}
    assert "export RAY_AUTH_MODE=token" in text
    assert load(name)["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "every node needs the token"
    assert "setup_commands" in load(name), "Ray's AWS defaults would install a ray nightly"


def test_every_aws_node_mounts_the_file_system_that_holds_the_storage() -> None:
    text = (ROOT / AWS).read_text()
    assert Counter(re.findall(r"export (\w+)=", text))["SID_NFS"] == 1
    storage = re.search(r"export SID_STORAGE=(\S+)", text).group(1)
    mounts = [re.search(r'mount -t nfs4 .*"\$SID_NFS" (\S+?);', c) for c in load(AWS)["setup_commands"]]
    (point,) = [m.group(1) for m in mounts if m]  # setup_commands run on the head and on every worker
    assert storage.startswith(point + "/"), "studies write rows and checkpoints with plain file I/O: no s3://"


# ---------------------------------------------------------------------------------------------------- placement
def launches(gangs: list[tuple[int, dict[str, float], bool]], edit: Callable[[dict], None] = lambda c: None
             ) -> dict[str, int]:
    """Node types the autoscaler launches, head running, for placement groups given as (bundles, bundle, strict)."""
    config = load(AWS)
    edit(config)
    types = node_types(config)
    pack = [(ResourceRequestUtil.PlacementConstraintType.AFFINITY, "_PG_trial", "")]  # how STRICT_PACK arrives
    requests = [GangResourceRequest(requests=[ResourceRequestUtil.make(bundle, pack if strict else None)] * n)
                for n, bundle, strict in gangs]
    head = AutoscalerInstance(im_instance=Instance(instance_id="head", instance_type=config["head_node_type"],
                                                   status=Instance.ALLOCATED, node_kind=NodeKind.HEAD))
    reply = ResourceDemandScheduler().schedule(SchedulingRequest(
        node_type_configs=types, gang_resource_requests=requests, current_instances=[head],
        disable_launch_config_check=True))
    assert not reply.infeasible_gang_resource_requests
    return dict(Counter({r.instance_type: r.count for r in reply.to_launch}))


WORKER = {"GPU": 1, "CPU": 1}  # Ray Train's default per-worker request with use_gpu=True
PLACEMENTS = {
    "trial driver fits on the head": ([(1, {"CPU": 0.01}, False)], None, {}),
    "driver would need a GPU node if the head had CPU 0": (
        [(1, {"CPU": 0.01}, False)], lambda c: c["available_node_types"]["head"]["resources"].update(CPU=0),
        {"gpu1": 1}),
    "one-GPU trial": ([(1, WORKER, True)], None, {"gpu1": 1}),
    "two half-GPU trials share one GPU": ([(1, {"GPU": 0.5, "CPU": 1}, True)] * 2, None, {"gpu1": 1}),
    "8-worker trial, STRICT_PACK: one 8-GPU node": ([(8, WORKER, True)], None, {"gpu8": 1}),
    "4-worker trial, STRICT_PACK: one 8-GPU node": ([(4, WORKER, True)], None, {"gpu8": 1}),
    "8-worker trial, PACK: eight 1-GPU nodes (why STRICT_PACK)": ([(8, WORKER, False)], None, {"gpu1": 8}),
    "16-worker trial, PACK, gpu1 off: two 8-GPU nodes": (
        [(16, WORKER, False)], lambda c: c["available_node_types"]["gpu1"].update(max_workers=0), {"gpu8": 2}),
}


@pytest.mark.parametrize("gangs, edit, expected", PLACEMENTS.values(), ids=PLACEMENTS.keys())
def test_autoscaler_launches_the_intended_nodes(gangs, edit, expected) -> None:
    assert launches(gangs, edit or (lambda c: None)) == expected
