from pathlib import Path

import pytest

from toolkit.machine.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for variable in ("RETRIEVAL_RACE_URL", "RETRIEVAL_RACE_GROUP", "RETRIEVAL_RACE_LEADERBOARD", "RETRIEVAL_RACE_CONFIG"):
        monkeypatch.delenv(variable, raising=False)


def test_defaults_file_environment_and_command_line_in_that_order(tmp_path, monkeypatch):
    assert load_settings(tmp_path).server_url is None
    (tmp_path / "retrieval-race.toml").write_text('server_url = "http://file/"\ngroup = "file-team"\n')
    assert (load_settings(tmp_path).server_url, load_settings(tmp_path).group) == ("http://file/", "file-team")
    monkeypatch.setenv("RETRIEVAL_RACE_GROUP", "env-team")
    settings = load_settings(tmp_path)
    assert (settings.server_url, settings.group, settings.source) == ("http://file/", "env-team", "environment")
    settings = load_settings(tmp_path, group="cli-team", server_url=None, leaderboard="x.db")
    assert (settings.group, settings.leaderboard, settings.source) == ("cli-team", Path("x.db"), "command line")


def test_bad_files_and_unknown_keys_are_named(tmp_path):
    (tmp_path / "retrieval-race.toml").write_text("server_url = ")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(tmp_path)
    (tmp_path / "retrieval-race.toml").write_text('sever_url = "typo"\n')
    with pytest.raises(SettingsError, match="sever_url"):
        load_settings(tmp_path)


def test_the_project_folder_is_the_nearest_one_with_a_marker(tmp_path, monkeypatch):
    from toolkit.machine.settings import leaderboard_file, project_path, project_root

    project, deeper = tmp_path / "project", tmp_path / "project" / "notebooks" / "deeper"
    deeper.mkdir(parents=True)
    assert project_root(deeper) == deeper.resolve()                   # no marker anywhere up: where it runs
    (project / "retrieval-race.toml").write_text('leaderboard = "boards/lb.db"\n')
    assert project_root(deeper) == project.resolve()
    (project / "notebooks" / "tasks.py").write_text("")              # invoke would find this tasks.py first
    assert project_root(deeper) == (project / "notebooks").resolve()
    (project / "notebooks" / "tasks.py").unlink()
    monkeypatch.chdir(deeper)
    assert project_path("submissions") == project.resolve() / "submissions"
    assert project_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    assert leaderboard_file() == project.resolve() / "boards" / "lb.db"
    assert leaderboard_file("mine.db") == Path("mine.db")              # typed: as typed
