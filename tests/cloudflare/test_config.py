"""Reading wrangler files: JSONC (comments, trailing commas), TOML, and every error one line
with the file, and for a file that does not parse, the line and column."""

from __future__ import annotations

from pathlib import Path

import pytest

from perdure.cloudflare import jsonc
from perdure.cloudflare.wrangler import WranglerError, find_config, read_config

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_jsonc_comments_and_trailing_commas_keep_strings_intact() -> None:
    text = '{\n  // a comment\n  "a": "http://x//y", /* block\n  comment */ "b": [1, 2,],\n  "c": "/* kept */",\n}\n'
    assert jsonc.loads(text) == {"a": "http://x//y", "b": [1, 2], "c": "/* kept */"}
    assert jsonc.loads('\ufeff{"escaped": "a\\"b", "n": 1}') == {"escaped": 'a"b', "n": 1}


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3),  # a missing comma: reported where the next key starts
        ('{\n  // fine\n  "a": ,\n}', 3, 8),  # the comment does not shift the column
        ('{\n  "a": 1 /* never closed\n}', 2, 10),
    ],
)
def test_jsonc_errors_give_line_and_column(text: str, line: int, column: int) -> None:
    with pytest.raises(jsonc.JsoncError) as caught:
        jsonc.loads(text)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert str(caught.value).startswith(f"{line}:{column}: ")


def test_a_jsonc_file_that_does_not_parse_names_file_line_and_column(tmp_path: Path) -> None:
    write(
        tmp_path,
        "wrangler.jsonc",
        '{\n  "main": "src/entry.py",\n  "workflows": [\n    {"name": "x",}\n    {}\n  ]\n}\n',
    )
    with pytest.raises(WranglerError) as caught:
        read_config(tmp_path)
    message = str(caught.value)
    assert message.startswith("wrangler.jsonc:5:5: ") and "\n" not in message


def test_a_toml_file_that_does_not_parse_names_file_line_and_column(tmp_path: Path) -> None:
    write(tmp_path, "wrangler.toml", 'name = "w"\nmain = "src/entry.py"\n\n[[workflows]]\nname = "x\n')
    with pytest.raises(WranglerError) as caught:
        read_config(tmp_path / "wrangler.toml")
    message = str(caught.value)
    assert message.startswith("wrangler.toml:5:") and "\n" not in message


def test_toml_workflows_vars_and_other_bindings(tmp_path: Path) -> None:
    write(
        tmp_path,
        "wrangler.toml",
        """
name = "my-worker"
main = "src/entry.py"
compatibility_flags = ["python_workers", "python_workflows"]

[vars]
API_HOST = "example.com"
RETRIES = 3

[[workflows]]
name = "my-workflow"
binding = "MY_WORKFLOW"
class_name = "MyWorkflow"
limits = { steps = 25000 }
schedules = "*/30 * * * *"

[[workflows]]
name = "billing"
binding = "BILLING"
class_name = "Billing"
script_name = "billing-worker"

[[d1_databases]]
binding = "DB"
database_name = "prod"

[[r2_buckets]]
binding = "FILES"
bucket_name = "files"

[ai]
binding = "AI"

[[queues.producers]]
binding = "JOBS"
queue = "jobs"
""",
    )
    config = read_config(tmp_path)
    assert config.name == "my-worker" and config.main == (tmp_path / "src" / "entry.py").resolve()
    first, second = config.workflows
    assert (first.name, first.binding, first.class_name) == ("my-workflow", "MY_WORKFLOW", "MyWorkflow")
    assert first.limits == {"steps": 25000} and first.schedules == ["*/30 * * * *"]
    assert second.script_name == "billing-worker" and second.schedules == []
    assert config.vars == {"API_HOST": "example.com", "RETRIES": 3}
    kinds = {other.name: other.kind for other in config.others}
    assert kinds == {"DB": "D1 database", "FILES": "R2 bucket", "AI": "Workers AI", "JOBS": "queue producer"}


def test_json_wins_over_jsonc_and_toml_as_in_wrangler(tmp_path: Path) -> None:
    write(tmp_path, "wrangler.toml", 'main = "a.py"\n')
    write(tmp_path, "wrangler.jsonc", '{"main": "b.py"}')
    assert find_config(tmp_path) == tmp_path / "wrangler.jsonc"
    write(tmp_path, "wrangler.json", '{"main": "c.py"}')
    assert read_config(tmp_path).main == (tmp_path / "c.py").resolve()
    assert find_config(tmp_path / "other.json") is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"workflows": [{"name": "w", "binding": "W"}]}', "wrangler.json: workflows[0]: has no 'class_name'"),
        ('{"workflows": [{"name": "bad name", "binding": "W", "class_name": "C"}]}', "workflows[0].name"),
        ('{"workflows": [{"name": "w", "binding": "1W", "class_name": "C"}]}', "'1W' is not a valid binding name"),
        (
            '{"workflows": [{"name": "w", "binding": "W", "class_name": "C", "limits": {"steps": 0}}]}',
            "workflows[0].limits.steps: must be an integer >= 1, got 0",
        ),
        ('{"workflows": [{"name": "w", "binding": "W", "class_name": "C", "schedules": [5]}]}', "schedules"),
        ('{"workflows": {"name": "w"}}', "workflows: must be a list of tables, got dict"),
        ('{"main": "src/index.ts"}', "'src/index.ts' is not a Python module"),
        ('{"vars": ["A"]}', "vars: must be a table"),
        ('{"vars": {"DB": "x"}, "d1_databases": [{"binding": "DB"}]}', "the binding name 'DB' is also declared"),
        ('{"kv_namespaces": [{"id": "abc"}]}', "kv_namespaces[0]: has no 'binding'"),
        ("[1, 2]", "the configuration must be an object, got list"),
    ],
)
def test_configuration_mistakes_are_one_line_naming_the_key(tmp_path: Path, body: str, expected: str) -> None:
    write(tmp_path, "wrangler.json", body)
    with pytest.raises(WranglerError) as caught:
        read_config(tmp_path)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_missing_locations_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(WranglerError, match="no such file or directory"):
        read_config(tmp_path / "nowhere")
    with pytest.raises(WranglerError, match=r"holds no wrangler\.json, wrangler\.jsonc or wrangler\.toml"):
        read_config(tmp_path)
    with pytest.raises(WranglerError, match="is not a wrangler file"):
        read_config(write(tmp_path, "config.toml", ""))


def test_the_example_project_reads() -> None:
    config = read_config(ROOT / "examples" / "cloudflare_project")
    assert [(w.name, w.binding, w.class_name) for w in config.workflows] == [
        ("order-pipeline", "MY_WORKFLOW", "OrderPipeline")
    ]
    assert config.vars["CURRENCY"] == "EUR" and [o.name for o in config.others] == ["CACHE"]


def test_dev_vars_are_name_value_lines(tmp_path: Path) -> None:
    from perdure.cloudflare.wrangler import read_dev_vars

    write(tmp_path, "wrangler.toml", 'main = "src/entry.py"\n[[d1_databases]]\nbinding = "DB"\n')
    assert read_dev_vars(read_config(tmp_path)) == {}
    write(tmp_path, ".dev.vars", "# local secrets\nAPI_KEY = \"s3cret\"\n\nexport TOKEN='a b'\nPLAIN=x=y\n")
    assert read_dev_vars(read_config(tmp_path)) == {"API_KEY": "s3cret", "TOKEN": "a b", "PLAIN": "x=y"}
    write(tmp_path, ".dev.vars", "A=1\nnot a pair\n")
    with pytest.raises(WranglerError, match=r"^\.dev\.vars:2: expected NAME=value, got 'not a pair'$"):
        read_dev_vars(read_config(tmp_path))
    write(tmp_path, ".dev.vars", "DB=sqlite\n")
    with pytest.raises(WranglerError, match=r"^\.dev\.vars:1: 'DB' is a binding in wrangler\.toml$"):
        read_dev_vars(read_config(tmp_path))
