import pytest

from accordion.config import ClusterConfig, ConfigError, load_config, parse_config


def test_defaults_need_no_file():
    c = load_config(None)
    assert c.name == "accordion" and c.scheduler == "slurm" and c.provider == "local"
    assert c.nodesets[0].node_names() == ["hpc-node-0", "hpc-node-1", "hpc-node-2", "hpc-node-3"]


def test_durations_accept_units():
    c = parse_config({"nodesets": [{"name": "a", "idle_timeout": "5m"}, {"name": "b", "idle_timeout": 30}]})
    assert [ns.idle_timeout for ns in c.nodesets] == [300.0, 30.0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"nodesets": [{"name": "a", "max_nodes": 0}]}, "nodesets[0].max_nodes: Input should be greater than or equal to 1"),
        ({"nodesets": [{"name": "a", "min_nodes": 3, "max_nodes": 2}]}, "nodesets[0]: min_nodes (3) must not exceed max_nodes (2)"),
        ({"scheduler": "pbs"}, "scheduler: 'pbs' is not allowed, input should be 'slurm', 'oar' or 'gridengine'"),
        ({"name": "../etc"}, "name: '../etc' is not allowed"),
        ({"name": "has space"}, "name: 'has space' is not allowed"),
        ({"nodesets": [{"name": "a", "cpu": 2}]}, "nodesets[0].cpu: unknown field"),
        ({"nodesets": [{"name": "a"}, {"name": "a"}]}, "node set name must be unique, repeated: a"),
        ({"nodesets": [{"name": "a", "idle_timeout": "soon"}]}, "nodesets[0].idle_timeout: 'soon' is not a duration"),
        ({"nodesets": []}, "nodesets: List should have at least 1 item"),
        ([1, 2], "the file must be a mapping"),
    ],
)
def test_errors_name_the_field(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "c.yaml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("c.yaml: ") and "\n" not in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "accordion.yaml"
    f.write_text("name: x\nnodesets:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"accordion.yaml: line \d+"):
        load_config(f)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the cluster file"):
        load_config(tmp_path / "nope.yaml")


def test_nodeset_of():
    c = ClusterConfig.model_validate({"nodesets": [{"name": "a", "max_nodes": 2}, {"name": "b", "name_base": "big", "max_nodes": 1}]})
    assert c.nodeset_of("a-1").name == "a"
    assert c.nodeset_of("big-0").name == "b"
    assert c.nodeset_of("a-2") is None and c.nodeset_of("zz-0") is None
