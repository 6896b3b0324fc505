"""cluster.yaml validates against Ray's own autoscaler schema, offline."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load())
    validate_config(config)
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert "GPU" not in config["available_node_types"]["head"]["resources"]
    assert any("pip install" in c and "aop-ray" in c for c in config["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


def test_schema_check_catches_a_broken_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(load())
    broken["available_node_types"]["gpu_worker"]["max_workers"] = "many"
    with pytest.raises(jsonschema.ValidationError, match="not of type .integer."):
        validate_config(prepare_config(broken))
