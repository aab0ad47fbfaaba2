"""Settings, the command line, and input normalisation (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from punderful.__main__ import build_parser, main
from punderful.app import InputError, check_pun_id, clean_pun, clean_query, import_id, like_instance_id
from punderful.config import Config, ConfigError


def test_defaults_are_offline_and_local(tmp_path: Path) -> None:
    config = Config.from_env({}, data_dir=tmp_path)
    assert config.moderation_method == "local"
    assert config.llm_base_url is None and config.embeddings_base_url is None
    assert config.engine_url == f"sqlite:///{(tmp_path / 'perdure.db').resolve()}"
    assert config.app_db_path == tmp_path / "punderful.db" and config.vectors_path == tmp_path / "vectors.db"
    assert not config.uses_postgres
    assert (config.search_threshold, config.similar_threshold) == (0.19, 0.35)
    assert config.port == 8787 and config.host == "127.0.0.1"


def test_environment_then_overrides() -> None:
    env = {
        "OPENAI_API_KEY": "sk-test",
        "PUNDERFUL_SEARCH_THRESHOLD": "0.3",
        "PUNDERFUL_LLM_BASE_URL": "http://127.0.0.1:11434/v1",
        "PUNDERFUL_LLM_MODEL": "llama3.1",
        "PUNDERFUL_DB": "postgresql://u@h/db?schema=wf&application_name=x",
    }
    config = Config.from_env(env, search_threshold=None, moderation=None)
    assert config.moderation_method == "openai"  # auto + a key
    assert config.llm_api_key == "sk-test" and config.search_threshold == 0.3
    assert config.uses_postgres
    assert config.pg_conninfo == "postgresql://u@h/db?application_name=x"
    assert Config.from_env(env, moderation="off").moderation_method is None
    assert Config.from_env(env, moderation="local").moderation_method == "local"


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({"PUNDERFUL_MODERATION": "maybe"}, {}, "moderation must be one of"),
        ({}, {"moderation": "openai"}, "needs OPENAI_API_KEY"),
        ({"PUNDERFUL_LLM_BASE_URL": "http://x/v1"}, {}, "PUNDERFUL_LLM_MODEL"),
        ({"PUNDERFUL_EMBEDDINGS_MODEL": "m"}, {}, "PUNDERFUL_EMBEDDINGS_BASE_URL"),
        ({"PUNDERFUL_SEARCH_THRESHOLD": "high"}, {}, "must be a number"),
        ({"PUNDERFUL_SIMILAR_THRESHOLD": "2"}, {}, "between -1 and 1"),
        ({}, {"port": 70000}, "port"),
        ({"PUNDERFUL_STEP_DELAY": "-1"}, {}, "step_delay"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env, **overrides)


def test_command_line(tmp_path: Path) -> None:
    parser = build_parser()
    args = parser.parse_args(["--port", "9000", "--data-dir", str(tmp_path)])
    assert args.command is None and args.port == 9000 and args.data_dir == tmp_path
    args = parser.parse_args(["--data-dir", str(tmp_path), "import", "--limit", "5", "--wait"])
    assert args.command == "import" and args.limit == 5 and args.wait and args.data_dir == tmp_path
    args = parser.parse_args(["serve", "--port", "0", "--moderation", "off"])
    assert args.command == "serve" and args.port == 0 and args.moderation == "off"
    assert main(["import", "--limit", "0", "--data-dir", str(tmp_path)]) == 2


def test_bad_configuration_exits_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["--moderation", "openai", "--data-dir", str(tmp_path)]) == 2
    assert "OPENAI_API_KEY" in capsys.readouterr().err


def test_pun_text_is_normalised() -> None:
    assert clean_pun("  a   b \r\n\r\n\n  c  ", 100) == "a b\nc"
    assert clean_pun("tab\there", 100) == "tab here"
    with pytest.raises(InputError) as empty:
        clean_pun(" \n ", 100)
    assert empty.value.code == "empty_pun" and empty.value.status == 400
    with pytest.raises(InputError, match="limit is 5"):
        clean_pun("123456", 5)
    assert clean_pun("12345", 5) == "12345"
    with pytest.raises(InputError, match="control characters"):
        clean_pun("bell\x07", 100)


def test_queries_and_ids() -> None:
    assert clean_query("  cheesy   jokes ", 50) == "cheesy jokes"
    for bad in (None, "", "   ", 3):
        with pytest.raises(InputError, match="missing or empty"):
            clean_query(bad, 50)
    with pytest.raises(InputError, match="limit is 3"):
        clean_query("abcd", 3)
    assert check_pun_id("opun-abc_1") == "opun-abc_1"
    for bad in ("", "-starts-with-dash", "has space", "x" * 101, "../etc"):
        with pytest.raises(InputError) as error:
            check_pun_id(bad)
        assert error.value.status == 404
    assert import_id("same") == import_id("same") != import_id("other")
    assert like_instance_id("anon-1", "p") != like_instance_id("anon-2", "p")
    assert len(like_instance_id("anon-" + "x" * 40, "p" * 100)) <= 100
